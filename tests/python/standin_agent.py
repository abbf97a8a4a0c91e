#!/usr/bin/env python3
"""A stand-in for the Python Etha agent, built on the same libraries it uses: py-lmdb, posix_ipc
and msgspec. It follows ../shared/reference/PROTOCOL.md sections 2, 3 and 6: clean-up of stale
files and semaphores, the command queue created as its leader, then the state LMDB, then a
heartbeat every loop turn (about 1 ms).

It does not consume commands yet (that comes with the worker commands). On SIGUSR1 it prints
one status line (queue head and tail, semaphore values); on SIGTERM or SIGINT it exits cleanly,
destroying the queue and the state as the agent's clean exit does.

    standin_agent.py (--rank N | --command-queue PATH --state PATH) [--no-queue] [--sync]
                     [--exit-after SECS]
"""
import argparse
import os
import pathlib
import signal
import struct
import sys
import time

import lmdb
import msgspec  # noqa: F401  (the agent's message codec; command decoding comes with the commands)
import posix_ipc

CAPACITY = 50000
QUEUE_MAP_SIZE = 1 << 30
STATE_MAP_SIZE = 256 << 20


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rank", type=int)
    p.add_argument("--command-queue")
    p.add_argument("--state")
    p.add_argument("--no-queue", action="store_true")
    p.add_argument("--sync", action="store_true", help="fsync every heartbeat, as the real agent does")
    p.add_argument("--exit-after", type=float, default=None)
    a = p.parse_args(argv)
    if a.rank is not None:
        queue_path, state_path = default_paths(a.rank)
    elif a.command_queue and a.state:
        queue_path, state_path = a.command_queue, a.state
    else:
        p.error("give --rank, or --command-queue and --state")

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
        with state.begin(write=True, db=state_db) as txn:
            txn.put(b"agent:heartbeat", str(time.time()).encode())

    beat()
    print(f"ready pid={os.getpid()}", flush=True)
    started = time.monotonic()
    while not stop and (a.exit_after is None or time.monotonic() - started < a.exit_after):
        if want_status:
            want_status.clear()
            print(f"status {queue.status() if queue else 'no-queue'}", flush=True)
        time.sleep(0.001)
        beat()

    if queue:
        queue.destroy()
    state.close()
    for suffix in ("", "-lock"):
        try:
            os.remove(state_path + suffix)
        except FileNotFoundError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
