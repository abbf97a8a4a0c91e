"""The worker commands through ctypes against the Python stand-in agent (py-lmdb, posix_ipc,
msgspec): msgspec decodes every command we enqueue into the PROTOCOL section 4 structs with
every field equal, and the agent's effects are seen by our calls."""
import ctypes
import math
import os
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
    mesh, placements = b"\x80\x04\x95mesh", b""
    assert lib.etb_client_init_pair(c, b"weights", b"train", b"infer", 4, mesh, len(mesh), placements, 0, 10.0) == OK, err(lib)
    tensors = (TensorPayload * 2)(TensorPayload(b"weights", ctypes.cast(ctypes.c_char_p(b"\x01\x02\x03"), P), 3),
                                  TensorPayload("bias-ß".encode(), None, 0))
    assert lib.etb_client_register_tensors(c, "step-ü".encode(), tensors, 2, 1 << 25, 10.0) == OK, err(lib)
    assert lib.etb_client_register_tensors(c, b"empty", None, 0, 0, 10.0) == OK, err(lib)
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
        proto.RegisterTensors("step-ü", [("weights", b"\x01\x02\x03"), ("bias-ß", b"")], 1 << 25),
        proto.RegisterTensors("empty", [], None),
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
    assert names[6] is None, "detached: semaphore_name nil"
    assert all(n and n.startswith("/command_") for i, n in enumerate(names) if i != 6)
    assert names[0].startswith("/command_register_weights_") and names[1].startswith("/command_register_tensors_batch_step-ü_")
    assert len(set(names)) == len(names) - 0, "unique names"
    assert our_semaphores() == [], "every completion semaphore removed (posix_ipc cannot unlink after close)"


def test_queue_written_by_us_is_read_by_py_lmdb(lib, session):
    """Head and tail move as the Python agent dequeues: the ring is shared byte for byte."""
    s = session()
    for i in range(200):
        assert lib.etb_client_transfer_detached(s.client, f"d{i}".encode(), SEND, 10.0) == OK, err(lib)
    assert lib.etb_client_cleanup_batch(s.client, b"end", 10.0) == OK, err(lib)
    assert [c.batch_id for c in s.commands()] == [f"d{i}" for i in range(200)] + ["end"]
    status = s.agent.status()
    assert status.startswith("status head=201 tail=201 items=0 space=50000 ready=1"), status


def test_stopped_consumer_means_queue_full(lib, session):
    s = session("--no-dequeue")
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
    t0 = time.monotonic()
    assert lib.etb_client_transfer(s.client, b"blocked", SEND, 0.1) == TIMEOUT, err(lib)
    assert time.monotonic() - t0 >= 0.1
    assert our_semaphores() == [], "the timed-out call removed its semaphore"


def test_agent_killed_during_a_wait(lib, session):
    s = session("--never-ack", "Transfer")
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
