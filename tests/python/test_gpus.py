"""One process, several GPUs, from Python (issue 22): `device_index` of TensorBusClient and
bootstrap_client (keyword-only, checked before the library loads), and one process that connects
to two agents with two device choices on the fake CUDA driver (tests/fake_cuda, two devices,
compiled here with cc): each client bound to its device, a payload made through each, on its own
thread, names its own device as the agent received it, and the ptrace rule for two agents (one
warning, naming both). The CUDA part runs in a child process: the driver is loaded once per
process, and this pytest process must not load the fake one."""
import base64
import inspect
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, library_path, unique_rank
from etha_tensor_bus.errors import STATUS


def test_device_index_is_keyword_only_and_checked_before_loading():
    from etha_tensor_bus import TensorBusClient, bootstrap_client

    for fn in (TensorBusClient.__init__, bootstrap_client):
        p = inspect.signature(fn).parameters["device_index"]
        assert p.kind == inspect.Parameter.KEYWORD_ONLY and p.default is None, fn
    paths = ("/nonexistent/cq.lmdb", "/nonexistent/st.lmdb")
    for bad, error, words in (("1", TypeError, "device_index must be an int or None, not str"),
                              (True, TypeError, "not bool"), (1.0, TypeError, "not float"),
                              (-1, ValueError, "0 to 2147483647 (None: the default device), not -1"),
                              (2 ** 31, ValueError, "not 2147483648")):
        with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
            TensorBusClient(0, *paths, 0.0, device_index=bad)
        with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
            bootstrap_client(connection_timeout=0.0, device_index=bad)
    with pytest.raises(TypeError):
        TensorBusClient(0, *paths, 0.0, "auto")  # nothing beyond the reference's is positional


CHILD = r"""
import ctypes, json, logging, os, sys, threading
import etha_tensor_bus
from etha_tensor_bus import TensorBusClient, TensorBusError, bootstrap_client

fake = ctypes.CDLL(os.environ["ETB_CUDA_DRIVER_PATH"])  # the library the etb library loads too
fake.fake_cuda_alloc.restype = ctypes.c_ulonglong
fake.fake_cuda_alloc.argtypes = [ctypes.c_int, ctypes.c_ulonglong, ctypes.c_int]
warnings = []

class Ptrace(logging.Handler):
    def emit(self, r):
        if r.levelno == logging.WARNING and "ptrace" in r.etb_target:
            warnings.append(r.getMessage())

logging.getLogger("etha_tensor_bus").addHandler(Ptrace())

class Array:  # what CuPy, Numba or JAX hand over: device memory described
    def __init__(self, ptr):
        self.__cuda_array_interface__ = {"shape": (16,), "typestr": "<f4", "data": (ptr, False), "version": 3}

agents = json.loads(sys.argv[1])
out = {"warnings": []}
clients = []
for device, (rank, cq, st) in enumerate(agents):
    clients.append(TensorBusClient(rank, cq, st, 5.0, cuda_mode="require", device_index=device))
    out["warnings"].append(list(warnings))
out["devices"] = [c.info.device for c in clients]
out["names"] = [c.info.device_name for c in clients]
out["bound"] = [c.info.cuda_bound for c in clients]
out["pids"] = [c.info.agent_pid for c in clients]
errors = []

def send(device, client):
    try:
        client.init_pair("pair", "train", "infer", 1)
        batch = client.register_tensors(f"step_on_{device}", [(Array(fake.fake_cuda_alloc(device, 4096, 0)), "pair")])
        batch.close()
    except BaseException as e:
        errors.append(repr(e))

threads = [threading.Thread(target=send, args=(d, c)) for d, c in enumerate(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
out["errors"] = errors
for c in clients:
    c.close()
try:
    TensorBusClient(*agents[0], 5.0, device_index=7)
    out["missing"] = None
except TensorBusError as e:
    out["missing"] = [e.status, e.message]
os.environ.update(AGENT_RANK=str(agents[1][0]), RANK="0", LOCAL_RANK="0")
client, info = bootstrap_client(lambda rank: (agents[1][1], agents[1][2]), 5.0, device_index=1)
out["bootstrapped"] = [info.device, info.device_name]
client.close()
print(json.dumps(out))
"""


def fake_driver(tmp_path):
    cc = shutil.which("cc")
    if not cc:
        pytest.fail("a C compiler (cc) is needed to build the fake CUDA driver")
    so = tmp_path / "libfakecuda.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-pthread", "-o", str(so), str(ROOT / "tests/fake_cuda/fake_cuda.c")],
                   check=True, capture_output=True, timeout=120)
    return so


def received(record, batch):
    """The payloads agent's RegisterTensors for `batch` carried, as the agent received them."""
    for line in record.read_text().splitlines():
        cmd = json.loads(line)
        if cmd.get("type") == "RegisterTensors" and cmd["batch_id"] == batch:
            return [base64.b64decode(data) for _, data in cmd["tensors"]]
    return []


def test_one_process_two_agents_two_devices(python_agent, tmp_path):
    so = fake_driver(tmp_path)
    ranks = [unique_rank(), unique_rank()]
    records = [tmp_path / f"record{i}.jsonl" for i in range(2)]
    agents = [python_agent(rank, "--record", str(record)) for rank, record in zip(ranks, records)]
    spec = [[rank, *a.paths] for rank, a in zip(ranks, agents)]
    env = dict(os.environ, ETB_CUDA_DRIVER_PATH=str(so), ETB_LIBRARY_PATH=library_path(),
               PYTHONPATH=str(ROOT / "python"))
    for name in ("ETB_LOG", "FAKE_CUDA_DEVICES", "AGENT_RANK_OFFSET"):
        env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["devices"] == ["cuda:0", "cuda:1"] and got["names"] == ["Fake GPU 0", "Fake GPU 1"], got
    assert got["bound"] == [True, True] and got["pids"] == [a.pid for a in agents], got
    assert got["errors"] == [], got["errors"]
    # The ptrace rule: nothing for the first agent, one warning naming both for the second.
    assert got["warnings"][0] == [], got["warnings"]
    assert len(got["warnings"][1]) == 1, got["warnings"]
    said = got["warnings"][1][0]
    assert f"agent pid {agents[0].pid} ptrace it and now needs pid {agents[1].pid} too" in said, said
    assert "PR_SET_PTRACER_ANY" in said, said
    # Each payload, made on its client's own thread, names its client's device.
    for device, record in enumerate(records):
        payloads = received(record, f"step_on_{device}")
        assert len(payloads) == 1, record.read_text()
        assert b"ctorch\nfloat32\nK" + bytes([device]) in payloads[0], payloads[0]
    status, message = got["missing"]
    assert status == STATUS["CUDA"] and "device_index 7 is past the 2 device(s) the driver reports" in message, got["missing"]
    assert got["bootstrapped"] == ["cuda:1", "Fake GPU 1"], got
