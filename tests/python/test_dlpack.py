"""DLPack from Python (issue 22): register_tensors takes a DLPack capsule (versioned and legacy)
and an object with __dlpack__ / __dlpack_device__ (the 2023 signature, asked with stream=1 and
max_version=(1, 1), and an older producer's, asked again without max_version), built over fake
CUDA memory (tests/python/fake_dlpack.py), through etb_client_dlpack_payload; an object with both
__cuda_array_interface__ and __dlpack__ (CuPy) takes the DLPack route; a consumed capsule is
renamed used_dltensor[_versioned] and refused when passed again; a CPU producer is refused naming
kDLCPU, its capsule left to its own destructor; each deleter runs once: in the payload's free
when the agent released the memory first, on the etb-dlpack thread when the payload was freed
first (the stand-in agent releases the reference counters at CleanupBatch, --release-counters);
and a Transfer(recv) of a batch with a read-only payload is refused, nothing enqueued. In a
child process on the fake driver (compiled with cc, as tests/python/test_gpus.py)."""
import json
import os
import subprocess
import sys

from conftest import ROOT, library_path, unique_rank
from test_gpus import fake_driver, received

CHILD = r"""
import ctypes, gc, json, os, sys, time
sys.path.insert(0, os.environ["ETB_TESTS_PYTHON"])
import fake_dlpack as fd
from etha_tensor_bus import TensorBusClient, TensorBusError

fake = ctypes.CDLL(os.environ["ETB_CUDA_DRIVER_PATH"])
fake.fake_cuda_alloc.restype = ctypes.c_ulonglong
fake.fake_cuda_alloc.argtypes = [ctypes.c_int, ctypes.c_ulonglong, ctypes.c_int]
rank, cq, st = json.loads(sys.argv[1])
out = {}
client = TensorBusClient(rank, cq, st, 5.0, cuda_mode="require")
client.init_pair("pair", "train", "infer", 1)
base = fake.fake_cuda_alloc(0, 1 << 16, 0)

class Cai:  # what Numba hands over: __cuda_array_interface__ only
    def __init__(self, ptr):
        self.__cuda_array_interface__ = {"shape": (4, 8), "typestr": "<f4", "data": (ptr, False), "version": 3}

class CupyLike(fd.Producer):  # both: the DLPack route
    @property
    def __cuda_array_interface__(self):
        out["cai_read"] = True
        return {"shape": self.shape, "typestr": "<f4", "data": (self.data, False), "version": 3}

# 1. Capsules, versioned and legacy.
cap, cap_ctx = fd.capsule(base, (4, 8))
leg, leg_ctx = fd.capsule(base + 4096, (4, 8), legacy=True)
b_cap = client.register_tensors("cap", [(cap, "pair"), (leg, "pair"), (Cai(base), "pair")])
out["names"] = [fd.capsule_name(cap), fd.capsule_name(leg)]
del cap, leg
gc.collect()
out["deleted_after_capsules_died"] = list(fd.DELETED)
# 2. Objects with __dlpack__: the 2023 signature, an older one, a CuPy-like one.
new = fd.Producer(base + 8192, (16,))
old = fd.Producer(base + 12288, (16,), old=True)
both = CupyLike(base + 16384, (16,))
b_obj = client.register_tensors("obj", [(new, "pair"), (old, "pair"), (both, "pair")])
out["calls"] = [new.calls, old.calls, both.calls]
out["cai_read"] = out.get("cai_read", False)
# 3. Refusals: a CPU producer (the capsule's own destructor deletes its tensor), a used capsule.
cpu = fd.Producer(base, (16,), device=(fd.KDL_CPU, 0))
try:
    client.register_tensors("cpu", [(cpu, "pair")])
    out["cpu"] = None
except TensorBusError as e:
    out["cpu"] = [e.status_name if hasattr(e, "status_name") else e.status, e.message]
gc.collect()
out["cpu_calls"] = cpu.calls
out["cpu_deleted"] = [c in fd.DELETED for c in cpu.made]
used, _ = fd.capsule(base, (4,))
client.register_tensors("used", [(used, "pair")])  # its handler dies here: CleanupBatch sent
try:
    client.register_tensors("again", [(used, "pair")])
    out["again"] = None
except ValueError as e:
    out["again"] = str(e)
# 4. Read-only: a receive refused before the queue.
ro = fd.Producer(base + 20480, (16,), flags=fd.READ_ONLY)
b_ro = client.register_tensors("ro", [(ro, "pair")])
try:
    b_ro.transfer("recv", blocking=True)
    out["recv"] = None
except ValueError as e:
    out["recv"] = ["ValueError", str(e)]
except TensorBusError as e:
    out["recv"] = ["TensorBusError", e.message]
b_ro.transfer("send", blocking=True)
# 5. Deleters: released first (CleanupBatch), then freed: in the free, on this thread.
before = len(fd.DELETED)
b_cap.close()
del b_cap
gc.collect()
out["freed_after_release"] = [fd.DELETED[before:], fd.DELETED_ON[before:], [cap_ctx, leg_ctx]]
# Freed first (the handler dropped), released later: on the etb-dlpack thread.
keep_alive = b_obj._keep
b_obj._closed = True  # no CleanupBatch from its __del__
del b_obj
before = len(fd.DELETED)
del keep_alive
gc.collect()
time.sleep(0.1)
out["deferred_before_release"] = fd.DELETED[before:]
client.cleanup_batch("obj")
end = time.time() + 5
while len(fd.DELETED) < before + 3 and time.time() < end:
    time.sleep(0.01)
out["deferred"] = [fd.DELETED[before:], fd.DELETED_ON[before:], new.made + old.made + both.made]
b_ro.close()
del b_ro
gc.collect()
client.close()
end = time.time() + 5
while len(fd.DELETED) < before + 5 and time.time() < end:
    time.sleep(0.01)
out["all"] = len(fd.DELETED)
print(json.dumps(out))
"""


