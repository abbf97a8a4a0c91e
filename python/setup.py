# The Rust parts, built by cargo through setuptools-rust: the C library, shipped inside the
# package as etha_tensor_bus/libetha_tensor_bus<EXT_SUFFIX> (loaded with ctypes, not imported),
# and the node tool `etb`, installed on the environment's PATH. Both come from this checkout
# (the workspace one folder up); every build runs cargo, so a reinstall ships a rebuilt library.
# The package's version is the workspace's, read from Cargo.toml: the only place it is written.
import pathlib

from setuptools import setup
from setuptools_rust import Binding, RustBin, RustExtension

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

CARGO_TOML = pathlib.Path(__file__).resolve().parent.parent / "Cargo.toml"

setup(
    version=tomllib.loads(CARGO_TOML.read_text())["workspace"]["package"]["version"],
    rust_extensions=[
        RustExtension("etha_tensor_bus.libetha_tensor_bus", path="../Cargo.toml", binding=Binding.NoBinding,
                      py_limited_api=False),
        RustBin("etb", path="../crates/etb-cli/Cargo.toml"),
    ],
)
