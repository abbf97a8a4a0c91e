"""The reference's `etha.tensor_bus.bootstrap`: bootstrap_client, BootstrapInfo, setup_ptrace
(docs/bootstrap-api.md), over the etha-tensor-bus C library."""
import ctypes
import dataclasses
import os
from typing import Callable, Optional, Tuple

from . import _native
from .client import TensorBusClient, _check

__all__ = ["BootstrapInfo", "bootstrap_client", "setup_ptrace", "setup_ptrace_pid"]

_CUDA_MODES = _native.enum("ETB_CUDA_")  # {"auto": ETB_CUDA_AUTO, "require": ..., "skip": ...}


@dataclasses.dataclass(frozen=True)
class BootstrapInfo:
    """The reference's BootstrapInfo (agent_rank, global_rank, rank_offset, device,
    command_queue_path, state_path, method), plus the agent's pid and the GPU binding."""

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


def setup_ptrace_pid(pid: int):
    """Lets exactly process `pid` (and its descendants) ptrace this one: least privilege."""
    _check(_native.lib().etb_setup_ptrace_pid(int(pid)))


def setup_ptrace():
    """The reference's setup_ptrace(): lets every process of this user ptrace this one
    (PR_SET_PTRACER_ANY). bootstrap_client already authorizes only the agent's process."""
    _check(_native.lib().etb_setup_ptrace())


def _read_info(info) -> BootstrapInfo:
    """Reads and frees an EtbBootstrapInfo."""
    lib = _native.lib()
    opt = lambda b: b.decode() if b else None  # noqa: E731
    try:
        return BootstrapInfo(
            agent_rank=lib.etb_info_agent_rank(info),
            global_rank=lib.etb_info_global_rank(info),
            rank_offset=lib.etb_info_rank_offset(info) if lib.etb_info_has_rank_offset(info) else None,
            device=lib.etb_info_device(info).decode(),
            command_queue_path=os.fsdecode(lib.etb_info_command_queue_path(info)),
            state_path=os.fsdecode(lib.etb_info_state_path(info)),
            method=lib.etb_info_method(info).decode(),
            agent_pid=(lambda pid: pid if pid > 0 else None)(lib.etb_info_agent_pid(info)),
            cuda_bound=bool(lib.etb_info_cuda_bound(info)),
            device_name=opt(lib.etb_info_device_name(info)),
            device_pci_bus_id=opt(lib.etb_info_device_pci_bus_id(info)),
            device_uuid=opt(lib.etb_info_device_uuid(info)),
            cuda_driver_version=lib.etb_info_cuda_driver_version(info),
        )
    finally:
        lib.etb_info_free(info)


def bootstrap_client(path_naming_fn: Optional[Callable[[int], Tuple[str, str]]] = None,
                     connection_timeout: float = 30.0, *, cuda_mode: str = "auto",
                     share_agent: bool = False) -> Tuple[TensorBusClient, BootstrapInfo]:
    """The reference's bootstrap_client: resolves the agent rank from the environment (AGENT_RANK,
    or RANK + AGENT_RANK_OFFSET), names the agent's files (`path_naming_fn(rank) ->
    (cmd_queue_path, state_path)`; an exception it raises reaches the caller as itself), waits for
    the agent, and returns (TensorBusClient, BootstrapInfo). Beyond the reference, keyword-only:
    `cuda_mode` ("auto" binds to cuda:{LOCAL_RANK} when a driver and the device exist, "require"
    fails without them, "skip" never touches CUDA) and `share_agent` (allow other workers on the
    same agent; by default a second worker gets a ConnectionError)."""
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
    handle, info = ctypes.c_void_p(), ctypes.c_void_p()
    status = lib.etb_bootstrap_client_ex(ctypes.byref(options), ctypes.byref(handle), ctypes.byref(info))
    if raised:
        raise raised[0]
    _check(status)
    client = TensorBusClient(0, _handle=handle)  # owns the handle from here, whatever happens below
    try:
        client.info = _read_info(info)
    except BaseException:
        client.close()
        raise
    return client, client.info
