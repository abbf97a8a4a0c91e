"""etha_tensor_bus: the worker side of the Etha tensor bus, a drop-in for the reference worker
client. Switch by changing one import:

    from etha_tensor_bus import bootstrap_client      # was: from etha.tensor_bus.bootstrap import bootstrap_client
    client, info = bootstrap_client()
    client.init_pair("p", "train", "infer", 4, device_mesh=mesh, placements=(Shard(0),))
    batch = client.register_tensors("step", [(tensor, "p")])
    sem = batch.transfer("send")
    sem.acquire(30.0)

The module paths mirror the reference: `etha_tensor_bus.bootstrap` (bootstrap_client,
BootstrapInfo, setup_ptrace) and `etha_tensor_bus.client` (TensorBusClient, BatchHandler). The
package imports and bootstraps without PyTorch: torch is used only when a torch object is
passed. The library it ships is loaded on first use (ETB_LIBRARY_PATH overrides it); its log
records go to logging.getLogger("etha_tensor_bus"). Errors: see `etha_tensor_bus.errors`.
"""
from . import _abi, _native
from .bootstrap import BootstrapInfo, bootstrap_client, setup_ptrace, setup_ptrace_pid
from .client import BatchHandler, Completion, TensorBusClient
from .errors import TensorBusError

# The version of the header this package was generated from: Cargo.toml's, as the wheel's
# metadata (setup.py) and the library (etb_version) say; the loaded library must share its
# major.minor (_native.load).
__version__ = f"{_abi.ETB_VERSION_MAJOR}.{_abi.ETB_VERSION_MINOR}.{_abi.ETB_VERSION_PATCH}"

__all__ = [
    "BatchHandler", "BootstrapInfo", "Completion", "TensorBusClient", "TensorBusError", "bootstrap_client",
    "setup_ptrace", "setup_ptrace_pid", "version",
]


def version() -> str:
    """The loaded C library's version."""
    return _native.lib().etb_version().decode()
