"""Interop: our shared library (through ctypes, and a C program) against a stand-in agent built
with the real Python stack (py-lmdb, posix_ipc, msgspec), running in its own process with its
LMDB environments open with locking."""
import ctypes
import os
import subprocess
import time

import pytest

from conftest import NAMING_FN, ROOT, leftovers, unique_rank

OK = 0


def bootstrap(lib, naming=None, user_data=None, timeout=10.0):
    client, info = ctypes.c_void_p(), ctypes.c_void_p()
    status = lib.etb_bootstrap_client(naming or NAMING_FN(), user_data, timeout, ctypes.byref(client), ctypes.byref(info))
    return status, client, info


def last_error(lib):
    return lib.etb_last_error_message().decode()


@pytest.fixture
def env(monkeypatch):
    for name in ("AGENT_RANK", "RANK", "AGENT_RANK_OFFSET", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def posix_locks_on(path):
    """Pids holding POSIX locks on `path`'s inode, from /proc/locks."""
    ino = os.stat(path).st_ino
    pids = set()
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if "->" in fields:
                fields.remove("->")
            if len(fields) > 5 and fields[1] == "POSIX" and fields[5].endswith(f":{ino}"):
                pids.add(int(fields[4]))
    return pids


def test_bootstrap_against_python_agent(lib, env, python_agent):
    rank = unique_rank()
    agent = python_agent(rank)
    env.setenv("RANK", str(rank - 2))
    env.setenv("AGENT_RANK_OFFSET", "2")
    env.setenv("LOCAL_RANK", "1")
    before = agent.status()
    status, client, info = bootstrap(lib)
    assert status == OK, last_error(lib)
    try:
        assert lib.etb_info_agent_rank(info) == rank
        assert lib.etb_info_global_rank(info) == rank - 2
        assert lib.etb_info_has_rank_offset(info) and lib.etb_info_rank_offset(info) == 2
        assert lib.etb_info_method(info) == b"offset"
        assert lib.etb_info_device(info) == b"cuda:1" and lib.etb_info_device_index(info) == 1
        assert lib.etb_info_command_queue_path(info).decode() == f"/tmp/agent_rank{rank}_command.lmdb"
        assert lib.etb_info_state_path(info).decode() == f"/tmp/agent_rank{rank}_state.lmdb"
        assert lib.etb_info_agent_pid(info) == agent.pid
        # Both processes hold LMDB's lock on both lock files: the Python agent's LMDB 0.9.3x and
        # our bundled 0.9.21 share the lock file format, and we read with a reader slot.
        me = os.getpid()
        for path in agent.paths:
            assert {agent.pid, me} <= posix_locks_on(path + "-lock"), path
        age = ctypes.c_double(-1)
        for _ in range(20):
            assert lib.etb_client_heartbeat_age(client, ctypes.byref(age)) == OK, last_error(lib)
            assert 0 <= age.value < 5.0 or abs(age.value) < 0.01
        # Attaching wrote nothing and took nothing: head, tail, semaphore counts (ready too), the
        # last transaction id, the file's size and mtime are unchanged.
        assert agent.status() == before
        assert before.startswith("status head=0 tail=0 items=0 space=50000 ready=1 txnid="), before
    finally:
        lib.etb_client_close(client)
        lib.etb_info_free(info)
    assert os.getpid() not in posix_locks_on(agent.paths[1] + "-lock"), "close must release our locks"
    agent.stop()
    assert leftovers(rank) == []


def test_naming_callback_with_user_data(lib, env, python_agent, tmp_path):
    rank = unique_rank()
    agent = python_agent(rank)
    env.setenv("AGENT_RANK", "12345")
    env.setenv("RANK", "0")
    calls = []

    @NAMING_FN
    def naming(agent_rank, cq, cq_cap, st, st_cap, user_data):
        calls.append((agent_rank, cq_cap, st_cap, user_data))
        ctypes.memmove(cq, f"/tmp/agent_rank{rank}_command.lmdb".encode() + b"\0", len(f"/tmp/agent_rank{rank}_command.lmdb") + 1)
        ctypes.memmove(st, f"/tmp/agent_rank{rank}_state.lmdb".encode() + b"\0", len(f"/tmp/agent_rank{rank}_state.lmdb") + 1)
        return 0

    status, client, info = bootstrap(lib, naming, ctypes.c_void_p(0xABC))
    assert status == OK, last_error(lib)
    assert calls == [(12345, 4096, 4096, 0xABC)]
    assert lib.etb_info_agent_rank(info) == 12345
    assert lib.etb_info_method(info) == b"direct"
    assert not lib.etb_info_has_rank_offset(info)
    assert lib.etb_info_agent_pid(info) == agent.pid
    lib.etb_client_close(client)
    lib.etb_info_free(info)


def test_python_agent_without_queue_is_not_found(lib, env, python_agent):
    rank = unique_rank()
    python_agent(rank, "--no-queue")
    env.setenv("AGENT_RANK", str(rank))
    env.setenv("RANK", "0")
    status, _, _ = bootstrap(lib, timeout=0.2)
    assert lib.etb_status_name(status) == b"ETB_ERR_AGENT_NOT_FOUND", last_error(lib)
    assert f"/cq_agent_rank{rank}_command" in last_error(lib)


def test_python_agent_stopped_is_not_found(lib, env, python_agent):
    rank = unique_rank()
    agent = python_agent(rank)
    agent.stop()
    env.setenv("AGENT_RANK", str(rank))
    env.setenv("RANK", "0")
    status, _, _ = bootstrap(lib, timeout=0.1)
    assert lib.etb_status_name(status) == b"ETB_ERR_AGENT_NOT_FOUND", last_error(lib)
    assert leftovers(rank) == []


@pytest.mark.parametrize("flavour", ["c", "cpp"])
def test_c_program_against_python_agent(env, python_agent, flavour):
    binary = os.environ.get(f"ETB_C_TEST_{flavour.upper()}")
    if not binary:
        pytest.fail(f"ETB_C_TEST_{flavour.upper()} is not set: run through scripts/test.sh")
    rank = unique_rank()
    agent = python_agent(rank)
    env.setenv("AGENT_RANK", str(rank))
    env.setenv("RANK", "0")
    env.setenv("ETB_EXTERNAL_AGENT_PID", str(agent.pid))
    out = subprocess.run([binary], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed, 0 failed" in out.stdout, out.stdout


def test_only_etb_symbols_are_exported(lib):
    from conftest import library_path

    out = subprocess.run(["nm", "-D", "--defined-only", library_path()], capture_output=True, text=True, check=True)
    names = [line.split()[-1] for line in out.stdout.splitlines() if line.strip()]
    assert names, "nm found no symbols"
    foreign = [n for n in names if not n.startswith("etb_")]
    assert foreign == [], f"exported symbols without the etb_ prefix: {foreign[:20]}"
    for wanted in ("etb_bootstrap_client", "etb_info_agent_pid", "etb_setup_ptrace", "etb_version"):
        assert wanted in names


def test_setup_ptrace_pid(lib):
    assert lib.etb_setup_ptrace_pid(os.getppid()) == OK, last_error(lib)
    assert lib.etb_status_name(lib.etb_setup_ptrace_pid(0)) == b"ETB_ERR_INVALID_ARGUMENT"
    assert lib.etb_status_name(lib.etb_setup_ptrace_pid(-4)) == b"ETB_ERR_INVALID_ARGUMENT"


def test_library_basics_through_ctypes(lib):
    assert lib.etb_version().decode() == _cargo_version()
    assert lib.etb_status_name(0) == b"ETB_OK"
    assert lib.etb_status_name(12345) == b"ETB_UNKNOWN_STATUS"
    assert lib.etb_setup_ptrace() == OK
    assert lib.etb_info_agent_rank(None) == -1
    assert "`info` is NULL" in last_error(lib)


def _cargo_version():
    for line in (ROOT / "Cargo.toml").read_text().splitlines():
        if line.startswith("version"):
            return line.split('"')[1]
    raise AssertionError("no version in Cargo.toml")


def _bootstrap_in_subprocess(extra_env):
    """Runs a failing bootstrap (RANK unset) in a fresh process; returns its stderr."""
    from conftest import library_path

    code = (
        "import ctypes,sys; lib=ctypes.CDLL(sys.argv[1]); P=ctypes.c_void_p; c=P(); i=P();"
        "f=lib.etb_bootstrap_client; f.argtypes=[P,P,ctypes.c_double,ctypes.POINTER(P),ctypes.POINTER(P)];"
        "sys.exit(f(None,None,0.0,ctypes.byref(c),ctypes.byref(i)))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "AGENT_RANK", "ETB_LOG")}
    env.update(extra_env)
    out = subprocess.run([__import__("sys").executable, "-c", code, library_path()], env=env, capture_output=True, text=True)
    assert out.returncode == 3, out  # ETB_ERR_ENV
    return out.stdout + out.stderr


def test_library_prints_nothing_by_default():
    assert _bootstrap_in_subprocess({}) == ""


def test_etb_log_enables_logging():
    text = _bootstrap_in_subprocess({"ETB_LOG": "debug"})
    assert "ETB_ERR_ENV" in text and "RANK is not set" in text, text


WORKER = """
import ctypes, sys
sys.path.insert(0, sys.argv[2])
from conftest import BootstrapOptions
lib = ctypes.CDLL(sys.argv[1]); P = ctypes.c_void_p; c = P(); i = P()
o = BootstrapOptions()
lib.etb_bootstrap_options_init(ctypes.byref(o))
o.allow_shared_agent, o.connection_timeout_s = 1, 10.0
f = lib.etb_bootstrap_client_ex; f.argtypes = [ctypes.POINTER(BootstrapOptions), ctypes.POINTER(P), ctypes.POINTER(P)]
rc = f(ctypes.byref(o), ctypes.byref(c), ctypes.byref(i))
print(rc, flush=True)
sys.stdin.readline()
"""


def bootstrap_shared(lib):
    from conftest import BootstrapOptions

    o = BootstrapOptions()
    lib.etb_bootstrap_options_init(ctypes.byref(o))
    o.allow_shared_agent, o.connection_timeout_s = 1, 10.0
    client, info = ctypes.c_void_p(), ctypes.c_void_p()
    return lib.etb_bootstrap_client_ex(ctypes.byref(o), ctypes.byref(client), ctypes.byref(info)), client, info


def test_agent_pid_with_another_worker_attached(lib, env, python_agent):
    """Another worker process holds LMDB's lock on the state lock file too: the agent is the
    holder with the state file open for writing, not whichever holder F_GETLK names."""
    from conftest import library_path

    rank = unique_rank()
    agent = python_agent(rank)
    env.setenv("AGENT_RANK", str(rank))
    env.setenv("RANK", "0")
    other = subprocess.Popen([__import__("sys").executable, "-c", WORKER, library_path(), os.path.dirname(__file__)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "0"
        assert {agent.pid, other.pid} <= posix_locks_on(agent.paths[1] + "-lock")
        status, client, info = bootstrap(lib)
        assert lib.etb_status_name(status) == b"ETB_ERR_AGENT_BUSY", "one worker per agent by default"
        assert f"pid {other.pid}" in last_error(lib), last_error(lib)
        status, client, info = bootstrap_shared(lib)
        assert status == OK, last_error(lib)
        assert lib.etb_info_agent_pid(info) == agent.pid
        lib.etb_client_close(client)
        lib.etb_info_free(info)
    finally:
        other.stdin.close()
        other.wait(timeout=10)


HOLDER = """
import ctypes, os, sys, time
sys.path.insert(0, sys.argv[2])
from conftest import BootstrapOptions
lib = ctypes.CDLL(sys.argv[1]); P = ctypes.c_void_p; c = P(); i = P()
o = BootstrapOptions()
lib.etb_bootstrap_options_init(ctypes.byref(o))
o.connection_timeout_s = 10.0
f = lib.etb_bootstrap_client_ex; f.argtypes = [ctypes.POINTER(BootstrapOptions), ctypes.POINTER(P), ctypes.POINTER(P)]
assert f(ctypes.byref(o), ctypes.byref(c), ctypes.byref(i)) == 0
child = os.fork()
if child == 0:
    time.sleep(3)       # a data-loader child, forked without exec, outliving its parent
    os._exit(0)
print(child, flush=True)
os._exit(0)             # the worker dies without closing its client
"""


def test_worker_lock_is_not_inherited_by_a_forked_child(lib, env, python_agent):
    """The one-worker lock is a POSIX record lock: a child forked without exec does not keep it
    when its parent (the worker) dies, so the next worker gets in (flock would keep it)."""
    from conftest import library_path

    rank = unique_rank()
    python_agent(rank)
    env.setenv("AGENT_RANK", str(rank))
    env.setenv("RANK", "0")
    out = subprocess.run([__import__("sys").executable, "-c", HOLDER, library_path(), os.path.dirname(__file__)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    child = int(out.stdout.split()[0])
    os.kill(child, 0)  # the forked child is still alive, holding copies of the parent's descriptors
    status, client, info = bootstrap(lib)
    assert status == OK, last_error(lib)
    lib.etb_client_close(client)
    lib.etb_info_free(info)
    deadline = time.monotonic() + 10  # let the child finish before the agent goes
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
            time.sleep(0.1)
        except ProcessLookupError:
            break
