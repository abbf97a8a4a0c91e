"""The stand-in agents are as strict as the real agent (docs/protocol.md section 5, what each
handler of the real agent rejects): each row a command the real agent dies of, sent raw (py-lmdb,
msgspec, posix_ipc, as the reference worker writes it, so that no client check stops it) to the
Rust stand-in (etb-dev-agent) and to the Python one: the completion is posted, then the agent's
files are gone (its launch script's clean-up), then it exits 3. And the rows it survives: posted,
nothing written, still alive. The rows that need torch (meshes or placements that disagree across
ranks, pairs of different ranks in one batch, a Partial target placement) are not checked here.
"""
import os
import pathlib
import struct
import subprocess
import sys
import time
import uuid

import lmdb
import msgspec
import posix_ipc
import pytest

from conftest import ROOT, Agent, unique_rank

sys.path.insert(0, os.path.dirname(__file__))
import standin_agent as proto  # noqa: E402

TARGET = ROOT / os.environ.get("CARGO_TARGET_DIR", "target") / "debug"
DEV_AGENT = os.environ.get("ETB_DEV_AGENT", str(TARGET / "etb-dev-agent"))
ENCODER = msgspec.msgpack.Encoder()
TENSOR = b"\x80\x03C\x02\x01\x02q\x00."  # pickle.dumps(b"\x01\x02", 3): a whole pickle
NOT_A_PICKLE = b"\x00\x01\x02\x03 raw tensor bytes"


class RawWorker:
    """A follower of the agent's queue that writes commands as the reference worker does, and
    waits on their completion semaphores: no check of ours between the test and the agent."""

    def __init__(self, queue_path, state_path):
        self.state_path = state_path
        stem = pathlib.PurePath(queue_path).stem
        self.items, self.space = posix_ipc.Semaphore(f"/cq_{stem}"), posix_ipc.Semaphore(f"/cq_space_{stem}")
        self.env = lmdb.open(queue_path, subdir=False, max_dbs=2, map_size=1 << 30, lock=True)
        self.db = self.env.open_db(b"command_queue", create=False)

    def send(self, command_type, *fields):
        """Enqueues one command with a fresh completion semaphore; returns the semaphore."""
        name = f"/command_fidelity_{os.getpid()}_{uuid.uuid4().hex}"
        sem = posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=0o600, initial_value=0)
        message = ENCODER.encode(command_type(*fields, timestamp=time.time(), semaphore_name=name))
        self.space.acquire(5.0)
        with self.env.begin(write=True, db=self.db) as txn:
            tail = struct.unpack("Q", txn.get(b"__tail__"))[0]
            txn.put(struct.pack("Q", tail % proto.CAPACITY), message)
            txn.put(b"__tail__", struct.pack("Q", tail + 1))
        self.items.release()
        return sem

    def call(self, command_type, *fields, timeout=10.0):
        """Sends one command and waits for its completion (the agent posts also when it dies)."""
        sem = self.send(command_type, *fields)
        try:
            sem.acquire(timeout)
        finally:
            try:
                sem.unlink()  # the Rust stand-in unlinks it; the Python one cannot (posix_ipc 1.3.2)
            except posix_ipc.ExistentialError:
                pass
            sem.close()

    def state_key(self, key):
        with lmdb.open(self.state_path, subdir=False, max_dbs=2, readonly=True, lock=False) as env:
            with env.begin(db=env.open_db(b"pair_state", create=False)) as txn:
                return txn.get(key.encode())

    def close(self):
        self.env.close()
        self.items.close()
        self.space.close()


def start(kind, *extra):
    rank = unique_rank()
    cq, st = proto.default_paths(rank)
    where = ["--command-queue", cq, "--state", st, "--exit-after", "60", *extra]
    if kind == "rust":
        argv = [DEV_AGENT, *where, "--die-with-parent"]
    else:
        argv = [sys.executable, str(pathlib.Path(__file__).parent / "standin_agent.py"), *where]
    agent = Agent(argv, (cq, st))
    return agent, RawWorker(cq, st)


