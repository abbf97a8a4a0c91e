#!/usr/bin/env python3
"""A stand-in for the Python Etha agent, built on the same libraries it uses: py-lmdb, posix_ipc
and msgspec. It follows docs/protocol.md sections 2, 3 and 6: clean-up of stale
files and semaphores, the command queue created as its leader, then the state LMDB, then a
heartbeat every loop turn (about 1 ms).

It consumes commands as the reference agent does (sections 3 to 5): waits on /cq_{stem} for
1 ms, dequeues in a write transaction, decodes with msgspec into the structs below (written
from PROTOCOL section 4), performs each command's visible effect, then opens the completion
semaphore by name, posts it, closes it and tries to unlink it (which posix_ipc 1.3.2 refuses
after the close: the worker must remove it). On SIGUSR1 it prints one status line (queue head
and tail, semaphore values); on SIGTERM or SIGINT it exits cleanly, destroying the queue and the
state as the agent's clean exit does.

Each loop turn is the agent's: write the heartbeat, dequeue (1 ms wait), handle. So after every
command it survives it beats once before its next dequeue, and after one that fails it posts the
completion, writes no heartbeat, waits --fail-delay, destroys its queue and state as the launch
scripts' `finally` does (unless --keep-files), and exits 3: the real agent's failure path
(docs/protocol.md section 5).

It is as strict as the real agent by default (section 5, "What each handler of the real agent
rejects", every row it can check without torch): it keeps the pairs it matched and the batches it
registered, and fails on a Transfer for a batch it does not hold (never registered, or cleaned
up), a RegisterTensors with no tensors or naming a pair it never matched, and a payload that is
not a well-formed pickle (read opcode by opcode with pickletools, which imports nothing; with
--unpickle, pickle.loads, which imports what the pickle names); it survives a QueryStatus for an
unknown batch or of another state than transfer_signal (writing nothing) and a CleanupBatch for an
unknown batch (a warning). --fail-on fails a command
type on purpose; --lenient (only for tests of the stand-in itself) accepts everything.

    standin_agent.py (--rank N | --command-queue PATH --state PATH) [--no-queue] [--sync]
                     [--exit-after SECS] [--no-dequeue] [--exit-on TYPE] [--never-ack TYPE]
                     [--fail-on TYPE] [--fail-delay SECS] [--keep-files] [--unpickle]
                     [--hold TYPE SECS] [--stall-heartbeat] [--beat-hold SECS] [--record PATH]
                     [--forking-loads PATH] [--release-counters] [--lenient]
"""
import argparse
import mmap
import os
import pathlib
import pickle
import pickletools
import re
import signal
import struct
import sys
import time

from typing import Optional, Union

import lmdb
import msgspec
import posix_ipc

CAPACITY = 50000
QUEUE_MAP_SIZE = 1 << 30
STATE_MAP_SIZE = 256 << 20


# The agent's messages (PROTOCOL section 4): tagged structs, the tag is the class name.
class Transfer(msgspec.Struct, tag=True):
    batch_id: str
    transfer_type: str
    timestamp: Optional[float] = None
    semaphore_name: Optional[str] = None


class RegisterTensors(msgspec.Struct, tag=True):
    batch_id: str
    tensors: list[tuple[str, bytes]]
    bucket_size: Optional[int] = None
    timestamp: Optional[float] = None
    semaphore_name: Optional[str] = None


class InitPair(msgspec.Struct, tag=True):
    pair_name: str
    local_name: str
    expected_world_size: int
    remote_name: str
    mesh_shape_payload: Optional[bytes] = None
    placements_payload: Optional[bytes] = None
    timestamp: Optional[float] = None
    semaphore_name: Optional[str] = None


class QueryStatus(msgspec.Struct, tag=True):
    batch_id: str
    state_name: str
    timestamp: Optional[float] = None
    semaphore_name: Optional[str] = None


class CleanupBatch(msgspec.Struct, tag=True):
    batch_id: str
    timestamp: Optional[float] = None
    semaphore_name: Optional[str] = None


