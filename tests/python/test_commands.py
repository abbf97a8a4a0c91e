"""The worker commands through ctypes against the Python stand-in agent (py-lmdb, posix_ipc,
msgspec): msgspec decodes every command we enqueue into the PROTOCOL section 4 structs with
every field equal, and the agent's effects are seen by our calls."""
import ctypes
import math
import os
import pickle
import signal
import sys
import time

import msgspec
import pytest

from conftest import TensorPayload, leftovers, unique_rank

sys.path.insert(0, os.path.dirname(__file__))
import standin_agent as proto  # noqa: E402  (the structs written from PROTOCOL section 4)

OK, NULL_ARGUMENT, INVALID_ARGUMENT, TIMEOUT, QUEUE_FULL, AGENT_DIED, CLOSED = 0, 1, 2, 9, 12, 13, 19
SEND, RECV = 0, 1
P = ctypes.c_void_p


def err(lib):
    return lib.etb_last_error_message().decode()


def our_semaphores():
    tag = f"_{os.getpid()}_"
    return [n for n in os.listdir("/dev/shm") if n.startswith("sem.command_") and tag in n]


class Session:
    """A Python stand-in agent and a client of ours bootstrapped against it."""

    def __init__(self, lib, python_agent, monkeypatch, tmp_path, *agent_args):
        self.lib = lib
        self.rank = unique_rank()
        self.record = tmp_path / "record.jsonl"
        self.agent = python_agent(self.rank, "--record", str(self.record), *agent_args)
        monkeypatch.setenv("AGENT_RANK", str(self.rank))
        monkeypatch.setenv("RANK", "0")
        self.client, info = P(), P()
        assert lib.etb_bootstrap_client(ctypes.cast(None, lib.etb_bootstrap_client.argtypes[0]), None, 10.0,
                                        ctypes.byref(self.client), ctypes.byref(info)) == OK, err(lib)
        lib.etb_info_free(info)

    def register(self, *batches, pair=b"p"):
        """What the real agent needs before it transfers or answers a batch: the pair matched,
        each batch registered (one whole pickle as its tensor)."""
        data = pickle.dumps(b"\x01\x02", 3)
        assert self.lib.etb_client_init_pair(self.client, pair, b"a", b"b", 1, None, 0, None, 0, 10.0) == OK, err(self.lib)
        for batch in batches:
            tensors = (TensorPayload * 1)(TensorPayload(pair, ctypes.cast(ctypes.c_char_p(data), P), len(data)))
            assert self.lib.etb_client_register_tensors(self.client, batch, tensors, 1, 0, 10.0) == OK, err(self.lib)

    def adopt(self, *batches):
        """For a queue nobody reads (--no-dequeue): the client is told the batches exist."""
        for batch in batches:
            assert self.lib.etb_client_adopt_batch(self.client, batch) == OK, err(self.lib)

    def commands(self):
        text = self.record.read_bytes() if self.record.exists() else b""
        return [msgspec.json.decode(line, type=proto.Command) for line in text.splitlines()]

    def close(self):
        self.lib.etb_client_close(self.client)


