#!/usr/bin/env python3
"""Runs every benchmark figure side by side and reports ratios (see bench/README.md).
Called by bench/run.sh, which builds what it runs."""
import argparse
import json
import os
import pathlib
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import posix_ipc

ROOT = pathlib.Path(__file__).resolve().parent.parent
AGENT = [sys.executable, str(ROOT / "tests" / "python" / "standin_agent.py")]
REF = [sys.executable, str(ROOT / "bench" / "reference_client.py")]
OURS = str(ROOT / "build" / "bench" / "ours")
_rank = [os.getpid() * 1000]  # pid * 1000 + k, as every test's ranks (tests/leak_check.py)


class Agent:
    """The Python stand-in agent (py-lmdb, posix_ipc, msgspec), committing with fsync as the real
    agent does, for one fresh rank under `root`."""

    def __init__(self, root, *extra):
        _rank[0] += 1
        self.rank = _rank[0]
        self.cq = f"{root}/bench_rank{self.rank}_command.lmdb"
        self.st = f"{root}/bench_rank{self.rank}_state.lmdb"
        self.proc = subprocess.Popen([*AGENT, "--command-queue", self.cq, "--state", self.st, "--sync", *extra],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("ready"), line
        self.beat = line.split("beat=")[1].strip()

    def env(self, root):
        return dict(os.environ, AGENT_RANK=str(self.rank), RANK="0", ETB_BENCH_ROOT=root)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.proc.stdout.close()
        stem = pathlib.PurePath(self.cq).stem
        for name in (f"/cq_{stem}", f"/cq_space_{stem}", f"/cq_ready_{stem}"):
            try:
                posix_ipc.unlink_semaphore(name)
            except posix_ipc.ExistentialError:
                pass
        for p in pathlib.Path(self.cq).parent.glob(f"bench_rank{self.rank}_*"):
            p.unlink()


def remove_completions(pid):
    """The reference algorithm never unlinks its completion semaphores (and posix_ipc's agent
    cannot): remove what a benchmark process left."""
    for n in os.listdir("/dev/shm"):
        if n.startswith("sem.command_") and f"_{pid}_" in n:
            try:
                os.unlink(f"/dev/shm/{n}")
            except FileNotFoundError:
                pass


def register(pid):
    """Puts a process of this benchmark run in the test run's ledger, when the test suite runs it
    (tests/leak_check.py: its names are then checked for leaks)."""
    ledger = os.environ.get("ETB_TEST_LEDGER")
    if ledger:
        with open(ledger, "a") as f:
            f.write(f"{pid}\n")


def run_captured(argv, env, timeout=1200):
    """subprocess.run(capture_output=True, text=True), with the child registered."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    register(proc.pid)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def run_json(argv, env, stdin=None):
    proc = run_captured(argv, env)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def with_agent(root, extra, fn):
    agent = Agent(root, *extra)
    try:
        return fn(agent)
    finally:
        agent.stop()


def summary(values, unit):
    v = sorted(values)
    n = len(v)
    return {"n": n, "median": statistics.median(v), "p10": v[n // 10], "p90": v[min(n - 1, (n * 9) // 10)], "unit": unit}


def connect_latency(root, argv_for, runs):
    """Worker first, then the agent: first heartbeat -> bootstrap's return."""
    out = []
    for _ in range(runs):
        proc = subprocess.Popen(argv_for(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env=dict(os.environ, AGENT_RANK=str(_rank[0] + 1), RANK="0", ETB_BENCH_ROOT=root))
        register(proc.pid)
        assert proc.stdout.readline().strip() == "waiting"
        time.sleep(0.05)
        agent = Agent(root)
        try:
            proc.stdin.write(agent.beat + "\n")
            proc.stdin.flush()
            result = json.loads(proc.stdout.readline())
            proc.wait(timeout=60)
            out.append(result["latency_s"] * 1e3)
        finally:
            agent.stop()
    return summary(out, "ms")


def main():
    register(os.getpid())
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results.json"))
    ap.add_argument("--only", default="", help="a comma-separated list of sections (bootstrap, connect, enqueue, "
                    "issue, roundtrip, payloads, death, footprint, scaling); results.json is then not written")
    a = ap.parse_args()
    q = a.quick
    only = {x for x in a.only.split(",") if x}

    def want(section):
        return not only or section in only
    lib = pathlib.Path(a.target) / "libetha_tensor_bus.so"
    disk = tempfile.mkdtemp(prefix="etb-bench-", dir="/tmp")
    shm = tempfile.mkdtemp(prefix="etb-bench-", dir="/dev/shm")
    results = {"machine": {"cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                           "quick": q, "tmp_fs": subprocess.run(["df", "--output=fstype", "/tmp"], capture_output=True,
                                                                text=True).stdout.split()[-1]}}
    R = results
    try:
        if want('bootstrap'):
            # 1. Bootstrap, agent up.
            def bootstrap(agent):
                env = agent.env(disk)
                ours = run_json([OURS, "bootstrap", str(50 if q else 2000)], env)
                ctypes_code = ("import json,os,sys,time; sys.path.insert(0, sys.argv[1]); import etha_tensor_bus as e;"
                               "root=os.environ['ETB_BENCH_ROOT'];"
                               "name=lambda r: (f'{root}/bench_rank{r}_command.lmdb', f'{root}/bench_rank{r}_state.lmdb');"
                               "t=[]\nfor _ in range(int(sys.argv[2])):\n t0=time.perf_counter(); c,i=e.bootstrap_client(name);"
                               " t.append((time.perf_counter()-t0)*1e6); c.close()\n"
                               "t.sort(); n=len(t); print(json.dumps({'n':n,'median':t[n//2],'p10':t[n//10],'p90':t[(n*9)//10],'unit':'us'}))")
                via_ctypes = run_json([sys.executable, "-c", ctypes_code, str(ROOT / "python"), str(20 if q else 500)],
                                      dict(env, ETB_LIBRARY_PATH=str(lib)))
                ref = run_json([*REF, "bootstrap", agent.cq, agent.st, str(10 if q else 300)], env)
                floor = run_json([str(ROOT / "target" / "release" / "examples" / "bench-floor"), agent.cq, agent.st,
                                  str(50 if q else 2000)], env)
                return {"ours": ours, "ours_ctypes": via_ctypes, "reference": ref, "floor": floor}
            R["bootstrap"] = with_agent(disk, [], bootstrap)

        if want('connect'):
            # 2. Connect after agent start.
            runs = 3 if q else 20
            R["connect"] = {"ours": connect_latency(disk, lambda: [OURS, "connect"], runs),
                            "reference": connect_latency(disk, lambda: [*REF, "connect", f"{disk}/bench_rank{_rank[0] + 1}_command.lmdb",
                                                                        f"{disk}/bench_rank{_rank[0] + 1}_state.lmdb"], runs)}

        if want('enqueue'):
            # 3-4. Enqueue throughput, no consumer.
            def enqueue(root):
                ours = with_agent(root, ["--no-dequeue"], lambda ag: run_json([OURS, "enqueue", str(2000 if q else 40000)], ag.env(root)))
                ref = with_agent(root, ["--no-dequeue"], lambda ag: run_json([*REF, "enqueue", ag.cq, ag.st, str(200 if q else 4000)], ag.env(root)))
                return {"ours": ours, "reference": ref}
            R["enqueue_disk"] = enqueue(disk)
            R["enqueue_shm"] = enqueue(shm)

        if want('issue'):
            # 5. Issue with a completion (/tmp).
            def issue(agent):
                ours = run_json([OURS, "issue", str(200 if q else 5000)], agent.env(disk))
                return ours
            def issue_ref(agent):
                proc_env = agent.env(disk)
                out = run_json([*REF, "issue", agent.cq, agent.st, str(50 if q else 1000)], proc_env)
                return out
            R["issue"] = {"ours": with_agent(disk, ["--no-dequeue"], issue), "reference": with_agent(disk, ["--no-dequeue"], issue_ref)}

        if want('roundtrip'):
            # 6. Round trip against a consuming agent, with its files on disk and on tmpfs. Ours waits
            # for the proof that the agent survived the command (docs/protocol.md section 5: first
            # the agent's writer lock, then a commit, a new heartbeat or a later dequeue); its debug
            # log says how long each proof took after the post, and which sign proved it.
            def roundtrip_on(root):
                def roundtrip(agent):
                    env = dict(agent.env(root), ETB_LOG="etb_core::client=debug")
                    proc = run_captured([OURS, "roundtrip", str(50 if q else 500)], env)
                    if proc.returncode != 0:
                        raise RuntimeError(proc.stderr[-2000:])
                    ours = json.loads(proc.stdout.strip().splitlines()[-1])
                    proven = re.findall(r"survival proven ([0-9.]+) us after the post \(by ([a-z ]+)\)", proc.stderr)
                    ours["survival_check"] = summary([float(us) for us, _ in proven], "us")
                    ours["proven_by"] = {by: sum(1 for _, b in proven if b == by) for by in sorted({b for _, b in proven})}
                    ref_proc = run_captured([*REF, "roundtrip", agent.cq, agent.st, str(20 if q else 300)], agent.env(root))
                    return {"ours": ours, "reference": json.loads(ref_proc.stdout.strip().splitlines()[-1])}
                return with_agent(root, [], roundtrip)
            R["roundtrip"] = roundtrip_on(disk)
            R["roundtrip_shm"] = roundtrip_on(shm)

        if want('payloads'):
            # 6b. Native CUDA tensor payloads (the fake CUDA driver, quiet: no call log), fresh and of a
            # cached allocation, beside the floor of a Python worker: ForkingPickler.dumps of shared CPU
            # tensors with the agent's torch, in the same run.
            fake, torch_python = os.environ.get("ETB_BENCH_FAKE_CUDA"), os.environ.get("ETB_BENCH_TORCH_PYTHON")
            if fake and torch_python:
                count = 50 if q else 1000
                ours = with_agent(disk, [], lambda ag: run_json([OURS, "payloads", str(count)],
                                                                dict(ag.env(disk), ETB_CUDA_DRIVER_PATH=fake,
                                                                     FAKE_CUDA_QUIET="1")))
                dumps = run_json([torch_python, str(ROOT / "bench" / "torch_dumps.py"), str(count)], dict(os.environ))
                R["payloads"] = {"ours": ours, "torch_dumps": dumps}

        if want('death'):
            # 7. Agent death during a wait.
            deaths = []
            for i in range(2 if q else 10):
                agent = Agent(disk, "--never-ack", "Transfer")
                try:
                    proc = subprocess.Popen([OURS, "death"], stdout=subprocess.PIPE, text=True, env=agent.env(disk))
                    register(proc.pid)
                    assert proc.stdout.readline().strip() == "waiting"
                    time.sleep(0.1 + random.random() * 0.01)
                    killed = time.time()
                    agent.proc.send_signal(signal.SIGKILL)
                    result = json.loads(proc.stdout.readline())
                    proc.wait(timeout=60)
                    assert result["status"] == "ETB_ERR_AGENT_DIED", result
                    deaths.append((result["returned"] - killed) * 1e3)
                finally:
                    agent.stop()
            ref_timeout = 0.5 if q else 2.0
            agent = Agent(disk, "--never-ack", "Transfer")
            try:
                proc = subprocess.Popen([*REF, "death", agent.cq, agent.st, "1", str(ref_timeout)], stdout=subprocess.PIPE,
                                        text=True, env=agent.env(disk))
                register(proc.pid)
                assert proc.stdout.readline().strip() == "waiting"
                time.sleep(0.1)
                agent.proc.send_signal(signal.SIGKILL)
                killed_at = 0.1
                ref = json.loads(proc.stdout.readline())
                proc.wait(timeout=60)
                remove_completions(proc.pid)
            finally:
                agent.stop()
            R["death"] = {"ours": summary(deaths, "ms"),
                          "reference": {"n": 1, "median": (ref["waited_s"] - killed_at) * 1e3, "unit": "ms",
                                        "note": f"waits its whole timeout ({ref_timeout} s here, 30 s by default)"}}

        if want('footprint'):
            # 8. Footprint.
            R["footprint"] = with_agent(disk, [], lambda ag: run_json([str(ROOT / "build" / "bench" / "footprint"), str(lib)], ag.env(disk)))
            R["footprint"]["so_bytes"] = lib.stat().st_size

        if want('scaling'):
            # Scaling of enqueue with producer threads and processes (several clients of one agent).
            scaling = {"threads": {}, "processes": {}}
            n_total = 4000 if q else 40000
            for k in (1, 2, 4, 8):
                scaling["threads"][k] = with_agent(disk, ["--no-dequeue"], lambda ag: run_json([OURS, "enqueue", str(n_total), str(k)], ag.env(disk)))["per_s"]

                def procs(ag, k=k):
                    env = dict(ag.env(disk), ETB_BENCH_SHARE="1")
                    ps = [subprocess.Popen([OURS, "enqueue", str(n_total // k)], stdout=subprocess.PIPE, text=True, env=env) for _ in range(k)]
                    for p in ps:
                        register(p.pid)
                    outs = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in ps]
                    return sum(o["n"] for o in outs) / max(o["seconds"] for o in outs)
                scaling["processes"][k] = with_agent(disk, ["--no-dequeue"], procs)
            R["enqueue_scaling"] = scaling
    finally:
        remove_completions(os.getpid())
        for d in (disk, shm):
            subprocess.run(["rm", "-rf", d])
    report(R)
    if not q and not only:
        pathlib.Path(a.out).write_text(json.dumps(R, indent=1) + "\n")
        print(f"\nwritten: {a.out}")


def report(R):
    """The table: ours and the reference side by side, and the ratio ours / reference as a time
    (for a rate: their rate / ours), so lower is better for us."""
    rows = []

    def row(name, ours, ref, unit, target, rate=False, extra=""):
        ratio = ref / ours if rate else ours / ref
        rows.append((name, f"{ours:,.1f} {unit}", f"{ref:,.1f} {unit}", f"{ratio:,.2f}x", target, extra))

    if "bootstrap" in R:
        b = R["bootstrap"]
        row("bootstrap, agent up (median)", b["ours"]["median"], b["reference"]["median"], "us", "<= 0.5x; <= 1.25x floor",
            extra=f"floor {b['floor']['total_median']:.1f} us -> {b['ours']['median'] / b['floor']['total_median']:.2f}x floor; "
                  f"via ctypes {b['ours_ctypes']['median']:.1f} us")
    if "connect" in R:
        c = R["connect"]
        row("connect after agent start (median)", c["ours"]["median"], c["reference"]["median"], "ms", "<= 10 ms; <= 0.1x")
    for key, label, target in (("enqueue_disk", "enqueue, /tmp on disk", "<= 0.033x"), ("enqueue_shm", "enqueue, /dev/shm", "<= 0.33x")):
        if key in R:
            e = R[key]
            row(label, e["ours"]["per_s"], e["reference"]["per_s"], "cmd/s", target, rate=True)
    if "issue" in R:
        i = R["issue"]
        row("issue with a completion (median)", i["ours"]["median"], i["reference"]["median"], "us", "<= 0.1x")
    for key, label, target in (("roundtrip", "command round trip, /tmp (median)", "<= 0.75x; check <= 30 us"),
                               ("roundtrip_shm", "command round trip, /dev/shm", "<= 1.15x; check <= 30 us")):
        if key in R:
            r = R[key]
            share = r["ours"]["our_side_us"] / r["ours"]["median"] * 100
            sc = r["ours"]["survival_check"]
            by = ", ".join(f"{k} {v}" for k, v in r["ours"].get("proven_by", {}).items())
            row(label, r["ours"]["median"], r["reference"]["median"], "us", target,
                extra=f"survival check {sc['median']:.1f} us (p90 {sc['p90']:.1f}), proven by: {by}; "
                      f"our side {r['ours']['our_side_us']:.1f} us = {share:.1f}%")
    if "payloads" in R:
        pl, dumps = R["payloads"]["ours"], R["payloads"]["torch_dumps"]
        for key, label, target in (("cached", "cached handle", "<= 0.1x"), ("fresh", "fresh allocation", "report both")):
            row(f"CUDA tensor payload, {label}", pl[key]["us_each"], dumps["us_each"], "us", target,
                extra=f"(1024, 1024) bf16: ours {pl[key]['per_s']:,.0f}/s, {pl[key]['driver_calls_each']:g} driver "
                      f"calls each (fake driver: {pl['fake_driver_ns_per_call']:.0f} ns per call, "
                      f"{pl['fake_driver_lookup_ns']:.0f} ns per lookup); ForkingPickler.dumps "
                      f"of a shared CPU tensor {dumps['per_s']:,.0f}/s (torch {dumps['torch']})")
    if "death" in R:
        d = R["death"]
        row("agent death -> error (median)", d["ours"]["median"], d["reference"]["median"], "ms", "< 100 ms",
            extra=d["reference"]["note"])
    print(f"{'figure':38} {'ours':>16} {'reference':>16} {'ours/ref':>9}  {'target':26} notes")
    for name, ours, ref, ratio, target, extra in rows:
        print(f"{name:38} {ours:>16} {ref:>16} {ratio:>9}  {target:26} {extra}")
    if "footprint" in R:
        f = R["footprint"]
        print(f"footprint: +{f['load_kib']} KiB resident to load, +{f['bootstrap_kib']} KiB to bootstrap "
              f"(total {f['total_kib']} KiB; target < 2048); .so {f['so_bytes'] / 1024:.0f} KiB")
    if "bootstrap" in R:
        print("bootstrap floor parts (median us): "
              + ", ".join(f"{k} {v['median']:.1f}" for k, v in R["bootstrap"]["floor"]["parts"].items()))
    if "enqueue_scaling" in R:
        s = R["enqueue_scaling"]
        print("enqueue scaling, cmd/s: threads " + ", ".join(f"{k}: {v:,.0f}" for k, v in s["threads"].items())
              + "; processes " + ", ".join(f"{k}: {v:,.0f}" for k, v in s["processes"].items()))


if __name__ == "__main__":
    main()
