"""The Python package, as users get it: pip-installed into a fresh virtual environment (with the
shared library shipped inside it), run against etb-dev-agent (ETB_DEV_AGENT). Run by
tests/run_all.py from that environment, not from .venv."""
import inspect
import os
import pickle
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

import etha_tensor_bus
from etha_tensor_bus import BootstrapInfo, TensorBusError, bootstrap_client, errors

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The version, as written in its one place.
CARGO_VERSION = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]

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
        # The worker lock file, which the library never removes: the operator's (here the test's).
        rank = p.args[2]
        pathlib.Path(f"/tmp/.agent_rank{rank}_state.lmdb.worker").unlink(missing_ok=True)


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
    assert etha_tensor_bus.version() == CARGO_VERSION


def test_one_version_everywhere():
    """The wheel's metadata, __version__ and the loaded library report Cargo.toml's version; the
    load-time check asks for its major.minor."""
    import importlib.metadata

    assert importlib.metadata.version("etha-tensor-bus") == CARGO_VERSION
    assert etha_tensor_bus.__version__ == CARGO_VERSION
    assert etha_tensor_bus.version() == CARGO_VERSION
    assert etha_tensor_bus._native.EXPECTED_VERSION == CARGO_VERSION.rsplit(".", 1)[0]


P = inspect.Parameter
# docs/protocol.md section 7: every public name and parameter of the reference, with its default.
REFERENCE_API = {
    "etha_tensor_bus.bootstrap.bootstrap_client": [("path_naming_fn", None), ("connection_timeout", 30.0)],
    "etha_tensor_bus.client.TensorBusClient": [("agent_rank", P.empty), ("lmdb_command_queue_path", None),
                                               ("agent_state_lmdb_path", None), ("connection_timeout", 30.0)],
    "etha_tensor_bus.client.TensorBusClient.init_pair": [
        ("pair_name", P.empty), ("local_name", P.empty), ("remote_name", P.empty), ("expected_world_size", P.empty),
        ("device_mesh", None), ("placements", None), ("blocking", True), ("timeout", 30.0)],
    "etha_tensor_bus.client.TensorBusClient.register_tensors": [
        ("batch_id", P.empty), ("tensors", P.empty), ("bucket_size", None), ("timeout", 30.0)],
    "etha_tensor_bus.client.TensorBusClient.transfer": [
        ("batch_id", P.empty), ("transfer_type", P.empty), ("blocking", False), ("timeout", 30.0)],
    "etha_tensor_bus.client.TensorBusClient.query_transfer_signal": [
        ("batch_id", P.empty), ("blocking", True), ("timeout", 30.0)],
    "etha_tensor_bus.client.TensorBusClient.close": [],
    "etha_tensor_bus.client.BatchHandler.transfer": [("transfer_type", P.empty), ("blocking", False), ("timeout", 30.0)],
    "etha_tensor_bus.client.BatchHandler.query_transfer_signal": [("blocking", True), ("timeout", 30.0)],
    "etha_tensor_bus.client.BatchHandler.close": [("blocking", True), ("timeout", 30.0)],
    "etha_tensor_bus.bootstrap.setup_ptrace": [],
}


def _resolve(dotted):
    import importlib

    module, _, rest = dotted.partition(".client.") if ".client." in dotted else dotted.partition(".bootstrap.")
    module += ".client" if ".client." in dotted else ".bootstrap"
    obj = importlib.import_module(module)
    for part in rest.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("name", sorted(REFERENCE_API))
def test_reference_signature(name):
    obj = _resolve(name)
    params = [p for p in inspect.signature(obj).parameters.values() if p.name != "self"]
    positional = [(p.name, p.default) for p in params if p.kind != P.KEYWORD_ONLY]
    assert positional == REFERENCE_API[name], "the reference's parameters, in order, with its defaults"
    # Anything beyond the reference is keyword-only (and private ones start with _).
    assert all(p.kind == P.KEYWORD_ONLY for p in params[len(REFERENCE_API[name]):])
    doc = (obj.__init__ if inspect.isclass(obj) else obj).__doc__ or obj.__doc__ or ""
    assert "reference" in (obj.__doc__ or "") + doc, f"{name}'s docstring names its reference counterpart"