@pytest.fixture
def session(lib, python_agent, monkeypatch, tmp_path):
    made = []

    def make(*agent_args):
        made.append(Session(lib, python_agent, monkeypatch, tmp_path, *agent_args))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_every_command_decodes_field_for_field(lib, session):
    s = session()
    c = s.client
    before = time.time()
    # Payloads must look like pickles (the agent unpickles them): real ones, made here.
    mesh, placements = pickle.dumps((2, 4), 3), pickle.dumps(("shard", 0), 4)
    assert lib.etb_client_init_pair(c, b"weights", b"train", b"infer", 4, mesh, len(mesh), placements,
                                    len(placements), 10.0) == OK, err(lib)
    assert lib.etb_client_init_pair(c, "bias-ß".encode(), b"train", b"infer", 4, None, 0, None, 0, 10.0) == OK, err(lib)
    t1, t2 = pickle.dumps(b"\x01\x02\x03", 3), pickle.dumps(None, 2)
    tensors = (TensorPayload * 2)(TensorPayload(b"weights", ctypes.cast(ctypes.c_char_p(t1), P), len(t1)),
                                  TensorPayload("bias-ß".encode(), ctypes.cast(ctypes.c_char_p(t2), P), len(t2)))
    assert lib.etb_client_register_tensors(c, "step-ü".encode(), tensors, 2, 1 << 25, 10.0) == OK, err(lib)
    # No tensors would kill the agent: refused before the queue.
    assert lib.etb_client_register_tensors(c, b"empty", None, 0, 0, 10.0) == INVALID_ARGUMENT, err(lib)
    for batch in (b"b1", b"b2"):
        assert lib.etb_client_register_tensors(c, batch, tensors, 1, 0, 10.0) == OK, err(lib)
    signal_out = ctypes.c_bool(True)
    assert lib.etb_client_query_transfer_signal(c, b"b1", 10.0, ctypes.byref(signal_out)) == OK, err(lib)
    assert signal_out.value is False
    assert lib.etb_client_transfer(c, b"b1", SEND, 10.0) == OK, err(lib)
    assert lib.etb_client_query_transfer_signal(c, b"b1", 10.0, ctypes.byref(signal_out)) == OK, err(lib)
    assert signal_out.value is True
    assert lib.etb_client_transfer_detached(c, b"b2", RECV, 10.0) == OK, err(lib)
    comp = P()
    assert lib.etb_client_transfer_async(c, b"b1", RECV, 10.0, ctypes.byref(comp)) == OK, err(lib)
    assert lib.etb_completion_wait(comp, 10.0) == OK, err(lib)
    done = ctypes.c_bool(False)
    assert lib.etb_completion_poll(comp, ctypes.byref(done)) == OK and done.value
    lib.etb_completion_free(comp)
    assert lib.etb_client_query_transfer_signal(c, b"b1", 10.0, ctypes.byref(signal_out)) == OK, err(lib)
    assert signal_out.value is False
    assert lib.etb_client_cleanup_batch(c, b"b1", 10.0) == OK, err(lib)
    after = time.time()

    got = s.commands()
    want = [
        proto.InitPair("weights", "train", 4, "infer", mesh, placements),
        proto.InitPair("bias-ß", "train", 4, "infer", None, None),
        proto.RegisterTensors("step-ü", [("weights", t1), ("bias-ß", t2)], 1 << 25),
        proto.RegisterTensors("b1", [("weights", t1)], None),
        proto.RegisterTensors("b2", [("weights", t1)], None),
        proto.QueryStatus("b1", "transfer_signal"),
        proto.Transfer("b1", "send"),
        proto.QueryStatus("b1", "transfer_signal"),
        proto.Transfer("b2", "recv"),
        proto.Transfer("b1", "recv"),
        proto.QueryStatus("b1", "transfer_signal"),
        proto.CleanupBatch("b1"),
    ]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert type(g) is type(w)
        for field in w.__struct_fields__:
            if field in ("timestamp", "semaphore_name"):
                continue
            assert getattr(g, field) == getattr(w, field), (type(w).__name__, field)
        assert before <= g.timestamp <= after, g
    names = [g.semaphore_name for g in got]
    assert names[8] is None, "detached: semaphore_name nil"
    assert all(n and n.startswith("/command_") for i, n in enumerate(names) if i != 8)
    assert names[0].startswith("/command_register_weights_") and names[2].startswith("/command_register_tensors_batch_step-ü_")
    assert len(set(names)) == len(names) - 0, "unique names"
    assert our_semaphores() == [], "every completion semaphore removed (posix_ipc cannot unlink after close)"


