"""Loading the C library and declaring every function's argtypes and restype."""
import ctypes
import ctypes.util
import os
import pathlib

P = ctypes.c_void_p
S = ctypes.c_char_p
D = ctypes.c_double
I32 = ctypes.c_int32
I64 = ctypes.c_int64
SIZE = ctypes.c_size_t

# The buffers are raw pointers (c_void_p): c_char_p would hand the callback a copy.
NAMING_FN = ctypes.CFUNCTYPE(I32, I64, P, SIZE, P, SIZE, P)


# level, target, message, user_data
LOG_FN = ctypes.CFUNCTYPE(None, I32, S, S, P)


class BootstrapOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("path_naming_fn", NAMING_FN), ("user_data", P),
                ("connection_timeout_s", D), ("cuda_mode", I32), ("reserved0", ctypes.c_uint32), ("ptrace_mode", I32),
                ("allow_shared_group", ctypes.c_uint32), ("allow_shared_agent", ctypes.c_uint32)]


class TensorPayload(ctypes.Structure):
    _fields_ = [("pair_name", S), ("data", P), ("len", SIZE)]


class CudaTensor(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("dtype", I32), ("data", ctypes.c_uint64), ("ndim", ctypes.c_uint32),
                ("wait_on_stream", I32), ("shape", ctypes.POINTER(I64)), ("strides", ctypes.POINTER(I64)), ("stream", P)]


class Placement(ctypes.Structure):
    _fields_ = [("kind", I32), ("dim", I32), ("reduce_op", S)]


_SIGNATURES = {
    "etb_bootstrap_client": (I32, [NAMING_FN, P, D, ctypes.POINTER(P), ctypes.POINTER(P)]),
    "etb_bootstrap_options_init": (None, [ctypes.POINTER(BootstrapOptions)]),
    "etb_bootstrap_client_ex": (I32, [ctypes.POINTER(BootstrapOptions), ctypes.POINTER(P), ctypes.POINTER(P)]),
    "etb_client_close": (None, [P]),
    "etb_client_reconnect": (I32, [P, D]),
    "etb_client_heartbeat_age": (I32, [P, ctypes.POINTER(D)]),
    "etb_info_agent_rank": (I64, [P]),
    "etb_info_global_rank": (I64, [P]),
    "etb_info_has_rank_offset": (ctypes.c_bool, [P]),
    "etb_info_rank_offset": (I64, [P]),
    "etb_info_device": (S, [P]),
    "etb_info_device_index": (I32, [P]),
    "etb_info_command_queue_path": (S, [P]),
    "etb_info_state_path": (S, [P]),
    "etb_info_method": (S, [P]),
    "etb_info_agent_pid": (I32, [P]),
    "etb_info_cuda_bound": (ctypes.c_bool, [P]),
    "etb_info_device_name": (S, [P]),
    "etb_info_device_pci_bus_id": (S, [P]),
    "etb_info_device_uuid": (S, [P]),
    "etb_info_cuda_driver_version": (I32, [P]),
    "etb_client_cuda_context": (P, [P]),
    "etb_client_bind_current_thread": (I32, [P]),
    "etb_info_free": (None, [P]),
    "etb_setup_ptrace": (I32, []),
    "etb_setup_ptrace_pid": (I32, [I32]),
    "etb_status_name": (S, [I32]),
    "etb_last_error_message": (S, []),
    "etb_version": (S, []),
    "etb_client_init_pair": (I32, [P, S, S, S, I64, P, SIZE, P, SIZE, D]),
    "etb_client_register_tensors": (I32, [P, S, ctypes.POINTER(TensorPayload), SIZE, I64, D]),
    "etb_client_transfer": (I32, [P, S, I32, D]),
    "etb_client_query_transfer_signal": (I32, [P, S, D, ctypes.POINTER(ctypes.c_bool)]),
    "etb_client_cleanup_batch": (I32, [P, S, D]),
    "etb_client_transfer_async": (I32, [P, S, I32, D, ctypes.POINTER(P)]),
    "etb_client_transfer_detached": (I32, [P, S, I32, D]),
    "etb_completion_wait": (I32, [P, D]),
    "etb_completion_poll": (I32, [P, ctypes.POINTER(ctypes.c_bool)]),
    "etb_completion_free": (None, [P]),
    "etb_cuda_tensor_init": (None, [ctypes.POINTER(CudaTensor)]),
    "etb_client_cuda_tensor_payload": (I32, [P, ctypes.POINTER(CudaTensor), ctypes.POINTER(P)]),
    "etb_mesh_shape_payload": (I32, [ctypes.POINTER(I64), SIZE, ctypes.POINTER(P)]),
    "etb_placements_payload": (I32, [ctypes.POINTER(Placement), SIZE, ctypes.POINTER(P)]),
    "etb_payload_data": (ctypes.POINTER(ctypes.c_uint8), [P]),
    "etb_payload_len": (SIZE, [P]),
    "etb_payload_in_use": (I32, [P, ctypes.POINTER(ctypes.c_bool)]),
    "etb_payload_free": (None, [P]),
    "etb_dtype_name": (S, [I32]),
    "etb_dtype_size": (SIZE, [I32]),
    "etb_client_connect": (I32, [I64, S, S, ctypes.POINTER(BootstrapOptions), ctypes.POINTER(P), ctypes.POINTER(P)]),
    "etb_client_init_pair_async": (I32, [P, S, S, S, I64, P, SIZE, P, SIZE, D, ctypes.POINTER(P)]),
    "etb_client_cleanup_batch_async": (I32, [P, S, D, ctypes.POINTER(P)]),
    "etb_client_query_transfer_signal_async": (I32, [P, S, D, ctypes.POINTER(P)]),
    "etb_client_read_transfer_signal": (I32, [P, S, ctypes.POINTER(ctypes.c_bool)]),
    "etb_set_log_callback": (I32, [LOG_FN, P]),
}


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


EXPECTED_VERSION = "0.1"  # major.minor this package is written against


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
        lib.etb_version.restype = S
        found = lib.etb_version().decode()
    except AttributeError:
        raise ImportError(f"{path} is not the etha-tensor-bus library (no etb_version)") from None
    if found.rsplit(".", 1)[0] != EXPECTED_VERSION:
        raise ImportError(f"{path} is etha-tensor-bus {found}; this package needs {EXPECTED_VERSION}.x")
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


_lib = None
_LEVELS = {1: 40, 2: 30, 3: 20, 4: 10, 5: 5}  # ETB_LOG_* -> logging levels (TRACE below DEBUG)
_log_callback = None  # kept alive for the process


def _route_logs(lib):
    """The library's records go to logging.getLogger("etha_tensor_bus") (its own filter, ETB_LOG,
    applies first); the callback is unregistered at exit."""
    import atexit
    import logging

    global _log_callback
    logger = logging.getLogger("etha_tensor_bus")

    def on_record(level, target, message, _user_data):
        try:
            logger.log(_LEVELS.get(level, 10), "%s", message.decode("utf-8", "replace"),
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
