"""The Python package, as users get it: pip-installed into a fresh virtual environment (with the
shared library shipped inside it), run against etb-dev-agent (ETB_DEV_AGENT). Run by
tests/run_all.py from that environment, not from .venv."""
import inspect
import os
import pickle
import pathlib
import signal
import subprocess
import tempfile

import pytest

import etha_tensor_bus
from etha_tensor_bus import BootstrapInfo, TensorBusError, bootstrap_client, errors

AGENT = os.environ.get("ETB_DEV_AGENT", "")
HAVE_CUDA = bool(__import__("ctypes").util.find_library("cuda"))  # a GPU machine: no "no driver" checks
_count = [0]


@pytest.fixture
def agent(monkeypatch):
    """Starts etb-dev-agent processes for ranks of our own; sets AGENT_RANK/RANK to the last."""
    procs = []

    def start(*extra):
        _count[0] += 1
        rank = os.getpid() * 1000 + 950 + _count[0]
        p = subprocess.Popen([AGENT, "--rank", str(rank), "--die-with-parent", "--exit-after", "120", *extra],
                             stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().startswith("ready")
        procs.append(p)
        monkeypatch.setenv("AGENT_RANK", str(rank))
        monkeypatch.setenv("RANK", "0")
        monkeypatch.delenv("AGENT_RANK_OFFSET", raising=False)
        monkeypatch.setenv("LOCAL_RANK", "0")
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)
        p.stdout.close()


@pytest.fixture(scope="module", autouse=True)
def in_the_ledger():
    """This process makes names: the suite's leak check (tests/leak_check.py) must know its pid."""
    ledger = os.environ.get("ETB_TEST_LEDGER")
    if ledger:
        with open(ledger, "a") as f:
            f.write(f"{os.getpid()}\n")


def test_installed_copy_and_shipped_library():
    assert "site-packages" in etha_tensor_bus.__file__, etha_tensor_bus.__file__
    assert "ETB_LIBRARY_PATH" not in os.environ
    path = etha_tensor_bus._native.library_path()
    assert pathlib.Path(path).parent == pathlib.Path(etha_tensor_bus.__file__).parent, path
    assert etha_tensor_bus.version() == "0.1.0"


def test_drop_in_signature():
    sig = inspect.signature(bootstrap_client)
    positional = [p for p in sig.parameters.values() if p.kind != inspect.Parameter.KEYWORD_ONLY]
    assert [(p.name, p.default) for p in positional] == [("path_naming_fn", None), ("connection_timeout", 30.0)]
    extra = [p.name for p in sig.parameters.values() if p.kind == inspect.Parameter.KEYWORD_ONLY]
    assert extra == ["cuda_mode", "share_agent"], "anything beyond the reference must be keyword-only"
    fields = {f.name for f in __import__("dataclasses").fields(BootstrapInfo)}
    assert {"agent_rank", "global_rank", "rank_offset", "device", "command_queue_path", "state_path", "method"} <= fields
    client_sig = inspect.signature(etha_tensor_bus.TensorBusClient.transfer)
    assert [(p.name, p.default) for p in list(client_sig.parameters.values())[1:]] == [
        ("batch_id", inspect.Parameter.empty), ("transfer_type", inspect.Parameter.empty), ("blocking", False), ("timeout", 30.0)]
    assert callable(etha_tensor_bus.setup_ptrace)


def test_bootstrap_and_commands(agent):
    p = agent()
    client, info = bootstrap_client()
    assert info.method == "direct" and info.rank_offset is None and info.device == "cuda:0"
    assert info.agent_pid == p.pid
    if not HAVE_CUDA:
        assert info.cuda_bound is False and info.device_uuid is None and info.cuda_driver_version == 0
        assert client.cuda_context() is None
        with pytest.raises(TensorBusError) as e:
            client.bind_current_thread()
        assert e.value.status == errors.STATUS["CUDA"]
    with pytest.raises(ConnectionError) as e:
        bootstrap_client()
    assert e.value.status == errors.STATUS["AGENT_BUSY"]
    client.close()
    client, info = bootstrap_client(cuda_mode="skip")
    assert info.cuda_bound is False and info.cuda_driver_version == 0
    with pytest.raises(ValueError):
        bootstrap_client(cuda_mode="sometimes")
    with client:
        client.init_pair("w", "train", "infer", 2, device_mesh=pickle.dumps((2,), 3), placements=None)
        batch = client.register_tensors("step", [(pickle.dumps(b"\x01\x02", 3), "w"), (pickle.dumps(None, 4), "w")],
                                        bucket_size=1 << 20)
        assert batch.batch_id == "step" and batch.pair_names == ["w", "w"]
        assert batch.transfer("send", blocking=True) is None
        assert batch.query_transfer_signal() is True
        done = batch.transfer("recv")
        done.wait(5.0)
        assert done.poll() is True
        done.close()
        assert batch.query_transfer_signal() is False
        client.transfer_detached("other", "send")
        batch.close()
        assert client.heartbeat_age() < 5.0
    with pytest.raises(TensorBusError) as e:
        client.heartbeat_age()
    assert e.value.status == errors.STATUS["CLOSED"]


