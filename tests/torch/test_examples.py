"""The README's Python worker (examples/python/worker.py), run as written against the strict
Python stand-in agent, which unpickles every payload with the agent's torch (ForkingPickler.loads)
and dies where the real agent dies: it must bootstrap, register, send and print what it did.

Needs ETB_LIBRARY_PATH (the library)."""
import json
import os
import pathlib
import signal
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def test_the_readme_python_worker_runs_against_the_strict_stand_in(tmp_path):
    ledger = os.environ.get("ETB_TEST_LEDGER")
    if ledger:
        with open(ledger, "a") as f:
            f.write(f"{os.getpid()}\n")
    rank = os.getpid() * 1000 + 975
    loads = tmp_path / "loads.jsonl"
    agent = subprocess.Popen([sys.executable, str(ROOT / "tests" / "python" / "standin_agent.py"), "--rank", str(rank),
                              "--exit-after", "240", "--forking-loads", str(loads)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert agent.stdout.readline().startswith("ready"), agent.stderr.read()
        env = dict(os.environ, AGENT_RANK=str(rank), RANK="0", PYTHONPATH=str(ROOT / "python"))
        env.pop("AGENT_RANK_OFFSET", None)
        # Output to files: torch's shared-memory manager, a daemon the worker starts, inherits
        # them and outlives the worker by a little.
        out, err = tmp_path / "worker.out", tmp_path / "worker.err"
        with open(out, "w") as o, open(err, "w") as e:
            code = subprocess.run([sys.executable, str(ROOT / "examples" / "python" / "worker.py")], env=env,
                                  stdout=o, stderr=e, timeout=240).returncode
        assert code == 0, err.read_text()
        lines = out.read_text().splitlines()
        assert lines[0].startswith(f"bootstrapped: agent rank {rank} (direct)"), lines
        assert lines[1] == "sent step_0 (transfer signal set)", lines
        assert agent.poll() is None, "the strict stand-in died of something the example sent"
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=30)
        # The worker lock file, which the library never removes: the operator's (here the test's).
        pathlib.Path(f"/tmp/.agent_rank{rank}_state.lmdb.worker").unlink(missing_ok=True)
    got = [json.loads(line) for line in loads.read_text().splitlines()]
    tensors = [p for entry in got if entry["command"] == "RegisterTensors" for p in entry["payloads"]]
    assert tensors == [{"dtype": "torch.float32", "shape": [1024], "values": [0.0] * 1024}], tensors
    meshes = [p for entry in got if entry["command"] == "InitPair" for p in entry["payloads"]]
    assert meshes[0] == {"mesh_shape": [1]}, meshes


def test_the_readme_asyncio_worker_runs_against_the_strict_stand_in(tmp_path):
    ledger = os.environ.get("ETB_TEST_LEDGER")
    if ledger:
        with open(ledger, "a") as f:
            f.write(f"{os.getpid()}\n")
    rank = os.getpid() * 1000 + 976
    loads = tmp_path / "loads.jsonl"
    # Each Transfer held 50 ms: the four are awaited together while the loop beats.
    agent = subprocess.Popen([sys.executable, str(ROOT / "tests" / "python" / "standin_agent.py"), "--rank", str(rank),
                              "--exit-after", "240", "--forking-loads", str(loads), "--hold", "Transfer", "0.05"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert agent.stdout.readline().startswith("ready"), agent.stderr.read()
        env = dict(os.environ, AGENT_RANK=str(rank), RANK="0", PYTHONPATH=str(ROOT / "python"))
        env.pop("AGENT_RANK_OFFSET", None)
        out, err = tmp_path / "worker.out", tmp_path / "worker.err"
        with open(out, "w") as o, open(err, "w") as e:
            code = subprocess.run([sys.executable, str(ROOT / "examples" / "python" / "asyncio_worker.py")], env=env,
                                  stdout=o, stderr=e, timeout=240).returncode
        assert code == 0, err.read_text()
        line = out.read_text().strip().splitlines()[-1]
        assert line.startswith("sent 4 layers while the loop went on ("), line
        beats = int(line.split("(")[1].split()[0])
        assert beats >= 10, f"the loop beat {beats} times in 4 x 50 ms of transfers: it was blocked"
        assert agent.poll() is None, "the strict stand-in died of something the example sent"
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=30)
        pathlib.Path(f"/tmp/.agent_rank{rank}_state.lmdb.worker").unlink(missing_ok=True)
    got = [json.loads(line) for line in loads.read_text().splitlines()]
    tensors = [p for entry in got if entry["command"] == "RegisterTensors" for p in entry["payloads"]]
    assert sorted(t["values"][0] for t in tensors) == [0.0, 1.0, 2.0, 3.0], tensors