def test_queue_written_by_us_is_read_by_py_lmdb(lib, session):
    """Head and tail move as the Python agent dequeues: the ring is shared byte for byte. (Detached
    CleanupBatches of batches nobody registered: the agent survives them.)"""
    s = session()
    for i in range(200):
        assert lib.etb_client_cleanup_batch_detached(s.client, f"d{i}".encode(), 10.0) == OK, err(lib)
    assert lib.etb_client_cleanup_batch(s.client, b"end", 10.0) == OK, err(lib)
    assert [c.batch_id for c in s.commands()] == [f"d{i}" for i in range(200)] + ["end"]
    status = s.agent.status()
    assert status.startswith("status head=201 tail=201 items=0 space=50000 ready=1"), status


def test_stopped_consumer_means_queue_full(lib, session):
    s = session("--no-dequeue")
    s.adopt(b"fill", b"one-more", b"blocked")
    transfer = lib.etb_client_transfer_detached
    for i in range(50000):
        if transfer(s.client, b"fill", SEND, 0.0) != OK:
            pytest.fail(f"enqueue {i}: {err(lib)}")
    before = s.agent.status()
    assert before.startswith("status head=0 tail=50000 items=50000 space=0"), before
    t0 = time.monotonic()
    assert lib.etb_client_transfer_detached(s.client, b"one-more", SEND, 0.1) == QUEUE_FULL, err(lib)
    assert time.monotonic() - t0 >= 0.1
    assert "stayed full" in err(lib)
    assert lib.etb_client_transfer(s.client, b"blocked", SEND, 0.0) == QUEUE_FULL, err(lib)
    assert s.agent.status() == before, "a full queue must be left exactly as it was"
    assert our_semaphores() == []


def test_unacknowledged_command_times_out(lib, session):
    s = session("--never-ack", "Transfer")
    s.register(b"blocked")
    t0 = time.monotonic()
    assert lib.etb_client_transfer(s.client, b"blocked", SEND, 0.1) == TIMEOUT, err(lib)
    assert time.monotonic() - t0 >= 0.1
    assert our_semaphores() == [], "the timed-out call removed its semaphore"


def test_agent_killed_during_a_wait(lib, session):
    s = session("--never-ack", "Transfer")
    s.register(b"dies")
    threading = __import__("threading")
    killer = threading.Timer(0.2, lambda: os.kill(s.agent.pid, signal.SIGKILL))
    killer.start()
    t0 = time.monotonic()
    status = lib.etb_client_transfer(s.client, b"dies", SEND, 30.0)
    took = time.monotonic() - t0
    killer.join()
    assert status == AGENT_DIED, err(lib)
    assert took < 2.0, took
    assert lib.etb_client_cleanup_batch(s.client, b"after", 30.0) == AGENT_DIED
    assert "has exited" in err(lib)
    s.agent.proc.wait()
    s.close()
    s.client = None
    # The killed agent left its files; remove them as a launch script would.
    import standin_agent

    standin_agent.clean_stale(*s.agent.paths)
    assert our_semaphores() == []
    assert leftovers(s.rank) == []


def test_completion_outlives_its_client(lib, session):
    s = session("--never-ack", "Transfer")
    s.register(b"late")
    comp = P()
    assert lib.etb_client_transfer_async(s.client, b"late", SEND, 10.0, ctypes.byref(comp)) == OK, err(lib)
    done = ctypes.c_bool(True)
    assert lib.etb_completion_poll(comp, ctypes.byref(done)) == OK and not done.value
    assert lib.etb_completion_wait(comp, 0.05) == TIMEOUT
    lib.etb_client_close(s.client)
    s.client = None
    assert lib.etb_completion_wait(comp, 1.0) == CLOSED, err(lib)
    assert lib.etb_completion_poll(comp, ctypes.byref(done)) == CLOSED
    assert len(our_semaphores()) == 1
    lib.etb_completion_free(comp)
    assert our_semaphores() == []


