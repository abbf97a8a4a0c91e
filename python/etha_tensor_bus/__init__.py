"""etha_tensor_bus: the worker side of the Etha tensor bus, without PyTorch.

A drop-in for the reference `etha.tensor_bus.bootstrap` API over the etha-tensor-bus C library
(loaded through ctypes from ETB_LIBRARY_PATH, a copy shipped in this package, or the system's
library path):

    from etha_tensor_bus import bootstrap_client
    client, info = bootstrap_client()
    with client:
        client.init_pair("weights", "train", "infer", expected_world_size=8)
        batch = client.register_tensors("step_0", [(payload, "weights")])
        batch.transfer("send", blocking=True)

Payloads are `bytes` where the reference takes tensors (the pickled CUDA IPC handles the agent
unpickles). Errors: see `etha_tensor_bus.errors`.
"""
import ctypes
import dataclasses
import os
from typing import Callable, Optional, Sequence, Tuple

from . import _native
from .errors import STATUS, TensorBusError, error_for

__version__ = "0.1.0"

__all__ = [
    "BatchHandler", "BootstrapInfo", "Completion", "TensorBusClient", "TensorBusError", "bootstrap_client",
    "setup_ptrace", "setup_ptrace_pid", "version",
]

_TRANSFER = {"send": 0, "recv": 1}


def _check(status):
    if status != STATUS["OK"]:
        raise error_for(status, _native.lib().etb_last_error_message().decode("utf-8", "replace"))


def _text(value, what):
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    return value.encode("utf-8")


def _kind(transfer_type):
    try:
        return _TRANSFER[transfer_type]
    except KeyError:
        raise ValueError(f"transfer_type must be 'send' or 'recv', not {transfer_type!r}") from None


def version():
    return _native.lib().etb_version().decode()


def setup_ptrace_pid(pid):
    """Lets exactly process `pid` (and its descendants) ptrace this one: least privilege."""
    _check(_native.lib().etb_setup_ptrace_pid(int(pid)))


def setup_ptrace():
    """Lets every process of this user ptrace this one (the reference's PR_SET_PTRACER_ANY).
    bootstrap_client already authorizes only the agent's process; prefer that."""
    _check(_native.lib().etb_setup_ptrace())


@dataclasses.dataclass(frozen=True)
class BootstrapInfo:
    """Information about the bootstrap process (the reference's fields, plus device and agent_pid)."""

    agent_rank: int
    global_rank: int
    rank_offset: Optional[int]
    device: str
    command_queue_path: str
    state_path: str
    method: str
    agent_pid: Optional[int] = None
    cuda_bound: bool = False
    device_name: Optional[str] = None
    device_pci_bus_id: Optional[str] = None
    device_uuid: Optional[str] = None
    cuda_driver_version: int = 0


class _Owned:
    """Owns one handle of the library, released by `_release` on close(), on garbage
    collection, or at the end of a `with` block."""

    _release = ""

    def close(self):
        if self._handle:
            getattr(_native.lib(), self._release)(self._handle)
            self._handle = None

    __del__ = close

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Completion(_Owned):
    """A transfer issued with blocking=False: wait() or poll() it; close() removes its semaphore."""

    _release = "etb_completion_free"

    def __init__(self, handle):
        self._handle = handle

    def wait(self, timeout=30.0):
        _check(_native.lib().etb_completion_wait(self._handle, float(timeout)))

    def poll(self):
        done = ctypes.c_bool(False)
        _check(_native.lib().etb_completion_poll(self._handle, ctypes.byref(done)))
        return done.value