def test_offset_method_and_naming_callable(agent, monkeypatch):
    p = agent()
    rank = int(os.environ["AGENT_RANK"])
    monkeypatch.delenv("AGENT_RANK")
    monkeypatch.setenv("RANK", str(rank - 2))
    monkeypatch.setenv("AGENT_RANK_OFFSET", "2")
    seen = []

    def naming(r):
        seen.append(r)
        return (f"/tmp/agent_rank{r}_command.lmdb", f"/tmp/agent_rank{r}_state.lmdb")

    client, info = bootstrap_client(naming, connection_timeout=5.0)
    client.close()
    assert seen == [rank] and info.method == "offset" and info.rank_offset == 2 and info.agent_pid == p.pid


@pytest.mark.parametrize("make, status, builtin", [
    ("env", "ENV", ValueError),
    ("nan", "INVALID_ARGUMENT", ValueError),
    ("naming", "NAMING", ValueError),
    ("missing", "AGENT_NOT_FOUND", ConnectionError),
    ("stale", "AGENT_NOT_RESPONDING", ConnectionError),
])
def test_bootstrap_exceptions(agent, monkeypatch, make, status, builtin):
    kwargs = {"connection_timeout": 0.1}
    monkeypatch.setenv("AGENT_RANK", str(os.getpid() * 1000 + 999))
    monkeypatch.setenv("RANK", "0")
    if make == "env":
        monkeypatch.delenv("RANK", raising=False)
    elif make == "nan":
        kwargs["connection_timeout"] = float("nan")
    elif make == "naming":
        kwargs["path_naming_fn"] = lambda r: ("", "/tmp/x")
    elif make == "missing":
        pass
    elif make == "stale":
        agent("--heartbeat-offset", "60")
    with pytest.raises(builtin) as e:
        bootstrap_client(**kwargs)
    assert isinstance(e.value, TensorBusError)
    assert e.value.status == errors.STATUS[status], e.value.message
    assert e.value.message == str(e.value)


def test_naming_callable_exception_reaches_the_caller(agent):
    agent()

    class Mine(Exception):
        pass

    def naming(rank):
        raise Mine(rank)

    with pytest.raises(Mine):
        bootstrap_client(naming)


@pytest.mark.parametrize("fault, status, builtin", [
    (("--never-ack", "CleanupBatch"), "TIMEOUT", TimeoutError),
    (("--unmatched",), "PAIR_NOT_MATCHED", None),
    (("--exit-on", "CleanupBatch"), "AGENT_DIED", ConnectionError),
    (("--fail-on", "CleanupBatch", "--fail-delay", "1.2"), "AGENT_DIED", ConnectionError),
])
def test_command_exceptions(agent, fault, status, builtin):
    p = agent(*fault)
    client, _ = bootstrap_client()
    with client:
        with pytest.raises(TensorBusError) as e:
            if status == "PAIR_NOT_MATCHED":
                client.init_pair("p", "a", "b", 2)
            else:
                client.cleanup_batch("b", timeout=0.2 if status == "TIMEOUT" else 30.0)
        assert e.value.status == errors.STATUS[status], e.value.message
        if status == "AGENT_DIED":
            # The Python binding names its own method for what to do next.
            assert e.value.message.endswith("reconnect the client once a new agent runs (client.reconnect())"), e.value.message
        if builtin:
            assert isinstance(e.value, builtin)
        else:
            assert not isinstance(e.value, (ValueError, ConnectionError, TimeoutError, PermissionError))
    if status == "AGENT_DIED":
        p.wait()
        # An --exit-on agent leaves its files; a --fail-on one removed them: clean up either way.
        rank = os.environ["AGENT_RANK"]
        subprocess.run([AGENT, "--rank", rank, "--exit-after", "0"], stdout=subprocess.DEVNULL, check=True)


def test_queue_full_is_a_timeout_error(agent):
    agent("--no-dequeue")
    client, _ = bootstrap_client()
    with client:
        for _ in range(50000):
            client.transfer_detached("f", "send", timeout=0.0)
        with pytest.raises(TimeoutError) as e:
            client.transfer_detached("f", "send", timeout=0.05)
        assert e.value.status == errors.STATUS["QUEUE_FULL"]


def test_a_library_of_another_version_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "libnotetb.so"
    fake.write_bytes(pathlib.Path(etha_tensor_bus._native.library_path()).read_bytes())
    monkeypatch.setattr(etha_tensor_bus._native, "EXPECTED_VERSION", "9.9")
    with pytest.raises(ImportError, match="needs 9.9.x"):
        etha_tensor_bus._native.load(str(fake))


def test_etb_library_path_overrides(monkeypatch):
    with tempfile.TemporaryDirectory() as d:
        monkeypatch.setenv("ETB_LIBRARY_PATH", os.path.join(d, "nope.so"))
        with pytest.raises(OSError):
            etha_tensor_bus._native.load()


def test_example_script(agent):
    agent()
    example = pathlib.Path(__file__).resolve().parents[2] / "examples" / "python" / "example.py"
    out = subprocess.run([__import__("sys").executable, example], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "worker bootstrapped" in out.stdout and f"agent_rank         = {os.environ['AGENT_RANK']}" in out.stdout