Command = Union[Transfer, RegisterTensors, InitPair, QueryStatus, CleanupBatch]
DECODER = msgspec.msgpack.Decoder(Command)
ENCODER = msgspec.msgpack.Encoder()


def default_paths(rank):
    return (f"/tmp/agent_rank{rank}_command.lmdb", f"/tmp/agent_rank{rank}_state.lmdb")


def sem_names(queue_path):
    stem = pathlib.PurePath(queue_path).stem
    return f"/cq_{stem}", f"/cq_space_{stem}", f"/cq_ready_{stem}"


def clean_stale(queue_path, state_path):
    """As the launch scripts do: delete {name}* next to both files, unlink the semaphores."""
    for path in (queue_path, state_path):
        folder, name = os.path.split(path)
        for entry in os.listdir(folder or "."):
            if entry.startswith(name):
                try:
                    os.remove(os.path.join(folder, entry))
                except FileNotFoundError:
                    pass
    for name in sem_names(queue_path):
        try:
            posix_ipc.unlink_semaphore(name)
        except posix_ipc.ExistentialError:
            pass


class QueueLeader:
    """The command queue as its leader creates it (PROTOCOL section 3)."""

    def __init__(self, path, sync):
        self.path = path
        items_name, space_name, ready_name = self.names = sem_names(path)
        self.ready = posix_ipc.Semaphore(ready_name, posix_ipc.O_CREX, mode=0o600, initial_value=0)
        self.env = lmdb.open(path, subdir=False, max_dbs=2, map_size=QUEUE_MAP_SIZE, sync=sync, lock=True)
        self.db = self.env.open_db(b"command_queue")
        with self.env.begin(write=True, db=self.db) as txn:
            for key in (b"__head__", b"__tail__"):
                if txn.get(key) is None:
                    txn.put(key, struct.pack("Q", 0))
            length = self._positions(txn)[1] - self._positions(txn)[0]
        self.items = posix_ipc.Semaphore(items_name, posix_ipc.O_CREAT, mode=0o600, initial_value=length)
        self.space = posix_ipc.Semaphore(space_name, posix_ipc.O_CREAT, mode=0o600, initial_value=CAPACITY - length)
        self.ready.release()

    def _positions(self, txn):
        return tuple(struct.unpack("Q", txn.get(k))[0] for k in (b"__head__", b"__tail__"))

    def dequeue(self):
        """One command, as the reference agent's dequeue: None when there is none."""
        try:
            self.items.acquire(0.001)
        except (posix_ipc.BusyError, posix_ipc.SignalError):  # SignalError: our SIGUSR1
            return None
        with self.env.begin(write=True, db=self.db) as txn:
            head, tail = self._positions(txn)
            if tail - head <= 0:
                return None
            raw = txn.get(struct.pack("Q", head % CAPACITY))
            txn.put(b"__head__", struct.pack("Q", head + 1))
        try:
            command = DECODER.decode(raw)
        except msgspec.DecodeError as e:
            print(f"undecodable message: {e}", file=sys.stderr, flush=True)
            return None  # the reference leaks the slot here (a defect we keep: it is the agent's)
        self.space.release()
        return command

    def status(self):
        with self.env.begin(db=self.db) as txn:
            head, tail = self._positions(txn)
        st = os.stat(self.path)
        return (
            f"head={head} tail={tail} items={self.items.value} space={self.space.value} "
            f"ready={self.ready.value} txnid={self.env.info()['last_txnid']} size={st.st_size} mtime={st.st_mtime_ns}"
        )

    def destroy(self):
        for sem in (self.items, self.space, self.ready):
            sem.unlink()
            sem.close()
        self.env.close()
        for suffix in ("", "-lock"):
            try:
                os.remove(self.path + suffix)
            except FileNotFoundError:
                pass


