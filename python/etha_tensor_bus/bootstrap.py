"""The reference's `etha.tensor_bus.bootstrap`: bootstrap_client, BootstrapInfo, setup_ptrace
(docs/bootstrap-api.md), over the etha-tensor-bus C library."""
import ctypes
import os
from typing import Callable, Optional, Tuple

from . import _native
from ._common import BootstrapInfo, check, options, read_info
from .client import TensorBusClient

__all__ = ["BootstrapInfo", "bootstrap_client", "setup_ptrace", "setup_ptrace_pid"]


def setup_ptrace_pid(pid: int):
    """Lets exactly process `pid` (and its descendants) ptrace this one: least privilege."""
    check(_native.lib().etb_setup_ptrace_pid(int(pid)))


def setup_ptrace():
    """The reference's setup_ptrace(): lets every process of this user ptrace this one
    (PR_SET_PTRACER_ANY). bootstrap_client already authorizes only the agent's process."""
    check(_native.lib().etb_setup_ptrace())


def bootstrap_client(path_naming_fn: Optional[Callable[[int], Tuple[str, str]]] = None,
                     connection_timeout: float = 30.0, *, cuda_mode: str = "auto",
                     share_agent: bool = False,
                     device_index: Optional[int] = None) -> Tuple[TensorBusClient, BootstrapInfo]:
    """The reference's bootstrap_client: resolves the agent rank from the environment (AGENT_RANK,
    or RANK + AGENT_RANK_OFFSET), names the agent's files (`path_naming_fn(rank) ->
    (cmd_queue_path, state_path)`; an exception it raises reaches the caller as itself), waits for
    the agent, and returns (TensorBusClient, BootstrapInfo). Beyond the reference, keyword-only:
    `cuda_mode` ("auto" binds to the device when a driver and the device exist, "require"
    fails without them, "skip" never touches CUDA), `share_agent` (allow other workers on the
    same agent; by default a second worker gets a ConnectionError) and `device_index` (the CUDA
    device to bind and make payloads on; None: cuda:{LOCAL_RANK}; one the driver does not have is
    a TensorBusError ETB_ERR_CUDA, also in "auto")."""
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

    callback = _native.NAMING_FN(naming) if path_naming_fn is not None else None  # alive for the call
    opts = options(connection_timeout, cuda_mode, share_agent, naming=callback, device_index=device_index)
    handle, info = ctypes.c_void_p(), ctypes.c_void_p()
    status = _native.lib().etb_bootstrap_client_ex(ctypes.byref(opts), ctypes.byref(handle), ctypes.byref(info))
    if raised:
        raise raised[0]
    check(status)
    client = TensorBusClient(0, _handle=handle)  # owns the handle from here, whatever happens below
    try:
        client.info = read_info(info)
    except BaseException:
        client.close()
        raise
    return client, client.info
