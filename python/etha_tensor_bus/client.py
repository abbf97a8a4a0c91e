"""The worker's client: a drop-in for the reference `etha.tensor_bus.client` (TensorBusClient,
BatchHandler), with the reference's names, defaults and errors (docs/protocol.md section 7).
Beyond the reference, keyword-only; and what it does not copy (a completion that reports done
although the agent died; a close() that destroys the agent's queue; leaked semaphores) is in
the README."""
import ctypes
import os
import warnings
import weakref
from typing import List, Optional, Sequence, Tuple

from . import _aio, _native, _payloads
from ._common import Owned, check, options, read_info, text
from .errors import STATUS, AcquireTimeout, TensorBusError

__all__ = ["BatchHandler", "Completion", "TensorBusClient"]

_TRANSFER = _native.enum("ETB_TRANSFER_")  # {"send": ETB_TRANSFER_SEND, "recv": ETB_TRANSFER_RECV}


def _kind(transfer_type):
    try:
        return _TRANSFER[transfer_type]
    except KeyError:
        raise ValueError(f"transfer_type must be 'send' or 'recv', not {transfer_type!r}") from None


class Completion(Owned):
    """A command issued without waiting (transfer, init_pair, query_transfer_signal or
    BatchHandler.close with blocking=False). It reports done only once the agent posted it and was
    seen to survive it. It also answers what reference users call on the posix_ipc.Semaphore the
    reference returns: acquire(timeout), release(), close(), unlink(), name. Awaitable in asyncio
    (`await batch.transfer("send")`): the await parks no thread (the client's one watcher thread and
    its event fd do the waiting); a cancelled await leaves the completion usable."""

    _release = "etb_completion_free"

    def __init__(self, handle, name="", client=None):
        self._handle = handle
        self.name = name  # the reference's semaphore name attribute
        self._client = weakref.ref(client) if client is not None else None
        self._token = None

    @property
    def _h(self):
        if not self._handle:
            raise TensorBusError(STATUS["CLOSED"], "the completion is closed")
        return self._handle

    def wait(self, timeout=30.0):
        """Waits until the command is proven done (TimeoutError past `timeout`)."""
        check(_native.lib().etb_completion_wait(self._h, float(timeout)))

    def poll(self):
        """Whether the command is proven done; never blocks."""
        done = ctypes.c_bool(False)
        check(_native.lib().etb_completion_poll(self._h, ctypes.byref(done)))
        return done.value

    def acquire(self, timeout=None):
        """posix_ipc.Semaphore.acquire: waits (forever when None); on expiry raises an exception
        that is a TimeoutError and, where posix_ipc is importable, a posix_ipc.BusyError."""
        try:
            self.wait(float("inf") if timeout is None else timeout)
        except TensorBusError as e:
            if e.status == STATUS["TIMEOUT"]:
                raise AcquireTimeout(e.status, e.message) from None
            raise

    def watch(self, token):
        """Hands the completion to its client's watcher thread: once its outcome is final, `token`
        comes out of TensorBusClient.take_resolved() and the client's event_fd() turns readable
        (for an event loop of your own; `await` does this for asyncio)."""
        check(_native.lib().etb_completion_watch(self._h, int(token)))
        self._token = int(token)

    def __await__(self):
        return self._wait_async().__await__()

    async def _wait_async(self):
        if self.poll():
            return None
        client = self._client() if self._client is not None else None
        if client is None:
            raise TensorBusError(STATUS["CLOSED"], f"{self.name or 'the completion'}: its client is gone")
        if self._token is None:
            self.watch(_aio.next_token())
        await client._aio().future_for(self._token)
        # Resolved means final: poll answers it, or raises the error it ended with.
        if not self.poll():
            raise RuntimeError(f"{self.name}: resolved by the watcher but not final (a library bug)")
        return None

    def release(self):
        """posix_ipc.Semaphore.release: nothing to do here (the agent posts, we consume)."""

    def unlink(self):
        """posix_ipc.Semaphore.unlink: the semaphore is removed by close() (and on collection)."""
        self.close()