def ref_counters(data):
    """The (file, slot) of a rebuild_cuda_tensor payload's reference counter: the file's name is
    a SHORT_BINBYTES starting b"/etb_rc_" (or torch's own "/torch_"), the slot the int after it."""
    out = []
    for m in re.finditer(rb"C(.)(/(?:etb_rc|torch)_)", data, re.S):
        start = m.start(2)
        name = data[start:start + m.group(1)[0]]
        rest = data[start + len(name):]
        if rest[:1] == b"K":
            out.append((name.decode(), rest[1]))
        elif rest[:1] == b"M":
            out.append((name.decode(), int.from_bytes(rest[1:3], "little")))
        elif rest[:1] == b"J":
            out.append((name.decode(), int.from_bytes(rest[1:5], "little", signed=True)))
    return out


def release_counter(name, slot):
    """Decrements one slot (64-byte header, then int64 slots), as torch's release does."""
    try:
        fd = os.open("/dev/shm/" + name.lstrip("/"), os.O_RDWR)
    except FileNotFoundError:
        return  # the worker freed its last payload of that file: torch tolerates it too
    try:
        with mmap.mmap(fd, 0) as m:
            at = 64 + slot * 8
            value = int.from_bytes(m[at:at + 8], "little", signed=True)
            m[at:at + 8] = (value - 1).to_bytes(8, "little", signed=True)
    finally:
        os.close(fd)