def test_dlpack_capsules_and_objects_through_register_tensors(python_agent, tmp_path):
    so = fake_driver(tmp_path)
    rank = unique_rank()
    record = tmp_path / "record.jsonl"
    agent = python_agent(rank, "--record", str(record), "--release-counters")
    env = dict(os.environ, ETB_CUDA_DRIVER_PATH=str(so), ETB_LIBRARY_PATH=library_path(),
               PYTHONPATH=str(ROOT / "python"), ETB_TESTS_PYTHON=str(ROOT / "tests" / "python"))
    for name in ("ETB_LOG", "FAKE_CUDA_DEVICES", "AGENT_RANK_OFFSET"):
        env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps([rank, *agent.paths])], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    got = json.loads(out.stdout.splitlines()[-1])
    # Consumed capsules renamed; their destructors then left the tensors to the payloads.
    assert got["names"] == ["used_dltensor_versioned", "used_dltensor"], got
    assert got["deleted_after_capsules_died"] == [], got
    # The stream the payload's event is recorded on (1: the legacy default stream), max_version
    # first; an older producer asked again without it; CuPy-like: DLPack, not its CAI.
    new, old, both = got["calls"]
    assert new == [{"stream": 1, "max_version": [1, 1]}], got["calls"]
    assert old == [{"stream": 1, "max_version": None}], got["calls"]
    assert both == [{"stream": 1, "max_version": [1, 1]}] and got["cai_read"] is False, got
    # The agent received CUDA tensor payloads, the CAI one and the DLPack ones alike.
    cap = received(record, "cap")
    assert len(cap) == 3 and all(b"rebuild_cuda_tensor" in p and b"ctorch\nfloat32\nK\x00" in p for p in cap), cap
    # The DLPack capsule's and the CAI object's payloads: the same memory, the same bytes but the
    # slot, and the event (DLPack's is recorded on the stream it asked for; the CAI one has none):
    # the last 70 bytes (the event handle's 66, event_sync_required, the call, STOP).
    assert cap[0].endswith(b"\x88tR.") and cap[2].endswith(b"\x89tR."), cap
    assert len(cap[0]) == len(cap[2]) and sum(x != y for x, y in zip(cap[0][:-70], cap[2][:-70])) <= 2, cap
    # A CPU producer: asked with stream None (not CUDA), refused naming the device; the
    # unconsumed capsule's destructor deleted the tensor.
    assert got["cpu_calls"] == [{"stream": None, "max_version": [1, 1]}], got
    assert got["cpu"] is not None and "kDLCPU" in got["cpu"][1], got["cpu"]
    assert got["cpu_deleted"] == [True], got
    assert got["again"] is not None and "consumed already ('used_dltensor_versioned')" in got["again"], got
    assert got["recv"] is not None and "read-only" in got["recv"][1] and "nothing was enqueued" in got["recv"][1], got
    assert not [c for c in map(json_line, record.read_text().splitlines())
                if c.get("type") == "Transfer" and c["batch_id"] == "ro" and c["transfer_type"] == "recv"]
    # Released, then freed: in the free, on the freeing thread (Python's main thread).
    deleted, threads, want = got["freed_after_release"]
    assert sorted(deleted) == sorted(want) and set(threads) == {"python"}, got["freed_after_release"]
    # Freed, then released: nothing before the release, then on etb-dlpack, once each.
    assert got["deferred_before_release"] == [], got
    deleted, threads, want = got["deferred"]
    assert sorted(deleted) == sorted(want) and set(threads) == {"etb-dlpack"}, got["deferred"]
    assert got["all"] == 8, got