def test_null_and_bad_arguments(lib, session):
    s = session()
    c = s.client
    b = ctypes.c_bool()
    comp = P()
    cases = [
        (lib.etb_client_init_pair, (None, b"p", b"l", b"r", 1, None, 0, None, 0, 1.0), NULL_ARGUMENT),
        (lib.etb_client_init_pair, (c, None, b"l", b"r", 1, None, 0, None, 0, 1.0), NULL_ARGUMENT),
        (lib.etb_client_init_pair, (c, b"p", None, b"r", 1, None, 0, None, 0, 1.0), NULL_ARGUMENT),
        (lib.etb_client_init_pair, (c, b"p", b"l", None, 1, None, 0, None, 0, 1.0), NULL_ARGUMENT),
        (lib.etb_client_init_pair, (c, b"p", b"l", b"r", 1, None, 5, None, 0, 1.0), NULL_ARGUMENT),
        (lib.etb_client_init_pair, (c, b"p", b"l", b"r", 1, None, 0, None, 5, 1.0), NULL_ARGUMENT),
        (lib.etb_client_init_pair, (c, b"\xff", b"l", b"r", 1, None, 0, None, 0, 1.0), INVALID_ARGUMENT),
        (lib.etb_client_init_pair, (c, b"p", b"l", b"r", 0, None, 0, None, 0, 1.0), INVALID_ARGUMENT),
        (lib.etb_client_init_pair, (c, b"p", b"l", b"r", 1, None, 0, None, 0, math.nan), INVALID_ARGUMENT),
        (lib.etb_client_register_tensors, (None, b"b", None, 0, 0, 1.0), NULL_ARGUMENT),
        (lib.etb_client_register_tensors, (c, None, None, 0, 0, 1.0), NULL_ARGUMENT),
        (lib.etb_client_register_tensors, (c, b"b", None, 3, 0, 1.0), NULL_ARGUMENT),
        (lib.etb_client_register_tensors, (c, b"b", (TensorPayload * 1)(TensorPayload(None, None, 0)), 1, 0, 1.0), NULL_ARGUMENT),
        (lib.etb_client_register_tensors, (c, b"b", (TensorPayload * 1)(TensorPayload(b"p", None, 4)), 1, 0, 1.0), NULL_ARGUMENT),
        (lib.etb_client_register_tensors, (c, b"b", (TensorPayload * 1)(TensorPayload(b"\xc3", None, 0)), 1, 0, 1.0), INVALID_ARGUMENT),
        (lib.etb_client_register_tensors, (c, b"b", None, 0, 0, -1.0), INVALID_ARGUMENT),
        (lib.etb_client_transfer, (None, b"b", SEND, 1.0), NULL_ARGUMENT),
        (lib.etb_client_transfer, (c, None, SEND, 1.0), NULL_ARGUMENT),
        (lib.etb_client_transfer, (c, b"b", 2, 1.0), INVALID_ARGUMENT),
        (lib.etb_client_transfer, (c, b"b", -1, 1.0), INVALID_ARGUMENT),
        (lib.etb_client_transfer, (c, b"b", SEND, -math.inf), INVALID_ARGUMENT),
        (lib.etb_client_query_transfer_signal, (None, b"b", 1.0, ctypes.byref(b)), NULL_ARGUMENT),
        (lib.etb_client_query_transfer_signal, (c, None, 1.0, ctypes.byref(b)), NULL_ARGUMENT),
        (lib.etb_client_query_transfer_signal, (c, b"b", 1.0, None), NULL_ARGUMENT),
        (lib.etb_client_cleanup_batch, (None, b"b", 1.0), NULL_ARGUMENT),
        (lib.etb_client_cleanup_batch, (c, None, 1.0), NULL_ARGUMENT),
        (lib.etb_client_cleanup_batch, (c, b"\x80", 1.0), INVALID_ARGUMENT),
        (lib.etb_client_transfer_async, (None, b"b", SEND, 1.0, ctypes.byref(comp)), NULL_ARGUMENT),
        (lib.etb_client_transfer_async, (c, b"b", SEND, 1.0, None), NULL_ARGUMENT),
        (lib.etb_client_transfer_async, (c, b"b", 7, 1.0, ctypes.byref(comp)), INVALID_ARGUMENT),
        (lib.etb_client_transfer_detached, (None, b"b", SEND, 1.0), NULL_ARGUMENT),
        (lib.etb_client_transfer_detached, (c, None, SEND, 1.0), NULL_ARGUMENT),
        (lib.etb_client_transfer_detached, (c, b"b", SEND, math.nan), INVALID_ARGUMENT),
        (lib.etb_completion_wait, (None, 1.0), NULL_ARGUMENT),
        (lib.etb_completion_poll, (None, ctypes.byref(b)), NULL_ARGUMENT),
    ]
    for fn, args, want in cases:
        got = fn(*args)
        assert got == want, (fn.__name__, args, lib.etb_status_name(got), err(lib))
        assert err(lib), fn.__name__
    assert comp.value is None, "out-pointer written on failure"
    lib.etb_completion_free(None)
    assert s.commands() == [], "no bad call reached the queue"
    assert our_semaphores() == []