def describe(obj):
    """What --forking-loads records of one unpickled payload."""
    import torch

    if isinstance(obj, torch.Tensor):
        return {"dtype": str(obj.dtype), "shape": list(obj.shape), "values": obj.tolist()}
    if isinstance(obj, tuple) and all(isinstance(d, int) for d in obj):
        return {"mesh_shape": list(obj)}
    return {"repr": repr(obj)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rank", type=int)
    p.add_argument("--command-queue")
    p.add_argument("--state")
    p.add_argument("--no-queue", action="store_true")
    p.add_argument("--sync", action="store_true", help="fsync every heartbeat, as the real agent does")
    p.add_argument("--exit-after", type=float, default=None)
    p.add_argument("--no-dequeue", action="store_true")
    p.add_argument("--exit-on", help="exit (as a crash: files kept) on receiving this command type")
    p.add_argument("--never-ack", help="never post the completion of this command type")
    p.add_argument("--fail-on", help="post this command type's completion, then die as the agent does")
    p.add_argument("--fail-delay", type=float, default=0.0, help="seconds the failing agent lives after the post")
    p.add_argument("--keep-files", action="store_true", help="a failing agent leaves its files (as a kill would)")
    p.add_argument("--unpickle", action="store_true",
                   help="unpickle every payload (pickle.loads) as the agent does; one that fails is a failure")
    p.add_argument("--hold", nargs=2, metavar=("TYPE", "SECS"), help="handle TYPE for SECS before posting")
    p.add_argument("--stall-heartbeat", action="store_true")
    p.add_argument("--beat-hold", type=float, default=0.0,
                   help="keep each heartbeat's write transaction open SECS (a slow disk's commit)")
    p.add_argument("--lenient", action="store_true",
                   help="accept every command (only for tests of the stand-in itself)")
    p.add_argument("--record", help="append each decoded command as a JSON line")
    p.add_argument("--forking-loads", metavar="PATH",
                   help="unpickle every payload with torch's ForkingPickler.loads, as the real agent does (needs "
                        "torch), and append what it got as a JSON line: a tensor's dtype, shape and values, a mesh "
                        "shape, or the repr of anything else")
    p.add_argument("--release-counters", action="store_true",
                   help="on CleanupBatch, decrement the reference-counter slot of each of the batch's CUDA tensor "
                        "payloads, as the real agent's torch does when their storages die (then etb_payload_in_use "
                        "reads false and a DLPack payload's deleter may run)")
    a = p.parse_args(argv)
    if a.rank is not None:
        queue_path, state_path = default_paths(a.rank)
    elif a.command_queue and a.state:
        queue_path, state_path = a.command_queue, a.state
    else:
        p.error("give --rank, or --command-queue and --state")

    for path in (queue_path, state_path):
        folder = os.path.dirname(path) or "."
        if not os.path.isdir(folder):
            print(f"standin_agent.py: the folder {folder} of {path} does not exist (or is not a folder): "
                  f"create it first", file=sys.stderr)
            return 2

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    want_status = []
    signal.signal(signal.SIGUSR1, lambda *_: want_status.append(1))

    clean_stale(queue_path, state_path)
    queue = None if a.no_queue else QueueLeader(queue_path, a.sync)
    state = lmdb.open(state_path, subdir=False, max_dbs=2, map_size=STATE_MAP_SIZE, sync=a.sync, lock=True)
    state_db = state.open_db(b"pair_state")

    def beat():
        now = str(time.time())
        with state.begin(write=True, db=state_db) as txn:
            txn.put(b"agent:heartbeat", now.encode())
            if a.beat_hold:
                time.sleep(a.beat_hold)
        return now

    first = beat()
    print(f"ready pid={os.getpid()} beat={first}", flush=True)
    record = open(a.record, "ab") if a.record else None
    loads = open(a.forking_loads, "ab") if a.forking_loads else None
    if loads:
        import torch  # noqa: F401  (the agent's own torch: what its unpickling needs)
        from multiprocessing.reduction import ForkingPickler
    signals = {}
    pairs, batches = set(), set()
    held = {}  # batch -> the (file, slot) of its payloads' reference counters (--release-counters)
    unknown_cleanups = [0]  # the first few warnings are printed (the agent logs each one)

    def put_state(key, value):
        with state.begin(write=True, db=state_db) as txn:
            txn.put(key.encode(), ENCODER.encode(value))

    def payloads(cmd):
        if isinstance(cmd, RegisterTensors):
            return [data for _, data in cmd.tensors]
        if isinstance(cmd, InitPair):
            return [x for x in (cmd.mesh_shape_payload, cmd.placements_payload) if x is not None]
        return []

    def well_formed(data):
        """Whether `data` is a whole pickle, read opcode by opcode (nothing is imported)."""
        try:
            ops = list(pickletools.genops(data))
        except Exception:
            return False
        return bool(ops) and ops[-1][0].name == "STOP"

    def rejection(cmd):
        """Why the real agent would raise on `cmd` (its exception), or None."""
        if isinstance(cmd, Transfer) and cmd.batch_id not in batches:
            return f"ValueError: Transfer for unknown batch {cmd.batch_id!r}"
        if isinstance(cmd, RegisterTensors):
            if not cmd.tensors:
                return "IndexError: list index out of range (RegisterTensors with no tensors)"
            unknown = [pair for pair, _ in cmd.tensors if pair not in pairs]
            if unknown:
                return f"ValueError: RegisterTensors for unknown pair {unknown[0]!r}"
        bad = [i for i, data in enumerate(payloads(cmd)) if not well_formed(data)]
        if bad:
            return f"UnpicklingError: payload {bad[0]} of {type(cmd).__name__} is not a pickle"
        return None

    def handle(cmd):
        """Handles one command; returns False when it failed (after posting, as the agent)."""
        if record:
            record.write(msgspec.json.encode(cmd) + b"\n")
            record.flush()
        kind = type(cmd).__name__
        if kind == a.exit_on:
            os._exit(3)
        failed = kind == a.fail_on
        why = None if a.lenient else rejection(cmd)
        if why:
            print(f"{kind} raised {why}: dying as the agent does", file=sys.stderr, flush=True)
            failed = True
        if a.unpickle:
            for data in payloads(cmd):
                try:
                    pickle.loads(data)
                except Exception as e:  # the agent's ForkingPickler.loads raises, the agent dies
                    print(f"{kind}: payload does not unpickle: {e!r}", file=sys.stderr, flush=True)
                    failed = True
        if loads:
            got = []
            for data in payloads(cmd):
                try:
                    got.append(describe(ForkingPickler.loads(data)))
                except Exception as e:  # as the agent: a payload that does not load is a failed command
                    print(f"{kind}: ForkingPickler.loads failed: {e!r}", file=sys.stderr, flush=True)
                    failed = True
            loads.write(msgspec.json.encode({"command": kind, "batch_or_pair": getattr(cmd, "batch_id", None)
                                             or getattr(cmd, "pair_name", None), "payloads": got}) + b"\n")
            loads.flush()
        if a.hold and a.hold[0] == kind:
            time.sleep(float(a.hold[1]))
        if why:
            pass  # the handler raised: nothing of its effect happens
        elif isinstance(cmd, InitPair):
            put_state(f"pair:{cmd.pair_name}/state:match", "matched")
            pairs.add(cmd.pair_name)
        elif isinstance(cmd, RegisterTensors):
            batches.add(cmd.batch_id)
            if a.release_counters:
                held.setdefault(cmd.batch_id, []).extend(c for _, data in cmd.tensors for c in ref_counters(data))
        elif isinstance(cmd, Transfer):
            signals[cmd.batch_id] = cmd.transfer_type == "send"
        elif isinstance(cmd, QueryStatus):
            if a.lenient or (cmd.batch_id in batches and cmd.state_name == "transfer_signal"):
                put_state(f"batch:{cmd.batch_id}/state:transfer_signal", bool(signals.get(cmd.batch_id, False)))
            else:
                print(f"QueryStatus {cmd.state_name!r} for batch {cmd.batch_id!r} (unknown, or not the transfer "
                      f"signal): nothing written", file=sys.stderr, flush=True)
        elif isinstance(cmd, CleanupBatch):
            if cmd.batch_id not in batches and not a.lenient:
                unknown_cleanups[0] += 1
                if unknown_cleanups[0] <= 3:
                    later = " (later ones are not printed)" if unknown_cleanups[0] == 3 else ""
                    print(f"warning: CleanupBatch for unknown batch {cmd.batch_id!r}{later}", file=sys.stderr, flush=True)
            batches.discard(cmd.batch_id)
            signals.pop(cmd.batch_id, None)
            for name, slot in held.pop(cmd.batch_id, []):
                release_counter(name, slot)
        if cmd.semaphore_name and kind != a.never_ack:
            try:
                sem = posix_ipc.Semaphore(cmd.semaphore_name)
            except posix_ipc.ExistentialError:
                # The worker gave up on it (a timeout, or a completion freed unwaited) and removed
                # it: the agent logs a warning and goes on (docs/protocol.md section 5).
                print(f"completion semaphore {cmd.semaphore_name} is gone", file=sys.stderr, flush=True)
                return not failed
            sem.release()
            sem.close()
            try:
                sem.unlink()  # refused after close by posix_ipc 1.3.2, as in the reference
            except Exception:
                pass
        return not failed

    def remove_files():
        """What the agent's launch script removes when the agent ends: its queue and state."""
        if queue:
            queue.destroy()
        state.close()
        for suffix in ("", "-lock"):
            try:
                os.remove(state_path + suffix)
            except FileNotFoundError:
                pass

    def die():
        """The agent after a command raised: no heartbeat, then the launch script's finally."""
        time.sleep(a.fail_delay)
        if not a.keep_files:
            remove_files()
        os._exit(3)

    started = time.monotonic()
    while not stop and (a.exit_after is None or time.monotonic() - started < a.exit_after):
        if want_status:
            want_status.clear()
            print(f"status {queue.status() if queue else 'no-queue'}", flush=True)
        cmd = queue.dequeue() if queue and not a.no_dequeue else None
        if cmd is None and (not queue or a.no_dequeue):
            time.sleep(0.001)
        if cmd is not None and not handle(cmd):
            die()
        if not a.stall_heartbeat:
            beat()

    remove_files()
    return 0


if __name__ == "__main__":
    sys.exit(main())