class TensorBusClient(Owned):
    """A worker's connection to its agent (the reference's TensorBusClient). Made by
    bootstrap_client, or directly with an agent rank and the two paths (taken from
    TENSOR_BUS_COMMAND_QUEUE_PATH and TENSOR_BUS_STATE_PATH when None). Closing it releases only
    this worker's handles: the agent's queue and files stay (the reference's close() destroys
    them, a defect not copied). A context manager.

    Beyond the reference, keyword-only: `cuda_mode` (see bootstrap_client), `share_agent`, and
    `device_index`, the CUDA device this client binds and makes its payloads on (None: cuda:0).
    A process that drives several GPUs (JAX: one process per host) makes one client per local
    agent, each with its own device_index, and may use each from any thread. The kernel keeps one
    ptrace authorization per process: the second live agent widens it to every process, with a
    warning (README, "Several GPUs in one process")."""

    _release = "etb_client_close"

    def __init__(self, agent_rank: int, lmdb_command_queue_path: Optional[str] = None,
                 agent_state_lmdb_path: Optional[str] = None, connection_timeout: float = 30.0, *,
                 cuda_mode: str = "auto", share_agent: bool = False, device_index: Optional[int] = None,
                 _handle=None):
        self.info = None
        # batch id -> how many times it was registered through this client (a dropped
        # BatchHandler of an earlier registration must not clean up a newer one).
        self._registrations = {}
        self._warned_unknown = set()
        if _handle is not None:
            self._handle = _handle
            return
        cq = lmdb_command_queue_path or os.environ.get("TENSOR_BUS_COMMAND_QUEUE_PATH")
        st = agent_state_lmdb_path or os.environ.get("TENSOR_BUS_STATE_PATH")
        if not cq or not st:
            raise ValueError("the agent's paths are needed: pass lmdb_command_queue_path and agent_state_lmdb_path, "
                             "or set TENSOR_BUS_COMMAND_QUEUE_PATH and TENSOR_BUS_STATE_PATH")
        self._registrations = {}
        self._warned_unknown = set()
        opts = options(connection_timeout, cuda_mode, share_agent, device_index=device_index)
        handle, info = ctypes.c_void_p(), ctypes.c_void_p()
        check(_native.lib().etb_client_connect(int(agent_rank), os.fsencode(cq), os.fsencode(st), ctypes.byref(opts),
                                               ctypes.byref(handle), ctypes.byref(info)))
        self._handle = handle
        self.info = read_info(info)

    @property
    def _h(self):
        if not self._handle:
            raise TensorBusError(STATUS["CLOSED"], "the client is closed")
        return self._handle

    def init_pair(self, pair_name: str, local_name: str, remote_name: str, expected_world_size: int,
                  device_mesh=None, placements=None, blocking: bool = True, timeout: float = 30.0):
        """The reference's init_pair. `device_mesh`: a torch DeviceMesh (sent as the reference does,
        ForkingPickler.dumps(tuple(mesh.mesh.shape))), a tuple of ints, or pre-pickled bytes.
        `placements`: torch placements (ForkingPickler.dumps(placements)), ("shard", dim),
        "replicate", ("partial", op), or bytes. Blocking: returns once the agent matched the pair
        (and survived). blocking=False returns a Completion whose wait/poll/acquire report success
        only once the agent recorded the match."""
        lib = _native.lib()
        mesh, place = _payloads.mesh_bytes(device_mesh), _payloads.placements_bytes(placements)
        args = (self._h, text(pair_name, "pair_name"), text(local_name, "local_name"),
                text(remote_name, "remote_name"), int(expected_world_size), mesh, 0 if mesh is None else len(mesh),
                place, 0 if place is None else len(place), float(timeout))
        if blocking:
            check(lib.etb_client_init_pair(*args))
            return None
        handle = ctypes.c_void_p()
        check(lib.etb_client_init_pair_async(*args, ctypes.byref(handle)))
        return Completion(handle, f"InitPair {pair_name}", self)

    def register_tensors(self, batch_id: str, tensors: Sequence[Tuple[object, str]], bucket_size: Optional[int] = None,
                         timeout: float = 30.0) -> "BatchHandler":
        """The reference's register_tensors, always blocking. `tensors` is a list of (tensor,
        pair_name): a torch tensor (sent as ForkingPickler.dumps(tensor.detach()), as the
        reference), an object with __dlpack__ (JAX, CuPy; asked with stream=1, the legacy
        default stream the payload's event is recorded on, and max_version=(1, 1)) or a DLPack
        capsule (consumed: renamed used_dltensor[_versioned]), an object with
        __cuda_array_interface__ only (Numba...), each a native CUDA payload kept alive with the
        returned BatchHandler (a DLPack one owns the producer's tensor: its deleter runs once the
        payload is freed and the agent released the memory), or pre-pickled bytes. Memory that is
        not CUDA device memory (a NumPy array: kDLCPU) is refused naming the device. An empty list, or a pair this client
        never matched (init_pair, or adopt_pair for an earlier process's), is a ValueError with
        nothing sent: the agent would die of it."""
        items = list(tensors)
        if not items:
            raise ValueError("register_tensors needs at least one (tensor, pair_name)")
        keep: List[object] = []
        blobs = [_payloads.tensor_payload(t, self._h, keep) for t, _ in items]
        array = (_native.TensorPayload * len(items))()
        for i, ((_, pair_name), blob) in enumerate(zip(items, blobs)):
            array[i].pair_name = text(pair_name, "pair_name")
            array[i].data = ctypes.cast(ctypes.c_char_p(blob), ctypes.c_void_p) if blob else None
            array[i].len = len(blob)
        try:
            check(_native.lib().etb_client_register_tensors(
                self._h, text(batch_id, "batch_id"), array, len(items), 0 if bucket_size is None else int(bucket_size),
                float(timeout)))
        finally:
            # Known to the agent from the enqueue on (also after a timeout): a newer registration.
            if self.batch_known(batch_id):
                self._registrations[batch_id] = self._registrations.get(batch_id, 0) + 1
        return BatchHandler(self, batch_id, [pair_name for _, pair_name in items], keep,
                            generation=self._registrations.get(batch_id, 0))

    def transfer(self, batch_id: str, transfer_type: str, blocking: bool = False, timeout: float = 30.0):
        """The reference's transfer. blocking=False (its default) returns a Completion, which also
        answers the posix_ipc.Semaphore calls (acquire, release, close, unlink, name);
        blocking=True waits until the agent is proven done and returns None. A batch this client
        never registered (or cleaned up; adopt_batch for an earlier process's) is a ValueError
        with nothing sent: the agent would die of it."""
        lib, kind, batch = _native.lib(), _kind(transfer_type), text(batch_id, "batch_id")
        if blocking:
            check(lib.etb_client_transfer(self._h, batch, kind, float(timeout)))
            return None
        handle = ctypes.c_void_p()
        check(lib.etb_client_transfer_async(self._h, batch, kind, float(timeout), ctypes.byref(handle)))
        return Completion(handle, f"Transfer {batch_id} {transfer_type}", self)

    def transfer_detached(self, batch_id: str, transfer_type: str, timeout: float = 30.0):
        """Transfer with no completion at all (fire and forget; beyond the reference)."""
        check(_native.lib().etb_client_transfer_detached(self._h, text(batch_id, "batch_id"), _kind(transfer_type),
                                                          float(timeout)))

    def query_transfer_signal(self, batch_id: str, blocking: bool = True, timeout: float = 30.0) -> bool:
        """The reference's query_transfer_signal. blocking=False sends the query without waiting
        and returns what the state holds now (the previous answer, or False), as the reference.
        For a batch this client never registered (or cleaned up) it returns False and sends
        nothing, with a warning once per batch: the agent answers nothing for an unknown batch,
        and a value an earlier batch of the same id left would be read as the answer (the
        reference returns False there too, after its timeout)."""
        lib, batch = _native.lib(), text(batch_id, "batch_id")
        if not self.batch_known(batch_id):
            if batch_id not in self._warned_unknown:
                self._warned_unknown.add(batch_id)
                warnings.warn(f"query_transfer_signal({batch_id!r}): this client never registered that batch (or "
                              f"cleaned it up; adopt_batch names an earlier process's): False, nothing sent",
                              RuntimeWarning, stacklevel=2)
            return False
        signal = ctypes.c_bool(False)
        if blocking:
            check(lib.etb_client_query_transfer_signal(self._h, batch, float(timeout), ctypes.byref(signal)))
            return signal.value
        handle = ctypes.c_void_p()
        check(lib.etb_client_query_transfer_signal_async(self._h, batch, float(timeout), ctypes.byref(handle)))
        Completion(handle).close()
        check(lib.etb_client_read_transfer_signal(self._h, batch, ctypes.byref(signal)))
        return signal.value

    def adopt_batch(self, batch_id: str):
        """Lets this client address a batch that an earlier process of this worker registered
        with the same agent (the agent keeps batches for its whole life); sends nothing."""
        check(_native.lib().etb_client_adopt_batch(self._h, text(batch_id, "batch_id")))

    def adopt_pair(self, pair_name: str):
        """Lets register_tensors name a pair that an earlier process of this worker matched with
        the same agent; sends nothing."""
        check(_native.lib().etb_client_adopt_pair(self._h, text(pair_name, "pair_name")))

    def batch_known(self, batch_id: str) -> bool:
        """Whether commands may address `batch_id`: registered or adopted by this client (and not
        cleaned up since), or the agent is shared (share_agent: no check)."""
        known = ctypes.c_bool(False)
        check(_native.lib().etb_client_batch_known(self._h, text(batch_id, "batch_id"), ctypes.byref(known)))
        return known.value

    def pair_known(self, pair_name: str) -> bool:
        """Whether register_tensors may name `pair_name`: matched or adopted by this client, or the
        agent is shared (no check)."""
        known = ctypes.c_bool(False)
        check(_native.lib().etb_client_pair_known(self._h, text(pair_name, "pair_name"), ctypes.byref(known)))
        return known.value

    def cleanup_batch(self, batch_id: str, blocking: bool = True, timeout: float = 30.0):
        """CleanupBatch (the reference's BatchHandler.close); blocking=False returns a Completion."""
        lib, batch = _native.lib(), text(batch_id, "batch_id")
        if blocking:
            check(lib.etb_client_cleanup_batch(self._h, batch, float(timeout)))
            return None
        handle = ctypes.c_void_p()
        check(lib.etb_client_cleanup_batch_async(self._h, batch, float(timeout), ctypes.byref(handle)))
        return Completion(handle, f"CleanupBatch {batch_id}", self)

    def cleanup_batch_detached(self, batch_id: str, timeout: float = 30.0):
        """CleanupBatch with no completion semaphore: a clean-up nobody waits for (the agent then
        has no semaphore to look for, and logs no warning about a missing one)."""
        check(_native.lib().etb_client_cleanup_batch_detached(self._h, text(batch_id, "batch_id"), float(timeout)))

    def close(self):
        """The reference's close(): releases this worker's handles (the lock on the agent, its
        CUDA binding, the open files). Unlike the reference, the agent's queue and files are left
        to the agent. Idempotent; later calls raise a TensorBusError with status CLOSED."""
        super().close()

    def reconnect(self, timeout: float = 30.0):
        """After the agent died and a new one started: use the new agent, keeping this client.
        Its pairs and batches are gone: init them again (beyond the reference)."""
        check(_native.lib().etb_client_reconnect(self._h, float(timeout)))

    def cuda_context(self):
        """The CUcontext (an int address) the client holds, or None when unbound."""
        return _native.lib().etb_client_cuda_context(self._h)

    def bind_current_thread(self):
        """Makes the client's CUDA context current on the calling thread."""
        check(_native.lib().etb_client_bind_current_thread(self._h))

    def heartbeat_age(self) -> float:
        age = ctypes.c_double()
        check(_native.lib().etb_client_heartbeat_age(self._h, ctypes.byref(age)))
        return age.value

    def event_fd(self) -> int:
        """The client's event fd (beyond the reference): readable, level-triggered, while a watched
        completion (Completion.watch) has its final outcome and its token was not taken with
        take_resolved(). Owned by the client: never close it. Starts the client's one watcher
        thread."""
        fd = ctypes.c_int(-1)
        check(_native.lib().etb_client_event_fd(self._h, ctypes.byref(fd)))
        return fd.value

    def take_resolved(self, max_tokens: int = 64) -> List[int]:
        """The tokens of watched completions whose outcome is final, oldest first (at most
        `max_tokens`); the event fd stops being readable once none is left. Never blocks."""
        tokens = (ctypes.c_uint64 * max(int(max_tokens), 0))()
        n = ctypes.c_size_t(0)
        check(_native.lib().etb_client_take_resolved(self._h, tokens, len(tokens), ctypes.byref(n)))
        return list(tokens[:n.value])

    def _aio(self):
        """The asyncio readers of this client's event fd (one per loop)."""
        if getattr(self, "_readers", None) is None:
            self._readers = _aio.Readers(self.event_fd, self.take_resolved)
        return self._readers