def init_pair(w, pair="p"):
    w.call(proto.InitPair, pair, "train", 1, "infer", None, None)


def register(w, batch, pair="p"):
    w.call(proto.RegisterTensors, batch, [(pair, TENSOR)], None)


# Each row: what to do first (the agent survives it), then the command the agent dies of.
DEATHS = {
    "transfer_of_a_batch_never_registered": (lambda w: None, (proto.Transfer, "never", "send")),
    "transfer_of_a_cleaned_up_batch": (
        lambda w: (init_pair(w), register(w, "b"), w.call(proto.CleanupBatch, "b")),
        (proto.Transfer, "b", "send"),
    ),
    "register_tensors_with_no_tensors": (lambda w: init_pair(w), (proto.RegisterTensors, "b", [], None)),
    "register_tensors_of_a_pair_never_matched": (lambda w: None, (proto.RegisterTensors, "b", [("p", TENSOR)], None)),
    "register_tensors_payload_not_a_pickle": (
        lambda w: init_pair(w),
        (proto.RegisterTensors, "b", [("p", NOT_A_PICKLE)], None),
    ),
    "init_pair_mesh_payload_not_a_pickle": (
        lambda w: None,
        (proto.InitPair, "p", "train", 1, "infer", NOT_A_PICKLE, None),
    ),
}


@pytest.mark.parametrize("kind", ["rust", "python"])
@pytest.mark.parametrize("row", sorted(DEATHS))
def test_the_stand_in_dies_as_the_real_agent_dies(kind, row):
    before, (command_type, *fields) = DEATHS[row]
    agent, w = start(kind)
    try:
        before(w)
        assert agent.proc.poll() is None, f"{kind} died of what the real agent survives"
        w.call(command_type, *fields)  # posted, as the agent posts a command that raised
        deadline = time.monotonic() + 10
        while os.path.exists(agent.paths[1]) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not os.path.exists(agent.paths[1]), f"{kind}: the state file is still there after {row}"
        assert agent.proc.wait(timeout=10) == 3, f"{kind}: exit status after {row}"
    finally:
        w.close()
        agent.stop()
        proto.clean_stale(*agent.paths)


@pytest.mark.parametrize("kind", ["rust", "python"])
def test_the_stand_in_survives_what_the_real_agent_survives(kind):
    agent, w = start(kind)
    try:
        # QueryStatus for an unknown batch: nothing written; for a state name other than
        # transfer_signal: nothing written either.
        w.call(proto.QueryStatus, "unknown", "transfer_signal")
        assert w.state_key("batch:unknown/state:transfer_signal") is None
        init_pair(w)
        register(w, "known")
        w.call(proto.QueryStatus, "known", "other_state")
        assert w.state_key("batch:known/state:transfer_signal") is None
        # CleanupBatch for an unknown batch: a warning.
        w.call(proto.CleanupBatch, "never-registered")
        # A registered batch: sent, then answered.
        w.call(proto.Transfer, "known", "send")
        w.call(proto.QueryStatus, "known", "transfer_signal")
        assert w.state_key("batch:known/state:transfer_signal") == b"\xc3"
        assert w.state_key("pair:p/state:match") == b"\xa7matched"
        time.sleep(0.05)
        assert agent.proc.poll() is None, f"{kind} died of what the real agent survives"
    finally:
        w.close()
        agent.stop()
        proto.clean_stale(*agent.paths)


@pytest.mark.parametrize("kind", ["rust", "python"])
def test_the_lenient_flag_is_for_tests_of_the_stand_in_only(kind):
    """--lenient accepts what the real agent dies of (so that it is never the default)."""
    agent, w = start(kind, "--lenient")
    try:
        w.call(proto.Transfer, "never", "send")
        w.call(proto.RegisterTensors, "b", [], None)
        time.sleep(0.05)
        assert agent.proc.poll() is None
    finally:
        w.close()
        agent.stop()
        proto.clean_stale(*agent.paths)