def _pickle_payload(data):
    return TensorPayload(b"p", ctypes.cast(ctypes.c_char_p(data), P), len(data))


def _prepare(s, kind):
    """What the real agent needs before a command of `kind`: the pair matched, the batch
    registered."""
    if kind == "InitPair":
        return
    if kind == "RegisterTensors":
        assert s.lib.etb_client_init_pair(s.client, b"p", b"a", b"b", 1, None, 0, None, 0, 10.0) == OK, err(s.lib)
        return
    s.register(b"b")


def _run(lib, c, kind):
    """Issues one command of `kind` (with a real pickle as its payload); returns its status."""
    data = pickle.dumps(b"\x01\x02", 3)
    if kind == "InitPair":
        return lib.etb_client_init_pair(c, b"p", b"a", b"b", 1, data, len(data), None, 0, 10.0)
    if kind == "RegisterTensors":
        return lib.etb_client_register_tensors(c, b"b", (TensorPayload * 1)(_pickle_payload(data)), 1, 0, 10.0)
    if kind == "Transfer":
        return lib.etb_client_transfer(c, b"b", SEND, 10.0)
    if kind == "QueryStatus":
        return lib.etb_client_query_transfer_signal(c, b"b", 10.0, ctypes.byref(ctypes.c_bool()))
    if kind == "CleanupBatch":
        return lib.etb_client_cleanup_batch(c, b"b", 10.0)
    comp, done = P(), ctypes.c_bool(False)
    assert lib.etb_client_transfer_async(c, b"b", SEND, 10.0, ctypes.byref(comp)) == OK, err(lib)
    try:
        if kind == "async wait":
            return lib.etb_completion_wait(comp, 10.0)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            status = lib.etb_completion_poll(comp, ctypes.byref(done))
            if status != OK or done.value:
                return status
            time.sleep(0.001)
        return TIMEOUT
    finally:
        lib.etb_completion_free(comp)


def _after_death(s):
    s.agent.proc.wait()
    s.close()
    s.client = None
    proto.clean_stale(*s.agent.paths)  # what a --keep-files agent left, as its launch script would
    assert our_semaphores() == []
    assert leftovers(s.rank) == []


