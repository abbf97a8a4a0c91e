"""Loading the C library and declaring every function's argtypes and restype. The declarations
and constants are _abi.py's, generated from the header (include/etha_tensor_bus.h): nothing of
the C ABI is written here by hand."""
import ctypes
import ctypes.util
import logging
import os
import pathlib

from . import _abi

# The C types under the names the package (and its tests) use.
NAMING_FN = _abi.EtbPathNamingFn  # its buffers are raw pointers (c_void_p): c_char_p would hand it copies
LOG_FN = _abi.EtbLogFn  # level, target, message, user_data
BootstrapOptions = _abi.EtbBootstrapOptions
TensorPayload = _abi.EtbTensorPayload
CudaTensor = _abi.EtbCudaTensor
Placement = _abi.EtbPlacement


def enum(prefix):
    """The header's macros named `prefix` + NAME as {name: value}, in the header's order, names in
    lower case: enum("ETB_CUDA_") is {"auto": 0, "require": 1, "skip": 2}."""
    return {k[len(prefix):].lower(): v for k, v in _abi.DEFINES.items() if k.startswith(prefix)}


def _shipped():
    """The library this package ships (built by setuptools-rust: libetha_tensor_bus<EXT_SUFFIX>)."""
    here = pathlib.Path(__file__).resolve().parent
    return sorted(here.glob("libetha_tensor_bus*.so*"))


def library_path():
    """ETB_LIBRARY_PATH (the .so file, or its folder) when set; else the copy shipped in this
    package; else the system's library path."""
    env = os.environ.get("ETB_LIBRARY_PATH")
    if env:
        if os.path.isdir(env):
            return os.path.join(env, "libetha_tensor_bus.so")
        return env
    shipped = _shipped()
    if shipped:
        return str(shipped[0])
    return ctypes.util.find_library("etha_tensor_bus") or "libetha_tensor_bus.so"


# major.minor of the header this package's declarations come from (Cargo.toml's version)
EXPECTED_VERSION = f"{_abi.ETB_VERSION_MAJOR}.{_abi.ETB_VERSION_MINOR}"


def load(path=None):
    path = path or library_path()
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        looked = [f"ETB_LIBRARY_PATH={os.environ['ETB_LIBRARY_PATH']!r}"] if os.environ.get("ETB_LIBRARY_PATH") else []
        looked += [f"the package folder {pathlib.Path(__file__).resolve().parent} (nothing shipped there)"] if not _shipped() \
            else [f"the shipped {_shipped()[0]}"]
        looked += ["the system's library path"]
        raise ImportError(
            f"the etha-tensor-bus library could not be loaded ({e}); looked in: {'; '.join(looked)}. "
            "Install the package with `pip install ./python` from a checkout (it builds and ships the library), "
            "or set ETB_LIBRARY_PATH to the libetha_tensor_bus.so file or its folder"
        ) from None
    try:
        lib.etb_version.restype = ctypes.c_char_p
        found = lib.etb_version().decode()
    except AttributeError:
        raise ImportError(f"{path} is not the etha-tensor-bus library (no etb_version)") from None
    if found.rsplit(".", 1)[0] != EXPECTED_VERSION:
        raise ImportError(f"{path} is etha-tensor-bus {found}; this package needs {EXPECTED_VERSION}.x")
    for name, (restype, argtypes) in _abi.FUNCTIONS.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:
            raise ImportError(f"{path} (etha-tensor-bus {found}) has no {name}, which this package's header "
                              "declares: a library built from other sources") from None
        fn.restype, fn.argtypes = restype, argtypes
    return lib


_lib = None
# ETB_LOG_* -> logging levels (TRACE below DEBUG)
_LEVELS = {_abi.ETB_LOG_ERROR: logging.ERROR, _abi.ETB_LOG_WARN: logging.WARNING, _abi.ETB_LOG_INFO: logging.INFO,
           _abi.ETB_LOG_DEBUG: logging.DEBUG, _abi.ETB_LOG_TRACE: 5}
_log_callback = None  # kept alive for the process


def _route_logs(lib):
    """The library's records go to logging.getLogger("etha_tensor_bus") (its own filter, ETB_LOG,
    applies first); the callback is unregistered at exit."""
    import atexit

    global _log_callback
    logger = logging.getLogger("etha_tensor_bus")

    def on_record(level, target, message, _user_data):
        try:
            logger.log(_LEVELS.get(level, logging.DEBUG), "%s", message.decode("utf-8", "replace"),
                       extra={"etb_target": target.decode("utf-8", "replace")})
        except Exception:  # never unwind into C
            pass

    _log_callback = LOG_FN(on_record)
    if lib.etb_set_log_callback(_log_callback, None) == 0:
        atexit.register(lambda: lib.etb_set_log_callback(LOG_FN(), None))


def lib():
    """The library, loaded on first use (its log records routed into `logging`)."""
    global _lib
    if _lib is None:
        loaded = load()
        _route_logs(loaded)
        _lib = loaded
    return _lib
