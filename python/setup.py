# The Rust parts, built by cargo through setuptools-rust: the C library, shipped inside the
# package as etha_tensor_bus/libetha_tensor_bus<EXT_SUFFIX> (loaded with ctypes, not imported),
# and the node tool `etb`, installed on the environment's PATH. Both come from this checkout
# (the workspace one folder up); every build runs cargo, so a reinstall ships a rebuilt library.
from setuptools import setup
from setuptools_rust import Binding, RustBin, RustExtension

setup(
    rust_extensions=[
        RustExtension("etha_tensor_bus.libetha_tensor_bus", path="../Cargo.toml", binding=Binding.NoBinding,
                      py_limited_api=False),
        RustBin("etb", path="../crates/etb-cli/Cargo.toml"),
    ],
)
