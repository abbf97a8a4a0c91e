"""Fixtures of the interop tests: the built library (ctypes), the stand-in agents, unique names."""
import ctypes
import itertools
import os
import pathlib
import signal
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
_counter = itertools.count(1)


def unique_rank():
    """An agent rank no other test process uses (semaphore names derive from it)."""
    return os.getpid() * 1000 + 800 + next(_counter)


def library_path():
    path = os.environ.get("ETB_LIBRARY_PATH") or str(ROOT / "target" / "debug" / "libetha_tensor_bus.so")
    if not os.path.exists(path):
        pytest.fail(f"{path} not found: build with `cargo build` or set ETB_LIBRARY_PATH")
    return path


# The package's own ctypes declarations: one table of signatures and structs, not a second one.
sys.path.insert(0, str(ROOT / "python"))
from etha_tensor_bus import _native  # noqa: E402

NAMING_FN = _native.NAMING_FN
BootstrapOptions = _native.BootstrapOptions
TensorPayload = _native.TensorPayload


def load_library():
    return _native.load(library_path())


@pytest.fixture(scope="session", autouse=True)
def in_the_ledger():
    """This pytest process makes names: the suite's leak check must know its pid."""
    ledger = os.environ.get("ETB_TEST_LEDGER")
    if ledger:
        with open(ledger, "a") as f:
            f.write(f"{os.getpid()}\n")


@pytest.fixture(scope="session")
def lib():
    return load_library()


class Agent:
    """A stand-in agent process (Python or Rust), stopped cleanly by stop()."""

    def __init__(self, argv, paths):
        self.paths = paths
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("ready pid="):
            self.proc.kill()
            raise RuntimeError(f"agent did not start: {line!r}")
        self.pid = self.proc.pid

    def status(self):
        self.proc.send_signal(signal.SIGUSR1)
        return self.proc.stdout.readline().strip()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.proc.stdout.close()
        remove_worker_lock(self.paths[1])


def remove_worker_lock(state_path):
    """Removes the worker lock file beside an agent's state (`.{state}.worker`), which the library
    never removes (removing lock files races): the tests do, as an operator would, once done."""
    folder, name = os.path.split(state_path)
    try:
        os.remove(os.path.join(folder, f".{name}.worker"))
    except FileNotFoundError:
        pass


def default_paths(rank):
    return (f"/tmp/agent_rank{rank}_command.lmdb", f"/tmp/agent_rank{rank}_state.lmdb")


@pytest.fixture
def python_agent():
    """Starts Python stand-in agents (rank -> Agent); all stopped at the end of the test."""
    agents = []

    def start(rank, *extra):
        argv = [sys.executable, str(HERE / "standin_agent.py"), "--rank", str(rank), "--exit-after", "120", *extra]
        agents.append(Agent(argv, default_paths(rank)))
        return agents[-1]

    yield start
    for a in agents:
        a.stop()


def leftovers(rank):
    """What agent `rank` may have left in /tmp and /dev/shm."""
    stem = f"agent_rank{rank}_command"
    left = [f"/dev/shm/{n}" for n in os.listdir("/dev/shm") if n.endswith("_" + stem)]
    left += [f"/tmp/{n}" for n in os.listdir("/tmp") if n.startswith(f"agent_rank{rank}_")]
    return left
