#!/usr/bin/env python3
"""The reference worker client's algorithm, as docs/protocol.md describes it,
written with the reference's own libraries (py-lmdb, msgspec, posix_ipc): the yardstick of the
benchmarks. It is *the reference algorithm*, not the reference itself; it is not made slower than
the description. Two departures, so that runs stay sane: close() never destroys the agent's queue
(the reference's does), and the death figure uses a short timeout.

Run as a benchmark program: reference_client.py MODE ARGS..., printing one JSON object.
"""
import ctypes
import json
import os
import pathlib
import statistics
import struct
import sys
import time
import uuid

import lmdb
import msgspec
import posix_ipc

CAPACITY = 50000
HEARTBEAT_FRESH = 5.0
POLL = 0.1  # the reference polls every 100 ms


class Transfer(msgspec.Struct, tag=True):
    batch_id: str
    transfer_type: str
    timestamp: float | None = None
    semaphore_name: str | None = None


class RegisterTensors(msgspec.Struct, tag=True):
    batch_id: str
    tensors: list[tuple[str, bytes]]
    bucket_size: int | None = None
    timestamp: float | None = None
    semaphore_name: str | None = None


class InitPair(msgspec.Struct, tag=True):
    pair_name: str
    local_name: str
    expected_world_size: int
    remote_name: str
    mesh_shape_payload: bytes | None = None
    placements_payload: bytes | None = None
    timestamp: float | None = None
    semaphore_name: str | None = None


# A payload the stand-in agent takes for a tensor (a whole pickle: pickle.dumps(b"\x01\x02", 3)).
TENSOR = b"\x80\x03C\x02\x01\x02q\x00."

ENCODER = msgspec.msgpack.Encoder()
# Names of the completion semaphores made: removed at exit, after the timings (the reference
# leaves them in /dev/shm, and posix_ipc 1.3.2 cannot unlink a closed one).
CREATED = []


class ReferenceQueue:
    """The command queue as the reference constructs it: leader election on /cq_ready_{stem},
    then the initializing write transaction (default fsync)."""

    def __init__(self, path):
        stem = pathlib.PurePath(path).stem
        items_name, space_name, ready_name = f"/cq_{stem}", f"/cq_space_{stem}", f"/cq_ready_{stem}"
        try:
            self.ready = posix_ipc.Semaphore(ready_name, posix_ipc.O_CREX, initial_value=0)
            leader = True
        except posix_ipc.ExistentialError:
            self.ready = posix_ipc.Semaphore(ready_name)
            leader = False
        self.env = lmdb.open(path, subdir=False, max_dbs=2, map_size=1 << 30)
        self.db = self.env.open_db(b"command_queue")
        with self.env.begin(write=True, db=self.db) as txn:
            for key in (b"__head__", b"__tail__"):
                if txn.get(key) is None:
                    txn.put(key, struct.pack("Q", 0))
        if leader:
            self.items = posix_ipc.Semaphore(items_name, posix_ipc.O_CREAT, initial_value=0)
            self.space = posix_ipc.Semaphore(space_name, posix_ipc.O_CREAT, initial_value=CAPACITY)
            self.ready.release()
        else:
            self.ready.acquire()
            self.ready.release()
            self.items = posix_ipc.Semaphore(items_name)
            self.space = posix_ipc.Semaphore(space_name)

    def enqueue(self, message, timeout=None):
        self.space.acquire(timeout)
        with self.env.begin(write=True, db=self.db) as txn:
            tail = struct.unpack("Q", txn.get(b"__tail__"))[0]
            txn.put(struct.pack("Q", tail % CAPACITY), message)
            txn.put(b"__tail__", struct.pack("Q", tail + 1))
            self.items.release()

    def close(self):
        # Departure: the reference's close() destroys the queue (destroy=True); never here.
        for sem in (self.items, self.space, self.ready):
            sem.close()
        self.env.close()