def json_line(line):
    return json.loads(line)


def test_the_jax_example_sends_one_shard_per_local_gpu(python_agent, tmp_path):
    """examples/python/jax_worker.py (the README's JAX example), run as written against two
    strict stand-in agents, with the stand-in `jax` of tests/python/fake_jax over the fake driver's
    two devices: each client on its own device sends its shard through DLPack, each agent receives
    a CUDA payload naming its client's device, and every DLPack deleter runs (the agents release
    the reference counters at CleanupBatch)."""
    so = fake_driver(tmp_path)
    ranks = [unique_rank(), unique_rank()]
    records = [tmp_path / f"record{k}.jsonl" for k in range(2)]
    for rank, record in zip(ranks, records):  # stopped (worker lock files removed) by the fixture
        python_agent(rank, "--record", str(record), "--release-counters")
    here = ROOT / "tests" / "python"
    env = dict(os.environ, ETB_CUDA_DRIVER_PATH=str(so), ETB_LIBRARY_PATH=library_path(), FAKE_CUDA_DEVICES="2",
               PYTHONPATH=os.pathsep.join([str(ROOT / "python"), str(here / "fake_jax"), str(here)]),
               FAKE_JAX_REPORT=str(tmp_path / "jax.json"))
    for name in ("ETB_LOG", "AGENT_RANK_OFFSET", "AGENT_RANK", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "python" / "jax_worker.py"), *map(str, ranks)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines == [f"agent rank {ranks[0]} on cuda:0: sent step_0 from CudaDevice(id=0)",
                     f"agent rank {ranks[1]} on cuda:1: sent step_0 from CudaDevice(id=1)"], out.stdout
    for device, record in enumerate(records):
        payloads = received(record, "step_0")
        assert len(payloads) == 1 and b"rebuild_cuda_tensor" in payloads[0], payloads
        assert b"ctorch\nbfloat16\nK" + bytes([device]) in payloads[0], payloads[0]
        commands = [json_line(line) for line in record.read_text().splitlines()]
        assert [(c["type"], c.get("transfer_type")) for c in commands if c["type"] in ("Transfer", "CleanupBatch")] == [
            ("Transfer", "send"), ("CleanupBatch", None)], commands
    # Each shard asked once, on its device, for a DLPack 1.x capsule on the legacy default stream;
    # both deleters ran before the process ended.
    report = json.loads((tmp_path / "jax.json").read_text())
    assert report["calls"] == [[0, {"stream": 1, "max_version": [1, 1]}], [1, {"stream": 1, "max_version": [1, 1]}]], report
    assert report["deleted"] == 2 and report["deleted_on"] == ["python", "python"], report  # in each free