def test_mirrored_modules_and_top_level_names():
    from etha_tensor_bus import bootstrap, client

    assert bootstrap.bootstrap_client is etha_tensor_bus.bootstrap_client
    assert bootstrap.BootstrapInfo is BootstrapInfo and bootstrap.setup_ptrace is etha_tensor_bus.setup_ptrace
    assert client.TensorBusClient is etha_tensor_bus.TensorBusClient
    assert client.BatchHandler is etha_tensor_bus.BatchHandler
    fields = {f.name for f in __import__("dataclasses").fields(BootstrapInfo)}
    assert {"agent_rank", "global_rank", "rank_offset", "device", "command_queue_path", "state_path", "method"} <= fields
    extra = [p.name for p in inspect.signature(bootstrap_client).parameters.values() if p.kind == P.KEYWORD_ONLY]
    assert extra == ["cuda_mode", "share_agent", "device_index"]
    # Type hints ship with it.
    assert (pathlib.Path(etha_tensor_bus.__file__).parent / "py.typed").exists()


def test_imports_and_bootstraps_without_torch(agent):
    agent()
    code = ("import sys, etha_tensor_bus\n"
            "c, i = etha_tensor_bus.bootstrap_client()\n"
            "c.init_pair('p', 'a', 'b', 2, device_mesh=(2,), placements=(('shard', 0),))\n"
            "c.close()\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_etb_is_on_the_path_of_the_environment():
    etb = shutil.which("etb")
    assert etb and pathlib.Path(etb).parent == pathlib.Path(sys.executable).parent, etb
    out = subprocess.run([etb, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "status" in out.stdout, out.stderr


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
        client.transfer_detached("step", "send")
        with pytest.raises(ValueError, match='Transfer for batch "other"'):
            client.transfer_detached("other", "send")  # never registered: the agent would die of it
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
    if make == "env":  # the reference raises KeyError for a missing RANK, its docs say ValueError: both
        assert isinstance(e.value, KeyError) and "RANK" in str(e.value)


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
        client.adopt_batch("f")  # nobody reads this queue: no RegisterTensors could be answered
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
    shipped = pathlib.Path(etha_tensor_bus._native.library_path())
    with tempfile.TemporaryDirectory() as d:
        monkeypatch.setenv("ETB_LIBRARY_PATH", os.path.join(d, "nope.so"))
        with pytest.raises(ImportError) as e:
            etha_tensor_bus._native.load()
        # Where it looked, and what to do.
        assert "nope.so" in str(e.value) and "pip install ./python" in str(e.value), str(e.value)
        # The folder form: ETB_LIBRARY_PATH naming the folder that holds the library.
        (pathlib.Path(d) / "libetha_tensor_bus.so").write_bytes(shipped.read_bytes())
        monkeypatch.setenv("ETB_LIBRARY_PATH", d)
        loaded = etha_tensor_bus._native.load()
        assert loaded.etb_version().decode() == etha_tensor_bus.version()


def test_example_script(agent):
    agent()
    example = ROOT / "examples" / "python" / "example.py"
    out = subprocess.run([__import__("sys").executable, example], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "worker bootstrapped" in out.stdout and f"agent_rank         = {os.environ['AGENT_RANK']}" in out.stdout


def _paths(rank):
    return f"/tmp/agent_rank{rank}_command.lmdb", f"/tmp/agent_rank{rank}_state.lmdb"


def test_tensor_bus_client_constructor(agent, monkeypatch):
    p = agent()
    rank = int(os.environ["AGENT_RANK"])
    cq, st = _paths(rank)
    monkeypatch.delenv("TENSOR_BUS_COMMAND_QUEUE_PATH", raising=False)
    monkeypatch.delenv("TENSOR_BUS_STATE_PATH", raising=False)
    with pytest.raises(ValueError, match="TENSOR_BUS_COMMAND_QUEUE_PATH and TENSOR_BUS_STATE_PATH"):
        etha_tensor_bus.TensorBusClient(rank)
    with etha_tensor_bus.TensorBusClient(rank, cq, st, 5.0) as client:
        assert client.info.method == "direct" and client.info.global_rank == -1 and client.info.agent_pid == p.pid
        assert client.query_transfer_signal("b") is False
    monkeypatch.setenv("TENSOR_BUS_COMMAND_QUEUE_PATH", cq)
    monkeypatch.setenv("TENSOR_BUS_STATE_PATH", st)
    with etha_tensor_bus.TensorBusClient(rank) as client:
        assert client.info.command_queue_path == cq and client.info.state_path == st
    with pytest.raises(ConnectionError):
        etha_tensor_bus.TensorBusClient(rank + 1, *_paths(rank + 1), connection_timeout=0.1)


def test_device_index_chooses_the_clients_device(agent, monkeypatch):
    """device_index (keyword-only): the info's device follows it, for TensorBusClient (default
    cuda:0) and bootstrap_client (default cuda:{LOCAL_RANK}); a bad one is refused first."""
    agent()
    rank = int(os.environ["AGENT_RANK"])
    cq, st = _paths(rank)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with etha_tensor_bus.TensorBusClient(rank, cq, st, 5.0, cuda_mode="skip") as client:
        assert client.info.device == "cuda:0", "a connect's default device, whatever LOCAL_RANK says"
    with etha_tensor_bus.TensorBusClient(rank, cq, st, 5.0, cuda_mode="skip", device_index=3) as client:
        assert client.info.device == "cuda:3" and not client.info.cuda_bound
    client, info = bootstrap_client(cuda_mode="skip")
    assert info.device == "cuda:1", "bootstrap's default: LOCAL_RANK"
    client.close()
    client, info = bootstrap_client(cuda_mode="skip", device_index=2)
    assert info.device == "cuda:2"
    client.close()
    if not HAVE_CUDA:  # no driver to count devices: auto goes on unbound, on the chosen device
        client, info = bootstrap_client(device_index=5)
        assert info.device == "cuda:5" and not info.cuda_bound
        client.close()
    with pytest.raises(ValueError, match="device_index must be a CUDA device ordinal"):
        etha_tensor_bus.TensorBusClient(rank, cq, st, 5.0, device_index=-1)
    with pytest.raises(TypeError, match="device_index must be an int or None"):
        bootstrap_client(device_index="0")


def test_non_blocking_forms_and_semaphore_calls(agent, tmp_path):
    record = tmp_path / "record.tsv"
    agent("--record", str(record))
    client, _ = bootstrap_client()
    with client:
        done = client.init_pair("nb", "a", "b", 2, blocking=False)
        done.acquire(10)
        assert done.poll() is True
        done.close()
        batch = client.register_tensors("s", [(pickle.dumps(1, 4), "nb")])
        sem = batch.transfer("send")
        assert sem.name.startswith("Transfer s send")
        sem.acquire()  # None: forever, as posix_ipc
        sem.release()
        sem.unlink()
        sem.close()
        assert batch.query_transfer_signal() is True
        # blocking=False: sent, and what the state holds now (True, from the query above).
        assert batch.query_transfer_signal(blocking=False) is True
        batch.close(blocking=False)
        with pytest.raises(ValueError):
            client.register_tensors("e", [])
        with pytest.raises(TypeError, match="torch.Tensor, an object with __cuda_array_interface__"):
            client.register_tensors("e", [(1.5, "nb")])
        with pytest.raises(TypeError):
            client.init_pair("x", "a", "b", 2, device_mesh="2x2")
    # The non-blocking commands were sent, not waited for: the agent takes them in its own time.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "CleanupBatch" not in record.read_text():
        time.sleep(0.02)
    kinds = [line.split("\t")[0] for line in record.read_text().splitlines()]
    assert kinds[:2] == ["InitPair", "RegisterTensors"] and "CleanupBatch" in kinds and kinds.count("QueryStatus") == 2


def test_acquire_timeout_is_a_timeout_error_and_a_busy_error(agent):
    import posix_ipc

    agent("--never-ack", "Transfer")
    client, _ = bootstrap_client()
    with client:
        client.init_pair("p", "a", "b", 1)
        batch = client.register_tensors("t", [(pickle.dumps(1, 4), "p")])
        sem = batch.transfer("send")
        with pytest.raises(TimeoutError) as e:
            sem.acquire(0.2)
        assert isinstance(e.value, posix_ipc.BusyError) and isinstance(e.value, TensorBusError)
        sem.close()
    assert not _own_semaphores()


def _own_semaphores():
    return [n for n in os.listdir("/dev/shm") if n.startswith("sem.command_") and n.split("_")[-2] == str(os.getpid())]


def _recorded(record, line, timeout=20.0):
    """Waits until the agent recorded `line` (commands sent without waiting arrive in its time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and line not in record.read_text():
        time.sleep(0.01)
    return line in record.read_text()


def test_a_dropped_batch_handler_cleans_up_without_leaving_a_semaphore(agent, tmp_path):
    import gc

    record = tmp_path / "record.tsv"
    agent("--record", str(record))
    client, _ = bootstrap_client()
    with client:
        client.init_pair("p", "a", "b", 1)
        client.register_tensors("dropped", [(pickle.dumps(2, 4), "p")])  # the handler is dropped at once
        gc.collect()
        # A CleanupBatch nobody waits for: sent with no completion semaphore ("-").
        assert _recorded(record, "CleanupBatch\tdropped\t\t-\n"), record.read_text()
        assert client.batch_known("dropped") is False
        assert not _own_semaphores()
        # A handler whose batch id was registered again since sends nothing when dropped: its
        # clean-up would delete the newer batch.
        old = client.register_tensors("again", [(pickle.dumps(3, 4), "p")])
        newer = client.register_tensors("again", [(pickle.dumps(4, 4), "p")])
        del old
        gc.collect()
        newer.transfer("send", blocking=True)  # the newer batch is still the agent's
        assert record.read_text().count("CleanupBatch\tagain") == 0, record.read_text()
        del newer
        gc.collect()
        assert _recorded(record, "CleanupBatch\tagain\t\t-\n"), "the newest handler cleans up when dropped"


def test_what_would_kill_the_agent_is_a_value_error_with_nothing_sent(agent, tmp_path):
    """The reference's calls, refused before the queue where the real agent would die; an unknown
    batch's query is False, nothing sent, with a warning once; adopt lets an earlier process's
    batch and pair through (the agent keeps them for its whole life)."""
    import warnings

    record = tmp_path / "record.tsv"
    agent("--record", str(record))
    with bootstrap_client()[0] as first:  # an earlier process of this worker
        first.init_pair("p", "a", "b", 1)
        kept = first.register_tensors("kept", [(pickle.dumps(1, 4), "p")])
    del kept  # its client is closed: no clean-up is sent, the agent keeps the batch
    client, _ = bootstrap_client()
    with client:
        with pytest.raises(ValueError, match='Transfer for batch "kept".*nothing was enqueued'):
            client.transfer("kept", "send", blocking=True)
        with pytest.raises(ValueError, match='names pair "p"'):
            client.register_tensors("new", [(pickle.dumps(1, 4), "p")])
        with pytest.warns(RuntimeWarning, match="never registered"):
            assert client.query_transfer_signal("kept") is False
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert client.query_transfer_signal("kept") is False, "warned once"
            assert client.query_transfer_signal("kept", blocking=False) is False
        client.adopt_batch("kept")
        client.adopt_pair("p")
        assert client.batch_known("kept") and client.pair_known("p")
        client.transfer("kept", "send", blocking=True)
        assert client.query_transfer_signal("kept") is True
        client.register_tensors("new", [(pickle.dumps(2, 4), "p")]).close()
    kinds = [line.split("\t")[0] for line in record.read_text().splitlines()]
    assert kinds == ["InitPair", "RegisterTensors", "Transfer", "QueryStatus", "RegisterTensors", "CleanupBatch"], kinds


def test_native_mesh_and_placement_forms_without_torch(agent):
    import pickletools

    from etha_tensor_bus import _payloads

    assert pickle.loads(_payloads.mesh_bytes((2, 4))) == (2, 4)
    blob = _payloads.placements_bytes((("shard", 1), "replicate", ("partial", "sum")))
    text = " ".join(arg for _, arg, _ in pickletools.genops(blob) if isinstance(arg, str))
    assert "torch.distributed.tensor.placement_types" in text, text
    assert all(name in text for name in ("Shard", "Replicate", "Partial", "sum")), text
    with pytest.raises(TypeError, match="a placement must be"):
        _payloads.placements_bytes((("shard", "x"),))


def test_library_records_reach_logging_with_level_and_filter(agent):
    agent()
    code = ("import logging, etha_tensor_bus\n"
            "seen = []\n"
            "class H(logging.Handler):\n"
            "    def emit(self, r): seen.append((r.levelname, r.etb_target, r.getMessage()))\n"
            "logging.getLogger('etha_tensor_bus').addHandler(H())\n"
            "logging.getLogger('etha_tensor_bus').setLevel(logging.DEBUG)\n"
            "c, i = etha_tensor_bus.bootstrap_client()\n"
            "c.close()\n"
            "for s in seen: print(*s, sep='|')\n")
    for directive, want_info in (("warn,etb_core::bootstrap=info", True), ("warn", False)):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                             env=dict(os.environ, ETB_LOG=directive))
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        info = [line for line in lines if line.startswith("INFO|etb_core::bootstrap|bootstrapped:")]
        assert bool(info) == want_info, (directive, lines)
        assert "bootstrapped:" not in out.stderr, "a record went to stderr instead of logging"
        assert all(line.split("|")[0] in ("INFO", "WARNING", "ERROR") for line in lines), lines
