"""The drop-in proof with the real torch (the agent's, pinned in tests/torch-version): a worker
written against the reference API (tests/torch/dropin_worker.py: a DeviceMesh on a one-rank gloo
group, placements, CPU tensors
in shared memory under the file_system strategy, the semaphore-style acquire, a dropped
BatchHandler) runs against the Python stand-in agent, which unpickles every payload with
ForkingPickler.loads as the real agent does and records what it got. What the agent got must be
what the worker sent, and the worker must leave no semaphore behind.

Needs ETB_LIBRARY_PATH (the library)."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import msgspec

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _ledger():
    ledger = os.environ.get("ETB_TEST_LEDGER")
    if ledger:
        with open(ledger, "a") as f:
            f.write(f"{os.getpid()}\n")


def test_reference_worker_runs_unchanged_and_the_agent_gets_what_it_sent(tmp_path):
    _ledger()
    rank = os.getpid() * 1000 + 970
    got_path, record_path = tmp_path / "loads.jsonl", tmp_path / "record.jsonl"
    agent = subprocess.Popen([sys.executable, str(ROOT / "tests" / "python" / "standin_agent.py"), "--rank", str(rank),
                              "--exit-after", "240", "--forking-loads", str(got_path), "--record", str(record_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert agent.stdout.readline().startswith("ready"), agent.stderr.read()
        env = dict(os.environ, AGENT_RANK=str(rank), RANK="0", LOCAL_RANK="0",
                   PYTHONPATH=str(ROOT / "python"))
        env.pop("AGENT_RANK_OFFSET", None)
        # Output to files, not pipes: torch's shared-memory manager (file_system strategy), a
        # daemon the worker starts, inherits them and outlives the worker by a little.
        out, err = tmp_path / "worker.out", tmp_path / "worker.err"
        with open(out, "w") as o, open(err, "w") as e:
            code = subprocess.run([sys.executable, str(HERE / "dropin_worker.py"), str(tmp_path / "pg")], env=env,
                                  stdout=o, stderr=e, timeout=240).returncode
        assert code == 0, err.read_text()
        sent = json.loads(out.read_text().strip().splitlines()[-1])
        # The dropped BatchHandler's CleanupBatch is sent without waiting: give the agent time to take it.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and b'"CleanupBatch"' not in record_path.read_bytes():
            time.sleep(0.05)
    finally:
        agent.send_signal(signal.SIGTERM)
        _, agent_err = agent.communicate(timeout=30)
        # The worker lock file, which the library never removes: the operator's (here the test's).
        pathlib.Path(f"/tmp/.agent_rank{rank}_state.lmdb.worker").unlink(missing_ok=True)
    got = [json.loads(line) for line in got_path.read_text().splitlines()]
    by_kind = {}
    for entry in got:
        by_kind.setdefault(entry["command"], []).append(entry)
    assert "ForkingPickler.loads failed" not in agent_err, agent_err
    (init,) = by_kind["InitPair"]
    assert init["payloads"] == [{"mesh_shape": sent["mesh_shape"]}, {"repr": sent["placements"]}]
    assert sent["mesh_shape"] == [1] and "Shard(dim=0)" in sent["placements"]
    (register,) = by_kind["RegisterTensors"]
    assert register["batch_or_pair"] == "step"
    assert register["payloads"] == sent["tensors"]
    assert [t["dtype"] for t in sent["tensors"]] == ["torch.float32", "torch.int64", "torch.bool", "torch.bfloat16",
                                                    "torch.float16"]
    assert sent["signal"] is True
    commands = [msgspec.json.decode(line) for line in record_path.read_bytes().splitlines()]
    cleanups = [c for c in commands if c.get("type") == "CleanupBatch" and c["batch_id"] == "step"]
    assert cleanups, f"the dropped BatchHandler sent no CleanupBatch: {commands}"
    # No semaphore of the worker's left (the completion semaphores carry its pid; the worker exited).
    left = [n for n in os.listdir("/dev/shm") if n.startswith("sem.command_")
            and any(n.split("_")[-2] == str(p) for p in [worker_pid(commands)])]
    assert not left, left


def worker_pid(commands):
    """The worker's pid, read from a completion semaphore name the agent recorded."""
    for c in commands:
        name = c.get("semaphore_name")
        if name:
            return int(name.rsplit("_", 2)[-2])
    raise AssertionError(f"no completion semaphore in {commands}")