class BatchHandler:
    """What register_tensors returns (the reference's BatchHandler). Dropping it without close()
    sends a CleanupBatch nobody waits for (with no completion semaphore), as the reference's
    __del__ does, never raising and never leaving a semaphore behind; unless its batch id was
    registered again since (a newer BatchHandler's batch, which the clean-up would delete)."""

    def __init__(self, client: TensorBusClient, batch_id: str, pair_names: List[str], keep=(), generation=0):
        self.client = client
        self.batch_id = batch_id
        self.pair_names = pair_names
        self._keep = list(keep)  # native payloads: their memory must outlive the batch's use
        self._generation = generation
        self._closed = False

    def transfer(self, transfer_type: str, blocking: bool = False, timeout: float = 30.0):
        """The reference's BatchHandler.transfer."""
        return self.client.transfer(self.batch_id, transfer_type, blocking=blocking, timeout=timeout)

    def query_transfer_signal(self, blocking: bool = True, timeout: float = 30.0) -> bool:
        """The reference's BatchHandler.query_transfer_signal."""
        return self.client.query_transfer_signal(self.batch_id, blocking=blocking, timeout=timeout)

    def in_use(self) -> bool:
        """Whether a consumer still holds the memory of a native payload of this batch (beyond
        the reference; False when it has none)."""
        return any(p.in_use() for p in self._keep)

    def close(self, blocking: bool = True, timeout: float = 30.0):
        """The reference's BatchHandler.close: CleanupBatch (blocking=False: sent, not waited for,
        with no completion semaphore)."""
        self._closed = True
        if blocking:
            self.client.cleanup_batch(self.batch_id, blocking=True, timeout=timeout)
        else:
            self.client.cleanup_batch_detached(self.batch_id, timeout=timeout)

    def __del__(self):
        if getattr(self, "_closed", True):
            return
        try:
            newer = self.client._registrations.get(self.batch_id, 0) != self._generation
            if self.client._handle and not newer:
                self.close(blocking=False, timeout=0.0)
        except Exception:
            pass
