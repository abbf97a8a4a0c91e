"""Fixtures of the interop tests: the built library (ctypes), the stand-in agents, unique names."""
import ctypes
import itertools
import os
import pathlib
import signal
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
_counter = itertools.count(1)


def unique_rank():
    """An agent rank no other test process uses (semaphore names derive from it)."""
    return os.getpid() * 1000 + 800 + next(_counter)


def library_path():
    path = os.environ.get("ETB_LIBRARY_PATH") or str(ROOT / "target" / "debug" / "libetha_tensor_bus.so")
    if not os.path.exists(path):
        pytest.fail(f"{path} not found: build with `cargo build` or set ETB_LIBRARY_PATH")
    return path


NAMING_FN = ctypes.CFUNCTYPE(
    # The buffers are raw pointers (c_void_p): c_char_p would hand the callback a *copy* as bytes.
    ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p
)


class BootstrapOptions(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("path_naming_fn", NAMING_FN), ("user_data", ctypes.c_void_p),
                ("connection_timeout_s", ctypes.c_double), ("cuda_mode", ctypes.c_int32), ("reserved0", ctypes.c_uint32), ("ptrace_mode", ctypes.c_int32),
                ("allow_shared_group", ctypes.c_uint32), ("allow_shared_agent", ctypes.c_uint32)]


class TensorPayload(ctypes.Structure):
    _fields_ = [("pair_name", ctypes.c_char_p), ("data", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def load_library():
    lib = ctypes.CDLL(library_path())
    P = ctypes.c_void_p
    S = ctypes.c_char_p
    D = ctypes.c_double
    I32 = ctypes.c_int32
    sigs = {
        "etb_bootstrap_client": (ctypes.c_int32, [NAMING_FN, P, ctypes.c_double, ctypes.POINTER(P), ctypes.POINTER(P)]),
        "etb_client_close": (None, [P]),
        "etb_bootstrap_options_init": (None, [ctypes.POINTER(BootstrapOptions)]),
        "etb_bootstrap_client_ex": (I32, [ctypes.POINTER(BootstrapOptions), ctypes.POINTER(P), ctypes.POINTER(P)]),
        "etb_setup_ptrace_pid": (I32, [I32]),
        "etb_client_heartbeat_age": (ctypes.c_int32, [P, ctypes.POINTER(ctypes.c_double)]),
        "etb_info_agent_rank": (ctypes.c_int64, [P]),
        "etb_info_global_rank": (ctypes.c_int64, [P]),
        "etb_info_has_rank_offset": (ctypes.c_bool, [P]),
        "etb_info_rank_offset": (ctypes.c_int64, [P]),
        "etb_info_device": (ctypes.c_char_p, [P]),
        "etb_info_device_index": (ctypes.c_int32, [P]),
        "etb_info_command_queue_path": (ctypes.c_char_p, [P]),
        "etb_info_state_path": (ctypes.c_char_p, [P]),
        "etb_info_method": (ctypes.c_char_p, [P]),
        "etb_info_agent_pid": (ctypes.c_int32, [P]),
        "etb_info_free": (None, [P]),
        "etb_setup_ptrace": (ctypes.c_int32, []),
        "etb_status_name": (ctypes.c_char_p, [ctypes.c_int32]),
        "etb_last_error_message": (ctypes.c_char_p, []),
        "etb_version": (ctypes.c_char_p, []),
        "etb_client_init_pair": (I32, [P, S, S, S, ctypes.c_int64, P, ctypes.c_size_t, P, ctypes.c_size_t, D]),
        "etb_client_register_tensors": (I32, [P, S, ctypes.POINTER(TensorPayload), ctypes.c_size_t, ctypes.c_int64, D]),
        "etb_client_transfer": (I32, [P, S, I32, D]),
        "etb_client_query_transfer_signal": (I32, [P, S, D, ctypes.POINTER(ctypes.c_bool)]),
        "etb_client_cleanup_batch": (I32, [P, S, D]),
        "etb_client_transfer_async": (I32, [P, S, I32, D, ctypes.POINTER(P)]),
        "etb_client_transfer_detached": (I32, [P, S, I32, D]),
        "etb_completion_wait": (I32, [P, D]),
        "etb_completion_poll": (I32, [P, ctypes.POINTER(ctypes.c_bool)]),
        "etb_completion_free": (None, [P]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


@pytest.fixture(scope="session")
def lib():
    return load_library()


class Agent:
    """A stand-in agent process (Python or Rust), stopped cleanly by stop()."""

    def __init__(self, argv, paths):
        self.paths = paths
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("ready pid="):
            self.proc.kill()
            raise RuntimeError(f"agent did not start: {line!r}")
        self.pid = self.proc.pid

    def status(self):
        self.proc.send_signal(signal.SIGUSR1)
        return self.proc.stdout.readline().strip()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.proc.stdout.close()


def default_paths(rank):
    return (f"/tmp/agent_rank{rank}_command.lmdb", f"/tmp/agent_rank{rank}_state.lmdb")


@pytest.fixture
def python_agent():
    """Starts Python stand-in agents (rank -> Agent); all stopped at the end of the test."""
    agents = []

    def start(rank, *extra):
        argv = [sys.executable, str(HERE / "standin_agent.py"), "--rank", str(rank), "--exit-after", "120", *extra]
        agents.append(Agent(argv, default_paths(rank)))
        return agents[-1]

    yield start
    for a in agents:
        a.stop()


def leftovers(rank):
    """What agent `rank` may have left in /tmp and /dev/shm."""
    stem = f"agent_rank{rank}_command"
    left = [f"/dev/shm/{n}" for n in os.listdir("/dev/shm") if n.endswith("_" + stem)]
    left += [f"/tmp/{n}" for n in os.listdir("/tmp") if n.startswith(f"agent_rank{rank}_")]
    return left