class TensorBusClient(_Owned):
    """A worker's connection to its agent; made by bootstrap_client. Closing it releases only
    this worker's handles (never the agent's queue). A context manager."""

    _release = "etb_client_close"

    def __init__(self, handle):
        self._handle = handle

    @property
    def _h(self):
        if not self._handle:
            raise TensorBusError(STATUS["CLOSED"], "the client is closed")
        return self._handle

    def init_pair(self, pair_name, local_name, remote_name, expected_world_size, device_mesh=None,
                  placements=None, blocking=True, timeout=30.0):
        """InitPair; `device_mesh` and `placements` are the pickled mesh shape and placements
        (bytes) or None. Raises unless the agent records the pair as matched."""
        if not blocking:
            raise ValueError("init_pair(blocking=False) is not supported: the pair must be matched before use")
        mesh = None if device_mesh is None else bytes(device_mesh)
        place = None if placements is None else bytes(placements)
        _check(_native.lib().etb_client_init_pair(
            self._h, _text(pair_name, "pair_name"), _text(local_name, "local_name"),
            _text(remote_name, "remote_name"), int(expected_world_size),
            mesh, 0 if mesh is None else len(mesh), place, 0 if place is None else len(place), float(timeout)))

    def register_tensors(self, batch_id, tensors: Sequence[Tuple[bytes, str]], bucket_size=None, timeout=30.0):
        """RegisterTensors, always blocking; `tensors` is a list of (payload bytes, pair_name)."""
        items = list(tensors)
        keep = [bytes(payload) for payload, _ in items]
        array = (_native.TensorPayload * len(items))()
        for i, ((_, pair_name), payload) in enumerate(zip(items, keep)):
            array[i].pair_name = _text(pair_name, "pair_name")
            array[i].data = ctypes.cast(ctypes.c_char_p(payload), ctypes.c_void_p) if payload else None
            array[i].len = len(payload)
        _check(_native.lib().etb_client_register_tensors(
            self._h, _text(batch_id, "batch_id"), array if items else None, len(items),
            0 if bucket_size is None else int(bucket_size), float(timeout)))
        return BatchHandler(self, batch_id, [pair_name for _, pair_name in items])

    def transfer(self, batch_id, transfer_type, blocking=False, timeout=30.0):
        """Transfer. blocking=False returns a Completion (timeout bounds the wait for queue
        space); blocking=True waits for the agent and returns None."""
        lib, kind, batch = _native.lib(), _kind(transfer_type), _text(batch_id, "batch_id")
        if blocking:
            _check(lib.etb_client_transfer(self._h, batch, kind, float(timeout)))
            return None
        handle = ctypes.c_void_p()
        _check(lib.etb_client_transfer_async(self._h, batch, kind, float(timeout), ctypes.byref(handle)))
        return Completion(handle)

    def transfer_detached(self, batch_id, transfer_type, timeout=30.0):
        """Transfer with no completion at all (fire and forget)."""
        _check(_native.lib().etb_client_transfer_detached(self._h, _text(batch_id, "batch_id"), _kind(transfer_type), float(timeout)))

    def query_transfer_signal(self, batch_id, blocking=True, timeout=30.0):
        """QueryStatus of the batch's transfer signal (False when absent)."""
        if not blocking:
            raise ValueError("query_transfer_signal(blocking=False) is not supported: the answer needs the wait")
        signal = ctypes.c_bool(False)
        _check(_native.lib().etb_client_query_transfer_signal(self._h, _text(batch_id, "batch_id"), float(timeout), ctypes.byref(signal)))
        return signal.value

    def cleanup_batch(self, batch_id, timeout=30.0):
        _check(_native.lib().etb_client_cleanup_batch(self._h, _text(batch_id, "batch_id"), float(timeout)))

    def reconnect(self, timeout=30.0):
        """After the agent died and a new one started: use the new agent, keeping this client.
        Its pairs and batches are gone: init them again."""
        _check(_native.lib().etb_client_reconnect(self._h, float(timeout)))

    def cuda_context(self):
        """The CUcontext (an int address) the client holds, or None when unbound."""
        return _native.lib().etb_client_cuda_context(self._h)

    def bind_current_thread(self):
        """Makes the client's CUDA context current on the calling thread."""
        _check(_native.lib().etb_client_bind_current_thread(self._h))

    def heartbeat_age(self):
        age = ctypes.c_double()
        _check(_native.lib().etb_client_heartbeat_age(self._h, ctypes.byref(age)))
        return age.value



class BatchHandler:
    """What register_tensors returns, as the reference's BatchHandler."""

    def __init__(self, client, batch_id, pair_names):
        self.client = client
        self.batch_id = batch_id
        self.pair_names = pair_names

    def transfer(self, transfer_type, blocking=False, timeout=30.0):
        return self.client.transfer(self.batch_id, transfer_type, blocking=blocking, timeout=timeout)

    def query_transfer_signal(self, blocking=True, timeout=30.0):
        return self.client.query_transfer_signal(self.batch_id, blocking=blocking, timeout=timeout)

    def close(self, blocking=True, timeout=30.0):
        """CleanupBatch."""
        if not blocking:
            raise ValueError("close(blocking=False) is not supported")
        self.client.cleanup_batch(self.batch_id, timeout=timeout)


