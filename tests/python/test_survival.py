"""The survival proof's first signal against py-lmdb's LMDB, the agent's: the Python stand-in
(py-lmdb, fsync as the agent with --sync) holds the state env's writer mutex in its heartbeat
transaction; our client, in a worker process of its own, sees it held by the agent's main thread
after the post and counts commands proven by it. A command the stand-in dies of is never reported
done. The client's debug log names the signal of each proof ("survival proven ... (by the writer
lock)"), which is what is counted here.

--beat-hold keeps each heartbeat transaction open 5 ms, as a slow disk's commit does (the real
agent's lasts about 0.3 ms on disk, 5-10 us on tmpfs), so that the mutex is seen held, not only its
commit (the next signal)."""
import os
import re
import subprocess
import sys

from conftest import ROOT, library_path, unique_rank

WORKER = r"""
import logging, pickle, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(message)s")
sys.path.insert(0, sys.argv[1])
from etha_tensor_bus.bootstrap import bootstrap_client
client, info = bootstrap_client(cuda_mode="skip")
client.init_pair("p", "a", "b", 1)
handler = client.register_tensors("b", [(pickle.dumps(b"\x01\x02", 3), "p")])
rounds = int(sys.argv[2])
try:
    for _ in range(rounds):
        assert client.query_transfer_signal("b") is False
    print("ok")
except Exception as e:
    print(type(e).__name__, e)
client.close()
"""


def run_worker(rank, rounds):
    env = dict(os.environ, AGENT_RANK=str(rank), RANK="0", ETB_LIBRARY_PATH=library_path(),
               ETB_LOG="etb_core::client=debug")
    env.pop("AGENT_RANK_OFFSET", None)
    out = subprocess.run([sys.executable, "-c", WORKER, str(ROOT / "python"), str(rounds)], env=env,
                         capture_output=True, text=True, timeout=120)
    proofs = re.findall(r"survival proven [0-9.]+ us after the post \(by ([a-z ]+)\)", out.stderr)
    return out, proofs


def test_the_pylmdb_agents_writer_lock_proves_commands(python_agent):
    rank = unique_rank()
    python_agent(rank, "--sync", "--beat-hold", "0.005")
    out, proofs = run_worker(rank, 20)
    assert out.stdout.strip() == "ok", out.stdout + out.stderr[-3000:]
    # InitPair, RegisterTensors and the 20 QueryStatus, each proven once.
    assert len(proofs) == 22, out.stderr[-3000:]
    assert proofs.count("the writer lock") > 0, proofs


def test_a_command_the_pylmdb_agent_dies_of_is_not_done(python_agent):
    rank = unique_rank()
    agent = python_agent(rank, "--sync", "--beat-hold", "0.005", "--fail-on", "QueryStatus", "--fail-delay", "0.3")
    out, proofs = run_worker(rank, 1)
    assert out.stdout.startswith("TensorBusAgentDiedError") or "AGENT_DIED" in out.stdout, out.stdout + out.stderr
    assert len(proofs) == 2, (proofs, out.stderr[-3000:])  # InitPair and RegisterTensors only
    assert agent.proc.wait(timeout=10) == 3
