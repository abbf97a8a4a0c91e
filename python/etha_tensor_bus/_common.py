"""The package's shared helpers, between the declarations (_native) and the public modules:
the one status check, the one check of a string argument, the one builder of the bootstrap
options, BootstrapInfo and the one reader of an EtbBootstrapInfo, and the base of every object
that owns a library handle. The same bad input raises the same exception wherever it is given.

Layers (tests/python/test_package_layers.py checks them): _abi <- _native, errors <- _common <-
_payloads, client <- bootstrap <- the package; no module imports one above it, none imports in
a circle, also inside a function."""
import ctypes
import dataclasses
import os
from typing import Optional

from . import _native
from .errors import STATUS, error_for

CUDA_MODES = _native.enum("ETB_CUDA_")  # {"auto": ETB_CUDA_AUTO, "require": ..., "skip": ...}


def options(connection_timeout, cuda_mode, share_agent, naming=None, device_index=None):
    """An EtbBootstrapOptions: the library's defaults (etb_bootstrap_options_init), then the
    options the Python forms take. A `cuda_mode` that is not one of CUDA_MODES, or a
    `device_index` that is not None or an int >= 0, is a ValueError (TypeError for a non-int),
    raised before the library is loaded. `naming`: a NAMING_FN, which the caller keeps alive for
    the call that uses the options. `device_index` None keeps the library's default (-1: the
    device of LOCAL_RANK for bootstrap_client, cuda:0 for TensorBusClient)."""
    if cuda_mode not in CUDA_MODES:
        raise ValueError(f"cuda_mode must be one of {sorted(CUDA_MODES)}, not {cuda_mode!r}")
    if device_index is not None:
        if isinstance(device_index, bool) or not isinstance(device_index, int):
            raise TypeError(f"device_index must be an int or None, not {type(device_index).__name__}")
        if not 0 <= device_index <= 0x7FFFFFFF:
            raise ValueError(f"device_index must be a CUDA device ordinal, 0 to 2147483647 (None: the default "
                             f"device), not {device_index}")
    o = _native.BootstrapOptions()
    _native.lib().etb_bootstrap_options_init(ctypes.byref(o))
    if naming is not None:
        o.path_naming_fn = naming
    o.connection_timeout_s = float(connection_timeout)
    o.cuda_mode = CUDA_MODES[cuda_mode]
    o.allow_shared_agent = 1 if share_agent else 0
    if device_index is not None:
        o.device_index = device_index
    return o


def check(status):
    """Raises the exception for a failed status (errors.error_for), with the library's message."""
    if status != STATUS["OK"]:
        raise error_for(status, _native.lib().etb_last_error_message().decode("utf-8", "replace"))


def text(value, what):
    """A str argument as UTF-8 bytes; anything else is a TypeError naming `what`."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    return value.encode("utf-8")


@dataclasses.dataclass(frozen=True)
class BootstrapInfo:
    """The reference's BootstrapInfo (agent_rank, global_rank, rank_offset, device,
    command_queue_path, state_path, method), plus the agent's pid and the GPU binding. `device` is
    the client's: "cuda:{device_index}" when one was chosen, else "cuda:{LOCAL_RANK}" (bootstrap)
    or "cuda:0" (TensorBusClient)."""

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


def read_info(info) -> BootstrapInfo:
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


class Owned:
    """Owns one handle of the library, released by `_release` on close(), on garbage
    collection, or at the end of a `with` block."""

    _release = ""
    _handle = None

    def close(self):
        if self._handle:
            getattr(_native.lib(), self._release)(self._handle)
            self._handle = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