KINDS = ["InitPair", "RegisterTensors", "Transfer", "QueryStatus", "CleanupBatch", "async wait", "async poll"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_command_the_agent_failed_after_posting_is_agent_died(lib, session, kind):
    """The Python stand-in dies as the agent does: it posts, writes no heartbeat, lives 1.2 s,
    then its launch script's clean-up removes the files, then it exits."""
    fail_on = "Transfer" if kind.startswith("async") else kind
    s = session("--fail-on", fail_on, "--fail-delay", "1.2")
    _prepare(s, kind)
    t0 = time.monotonic()
    status = _run(lib, s.client, kind)
    assert status == AGENT_DIED, (kind, lib.etb_status_name(status), err(lib))
    assert time.monotonic() - t0 > 1.1, "decided before the agent died"
    message = err(lib)
    assert message.startswith("ETB_ERR_AGENT_DIED: etb_"), message
    assert f"pid {s.agent.pid}" in message and "pairs and batches are gone" in message, message
    assert message.endswith("reconnect the client once a new agent runs (etb_client_reconnect)"), message
    _after_death(s)


@pytest.mark.parametrize("kind", KINDS)
def test_a_command_the_agent_survived_is_ok(lib, session, kind):
    s = session("--unpickle")
    _prepare(s, kind)
    assert _run(lib, s.client, kind) == OK, err(lib)


def test_a_killed_agent_that_kept_its_files_is_seen_by_its_exit(lib, session):
    s = session("--fail-on", "Transfer", "--fail-delay", "1.2", "--keep-files")
    _prepare(s, "Transfer")
    assert _run(lib, s.client, "Transfer") == AGENT_DIED, err(lib)
    _after_death(s)


def test_pipelined_commands_prove_the_first_while_the_next_is_held(lib, session):
    import threading

    s = session("--hold", "CleanupBatch", "1.5")
    s.register(b"pipe")
    comp = P()
    assert lib.etb_client_transfer_async(s.client, b"pipe", SEND, 10.0, ctypes.byref(comp)) == OK, err(lib)
    finished = threading.Event()
    result = []

    def blocking():
        result.append(lib.etb_client_cleanup_batch(s.client, b"pipe", 10.0))
        finished.set()

    thread = threading.Thread(target=blocking)
    thread.start()
    assert lib.etb_completion_wait(comp, 10.0) == OK, err(lib)
    assert not finished.is_set(), "the first command was proven only after the held one ended"
    lib.etb_completion_free(comp)
    thread.join()
    assert result == [OK]


@pytest.mark.parametrize("payload", [b"", os.urandom(64), b"\x00\x00\x80?\x00\x00\x00@", pickle.dumps((2, 4), 3)[:-1]],
                         ids=["empty", "random", "tensor bytes", "truncated pickle"])
def test_non_pickle_payloads_are_refused_before_the_queue(lib, session, payload):
    """What would kill the agent (it unpickles every payload) never reaches it."""
    s = session("--unpickle")
    assert lib.etb_client_init_pair(s.client, b"p", b"a", b"b", 1, None, 0, None, 0, 10.0) == OK, err(lib)
    before = s.agent.status()
    good = pickle.dumps(1, 3)
    bad = ctypes.c_char_p(payload)
    tensors = (TensorPayload * 2)(_pickle_payload(good), TensorPayload(b"p", ctypes.cast(bad, P), len(payload)))
    assert lib.etb_client_register_tensors(s.client, b"g", tensors, 2, 0, 1.0) == INVALID_ARGUMENT, err(lib)
    assert "RegisterTensors payload 1" in err(lib) and "ForkingPickler.dumps(tensor)" in err(lib), err(lib)
    assert "agent would have died" in err(lib)
    assert lib.etb_client_init_pair(s.client, b"g", b"a", b"b", 1, payload, len(payload), None, 0, 1.0) == INVALID_ARGUMENT
    assert lib.etb_client_init_pair(s.client, b"g", b"a", b"b", 1, None, 0, payload, len(payload), 1.0) == INVALID_ARGUMENT
    assert s.agent.status().split()[:3] == before.split()[:3], "the queue's head and tail moved"
    # A pickle is accepted, and the agent, which unpickles it, survives it.
    assert lib.etb_client_register_tensors(s.client, b"g", tensors, 1, 0, 5.0) == OK, err(lib)
    assert s.commands()[-1] == proto.RegisterTensors("g", [("p", good)], None, s.commands()[-1].timestamp,
                                                     s.commands()[-1].semaphore_name)


def test_an_init_pair_timeout_says_the_agent_waits_for_its_peers(lib, session):
    s = session("--never-ack", "InitPair")
    assert lib.etb_client_init_pair(s.client, b"weights", b"train", b"infer", 4, None, 0, None, 0, 0.2) == TIMEOUT
    message = err(lib)
    for part in ['waiting for the peers of pair "weights"', 'local "train"', 'remote "infer"', "world size 4",
                 "init_pair with the same pair name"]:
        assert part in message, (part, message)
