"""Load: 64 worker processes bootstrapping at once against 8 agents; 100,000 commands from 8
producer processes through one queue on /dev/shm with the Python stand-in agent consuming: none
lost, each producer's order kept, no semaphore left. ETB_LOAD_COMMANDS changes the count (the soak,
tests/load/soak.sh, runs 1,000,000)."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

from conftest import remove_worker_lock, HERE, ROOT, library_path, unique_rank

DEV_AGENT = os.environ.get("ETB_DEV_AGENT") or str(ROOT / "target" / "debug" / "etb-dev-agent")

WORKER = r"""
import ctypes, json, os, sys
sys.path.insert(0, sys.argv[2])
from conftest import BootstrapOptions, load_library
lib = load_library()
o = BootstrapOptions()
lib.etb_bootstrap_options_init(ctypes.byref(o))
o.allow_shared_agent, o.connection_timeout_s, o.cuda_mode = 1, 60.0, 2
from conftest import NAMING_FN
if os.environ.get("ETB_LOAD_CQ"):
    def naming(rank, cq, cq_cap, st, st_cap, ud):
        for v, b in ((os.environ["ETB_LOAD_CQ"], cq), (os.environ["ETB_LOAD_ST"], st)):
            d = v.encode() + b"\0"
            ctypes.memmove(b, d, len(d))
        return 0
    keep = NAMING_FN(naming)
    o.path_naming_fn = keep
c, i = ctypes.c_void_p(), ctypes.c_void_p()
rc = lib.etb_bootstrap_client_ex(ctypes.byref(o), ctypes.byref(c), ctypes.byref(i))
print(json.dumps({"rc": rc, "pid": lib.etb_info_agent_pid(i) if rc == 0 else -1,
                  "error": lib.etb_last_error_message().decode()}), flush=True)
if sys.argv[1] == "produce":
    k, n = int(sys.argv[3]), int(sys.argv[4])
    # Detached CleanupBatches of batches nobody registered: the agent survives them.
    send = lib.etb_client_cleanup_batch_detached
    for i_ in range(n):
        s = send(c, f"p{k}-{i_}".encode(), 60.0)
        if s != 0:
            print(json.dumps({"failed_at": i_, "error": lib.etb_last_error_message().decode()}), flush=True)
            sys.exit(1)
    print(json.dumps({"done": n}), flush=True)
else:
    sys.stdin.readline()
lib.etb_client_close(c)
"""


def spawn_worker(mode, env, *args):
    return subprocess.Popen([sys.executable, "-c", WORKER, mode, str(HERE), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=dict(env, ETB_LIBRARY_PATH=library_path()))


def test_64_workers_bootstrap_at_once_against_8_agents():
    agents = []
    try:
        for _ in range(8):
            rank = unique_rank()
            p = subprocess.Popen([DEV_AGENT, "--rank", str(rank), "--die-with-parent", "--exit-after", "300"],
                                 stdout=subprocess.PIPE, text=True)
            assert p.stdout.readline().startswith("ready")
            agents.append((rank, p))
        t0 = time.monotonic()
        workers = [(rank, p.pid, spawn_worker("hold", dict(os.environ, AGENT_RANK=str(rank), RANK="0")))
                   for rank, p in agents for _ in range(8)]
        results = [(pid, json.loads(w.stdout.readline())) for _, pid, w in workers]
        took = time.monotonic() - t0
        failures = [r for _, r in results if r["rc"] != 0]
        assert failures == [], failures[:3]
        assert all(r["pid"] == pid for pid, r in results), "every worker found its own agent"
        for _, _, w in workers:
            w.stdin.write("\n")
            w.stdin.flush()
        assert all(w.wait(timeout=60) == 0 for _, _, w in workers)
        print(f"64 workers on 8 agents bootstrapped in {took:.2f} s")
    finally:
        for rank, p in agents:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=30)
            p.stdout.close()
            remove_worker_lock(f"/tmp/agent_rank{rank}_state.lmdb")


def test_100k_commands_from_8_producers_through_one_queue():
    total = int(os.environ.get("ETB_LOAD_COMMANDS", "100000"))
    per = total // 8
    shm = tempfile.mkdtemp(prefix="etb-test-load-", dir="/dev/shm")
    record = os.path.join(shm, "record.jsonl")
    rank = unique_rank()
    cq, st = f"{shm}/load_{rank}_command.lmdb", f"{shm}/load_{rank}_state.lmdb"
    agent = subprocess.Popen([sys.executable, str(HERE / "standin_agent.py"), "--command-queue", cq, "--state", st,
                              "--record", record, "--exit-after", "3600"], stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout.readline().startswith("ready")
        # The workers name the queue on /dev/shm with a naming callback fed by ETB_LOAD_CQ/ST.
        env = dict(os.environ, AGENT_RANK=str(rank), RANK="0", ETB_LOAD_CQ=cq, ETB_LOAD_ST=st)
        t0 = time.monotonic()
        producers = [spawn_worker("produce", env, str(k), str(per)) for k in range(8)]
        outs = []
        for p in producers:
            lines = [json.loads(l) for l in p.communicate(timeout=3600)[0].splitlines() if l.strip()]
            outs.append(lines)
            assert p.returncode == 0, lines
        enqueued = time.monotonic() - t0
        assert all(o[0]["rc"] == 0 and o[-1] == {"done": per} for o in outs), outs[:2]
        # Wait until the agent has consumed everything.
        deadline = time.monotonic() + 3600
        while True:
            agent.send_signal(signal.SIGUSR1)
            status = agent.stdout.readline()
            head = int(status.split("head=")[1].split()[0])
            if head >= 8 * per or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        consumed = time.monotonic() - t0
        next_i = [0] * 8
        count = 0
        with open(record, "rb") as f:
            for line in f:
                batch = json.loads(line)["batch_id"]
                k, i = map(int, batch[1:].split("-"))
                assert i == next_i[k], f"producer {k}: got {i}, expected {next_i[k]}"
                next_i[k] += 1
                count += 1
        assert count == 8 * per and next_i == [per] * 8, (count, next_i)
        left = [n for n in os.listdir("/dev/shm") if n.startswith("sem.command_")
                and any(f"_{p.pid}_" in n for p in producers)]
        assert left == []
        print(f"{count} commands: enqueued in {enqueued:.2f} s ({count / enqueued:,.0f}/s), consumed in {consumed:.2f} s")
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=60)
        agent.stdout.close()
        subprocess.run(["rm", "-rf", shm])