_CUDA_MODES = {"auto": 0, "require": 1, "skip": 2}


def bootstrap_client(path_naming_fn: Optional[Callable[[int], Tuple[str, str]]] = None, connection_timeout: float = 30.0,
                     *, cuda_mode: str = "auto", share_agent: bool = False):
    """Bootstrap TensorBusClient with automatic agent rank resolution; returns
    (TensorBusClient, BootstrapInfo). `path_naming_fn(rank) -> (cmd_queue_path, state_path)`;
    an exception it raises reaches the caller as itself. `cuda_mode` (keyword only, beyond the
    reference): "auto" binds to cuda:{LOCAL_RANK} when a driver and the device exist, "require"
    fails without them, "skip" never touches CUDA (CPU-only control processes). `share_agent`
    (keyword only): allow other workers on the same agent (every one of them must allow it);
    by default a second worker gets a ConnectionError (ETB_ERR_AGENT_BUSY)."""
    if cuda_mode not in _CUDA_MODES:
        raise ValueError(f"cuda_mode must be one of {sorted(_CUDA_MODES)}, not {cuda_mode!r}")
    lib = _native.lib()
    raised = []

    def naming(rank, cq, cq_cap, st, st_cap, _user_data):
        try:
            cmd_path, state_path = path_naming_fn(rank)
            for value, buf, cap in ((cmd_path, cq, cq_cap), (state_path, st, st_cap)):
                data = os.fsencode(value)
                if b"\0" in data or len(data) + 1 > cap:
                    raise ValueError(f"path {value!r} has a NUL byte or is longer than {cap - 1} bytes")
                ctypes.memmove(buf, data + b"\0", len(data) + 1)
            return 0
        except BaseException as e:  # never let it unwind into C: rethrown below
            raised.append(e)
            return 1

    callback = _native.NAMING_FN(naming) if path_naming_fn is not None else _native.NAMING_FN()
    options = _native.BootstrapOptions()
    lib.etb_bootstrap_options_init(ctypes.byref(options))
    options.path_naming_fn = callback  # kept alive by `callback` for the call
    options.connection_timeout_s = float(connection_timeout)
    options.cuda_mode = _CUDA_MODES[cuda_mode]
    options.allow_shared_agent = 1 if share_agent else 0
    client, info = ctypes.c_void_p(), ctypes.c_void_p()
    status = lib.etb_bootstrap_client_ex(ctypes.byref(options), ctypes.byref(client), ctypes.byref(info))
    if raised:
        raise raised[0]
    _check(status)
    client = TensorBusClient(client)  # owns the handle from here, whatever happens below
    try:
        dec = lambda b: os.fsdecode(b)  # noqa: E731
        result = BootstrapInfo(
            agent_rank=lib.etb_info_agent_rank(info),
            global_rank=lib.etb_info_global_rank(info),
            rank_offset=lib.etb_info_rank_offset(info) if lib.etb_info_has_rank_offset(info) else None,
            device=lib.etb_info_device(info).decode(),
            command_queue_path=dec(lib.etb_info_command_queue_path(info)),
            state_path=dec(lib.etb_info_state_path(info)),
            method=lib.etb_info_method(info).decode(),
            agent_pid=(lambda pid: pid if pid > 0 else None)(lib.etb_info_agent_pid(info)),
            cuda_bound=bool(lib.etb_info_cuda_bound(info)),
            device_name=(lambda b: b.decode() if b else None)(lib.etb_info_device_name(info)),
            device_pci_bus_id=(lambda b: b.decode() if b else None)(lib.etb_info_device_pci_bus_id(info)),
            device_uuid=(lambda b: b.decode() if b else None)(lib.etb_info_device_uuid(info)),
            cuda_driver_version=lib.etb_info_cuda_driver_version(info),
        )
    except BaseException:
        client.close()
        raise
    finally:
        lib.etb_info_free(info)
    return client, result