class ReferenceClient:
    def __init__(self, command_queue_path, state_path, connection_timeout=30.0):
        deadline = time.monotonic() + connection_timeout
        while not os.path.exists(state_path):
            if time.monotonic() > deadline:
                raise ConnectionError(f"Agent LMDB not found at {state_path}")
            time.sleep(POLL)
        self.state = lmdb.open(state_path, subdir=False, readonly=True, lock=False, max_dbs=2)
        while True:
            # The reference raises here when it looks between the agent's creation of the file and
            # that of its database (a race of the reference's, seen on a loaded machine): the
            # benchmark waits instead, so that the race cannot fail a run (it changes no timing
            # of a run that does not hit it).
            try:
                db = self.state.open_db(b"pair_state", create=False)
                break
            except lmdb.NotFoundError:
                if time.monotonic() > deadline:
                    raise ConnectionError(f"Agent at {state_path} has no pair_state database") from None
                time.sleep(POLL)
        while True:
            with self.state.begin(db=db) as txn:
                beat = txn.get(b"agent:heartbeat")
            if beat is not None and time.time() - float(beat) < HEARTBEAT_FRESH:
                break
            if time.monotonic() > deadline:
                raise ConnectionError(f"Agent at {state_path} is not responding")
            time.sleep(POLL)
        self.queue = ReferenceQueue(command_queue_path)

    def transfer(self, batch_id, transfer_type, blocking=False, timeout=30.0):
        context = f"batch_{batch_id}_{transfer_type}".replace("/", "_").replace(":", "_")
        name = f"/command_transfer_{context}_{os.getpid()}_{uuid.uuid4().hex}"
        sem = posix_ipc.Semaphore(name, posix_ipc.O_CREAT, initial_value=0)
        CREATED.append(name)
        message = ENCODER.encode(Transfer(batch_id, transfer_type, time.time(), name))
        self.queue.enqueue(message)
        if blocking:
            try:
                sem.acquire(timeout)
            except posix_ipc.BusyError:
                raise TimeoutError(f"transfer {batch_id} timed out") from None
            finally:
                sem.close()
        return sem

    def _blocking(self, kind, context, make, timeout=30.0):
        """Enqueues the command `make(name)` with a fresh completion semaphore and waits on it, as
        the reference's blocking calls do."""
        context = context.replace("/", "_").replace(":", "_")
        name = f"/command_{kind}_{context}_{os.getpid()}_{uuid.uuid4().hex}"
        sem = posix_ipc.Semaphore(name, posix_ipc.O_CREAT, initial_value=0)
        CREATED.append(name)
        self.queue.enqueue(ENCODER.encode(make(name)))
        try:
            sem.acquire(timeout)
        except posix_ipc.BusyError:
            raise TimeoutError(f"{kind} {context} timed out") from None
        finally:
            sem.close()

    def init_pair(self, pair_name, local_name, remote_name, expected_world_size, timeout=30.0):
        self._blocking("register", pair_name, lambda name: InitPair(
            pair_name, local_name, expected_world_size, remote_name, None, None, time.time(), name), timeout)

    def register_tensors(self, batch_id, tensors, timeout=30.0):
        """`tensors`: (payload, pair_name) pairs of pickled tensors, as the reference sends them."""
        self._blocking("register_tensors", f"batch_{batch_id}", lambda name: RegisterTensors(
            batch_id, [(pair, payload) for payload, pair in tensors], None, time.time(), name), timeout)

    def close(self):
        self.queue.close()
        self.state.close()


def register(c, batch_id):
    """What the real agent needs before it transfers a batch: the pair matched, the batch registered."""
    c.init_pair("bench", "reference", "peer", 1)
    c.register_tensors(batch_id, [(TENSOR, "bench")])


def setup_ptrace():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(0x59616D61, ctypes.c_ulong(-1 & 0xFFFFFFFFFFFFFFFF), 0, 0, 0)  # PR_SET_PTRACER, ANY


def bootstrap(paths, timeout=30.0):
    setup_ptrace()
    return ReferenceClient(paths[0], paths[1], timeout)


def summary(values, scale=1.0):
    values = sorted(values)
    n = len(values)
    return {"n": n, "median": statistics.median(values) * scale, "p10": values[n // 10] * scale,
            "p90": values[min(n - 1, (n * 9) // 10)] * scale}


def main():
    mode, cq, st = sys.argv[1], sys.argv[2], sys.argv[3]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 100
    paths = (cq, st)
    if mode == "bootstrap":
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            c = bootstrap(paths)
            times.append(time.perf_counter() - t0)
            c.close()
        print(json.dumps(summary(times, 1e6) | {"unit": "us"}))
    elif mode == "connect":
        # The agent is started by the caller right after this prints "waiting"; its first
        # heartbeat time is passed back on stdin.
        print("waiting", flush=True)
        c = bootstrap(paths)
        returned = time.time()
        beat = float(sys.stdin.readline())
        c.close()
        print(json.dumps({"latency_s": returned - beat}))
    elif mode == "enqueue":
        c = bootstrap(paths)
        message = ENCODER.encode(Transfer("b", "send", time.time(), None))
        t0 = time.perf_counter()
        for _ in range(n):
            c.queue.enqueue(message)
        took = time.perf_counter() - t0
        c.close()
        print(json.dumps({"n": n, "per_s": n / took}))
    elif mode == "issue":
        c = bootstrap(paths)
        times, sems = [], []
        for i in range(n):
            t0 = time.perf_counter()
            sems.append(c.transfer(f"b{i}", "send", blocking=False))
            times.append(time.perf_counter() - t0)
        for s in sems:
            s.close()
        c.close()
        print(json.dumps(summary(times, 1e6) | {"unit": "us"}))
    elif mode == "roundtrip":
        c = bootstrap(paths)
        register(c, "rt")
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            c.transfer("rt", "send", blocking=True, timeout=30.0)
            times.append(time.perf_counter() - t0)
        c.close()
        print(json.dumps(summary(times, 1e6) | {"unit": "us"}))
    elif mode == "death":
        # The caller kills the agent ~100 ms after "waiting"; the reference waits its timeout.
        timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 2.0
        c = bootstrap(paths)
        register(c, "dies")
        print("waiting", flush=True)
        t0 = time.perf_counter()
        try:
            c.transfer("dies", "send", blocking=True, timeout=timeout)
            outcome = "acknowledged"
        except TimeoutError:
            outcome = "timeout"
        took = time.perf_counter() - t0
        print(json.dumps({"waited_s": took, "outcome": outcome, "timeout_s": timeout}))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    try:
        main()
    finally:
        for name in CREATED:
            try:
                posix_ipc.unlink_semaphore(name)
            except posix_ipc.ExistentialError:
                pass
