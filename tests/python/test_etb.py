"""The node tool `etb` (status, doctor, gc) against stand-in agents: the Rust one (etb-dev-agent)
and the Python one (py-lmdb, msgspec, posix_ipc), default naming and job templates."""
import ctypes
import hashlib
import json
import os
import pathlib
import signal
import stat
import subprocess
import sys
import time

import posix_ipc
import pytest

from conftest import ROOT, Agent, unique_rank

sys.path.insert(0, os.path.dirname(__file__))
import standin_agent  # noqa: E402

TARGET = ROOT / os.environ.get("CARGO_TARGET_DIR", "target") / "debug"
ETB = os.environ.get("ETB_CLI", str(TARGET / "etb"))
DEV_AGENT = os.environ.get("ETB_DEV_AGENT", str(TARGET / "etb-dev-agent"))
KEYS = {"rank", "state_path", "command_queue_path", "agent_pid", "agent_alive", "heartbeat_age_s", "queue_depth",
        "worker_pid", "problems"}
STEPS = ["environment", "paths", "state_file", "trust", "heartbeat", "queue", "worker_lock", "ptrace", "cuda"]
P = ctypes.c_void_p
OK = 0


def etb(*args, env=None, timeout=30):
    return subprocess.run([ETB, *args], capture_output=True, text=True, timeout=timeout, env=env)


def etb_json(*args, env=None):
    out = etb(*args, "--json", env=env)
    assert out.returncode in (0, 1), out
    return json.loads(out.stdout)


def by_rank(doc, rank):
    found = [a for a in doc["agents"] if a["rank"] == rank]
    assert len(found) == 1, (rank, doc)
    return found[0]


@pytest.fixture
def agents(tmp_path):
    """Starts stand-in agents: kind "rust" or "python", default naming (rank) or a template."""
    made = []

    def start(kind, rank, *extra, template=None):
        if template:
            cq, st = template[1].replace("{rank}", str(rank)), template[0].replace("{rank}", str(rank))
        else:
            cq, st = standin_agent.default_paths(rank)
        where = ["--command-queue", cq, "--state", st]
        if kind == "rust":
            argv = [DEV_AGENT, *where, "--exit-after", "120", "--die-with-parent", *extra]
        else:
            argv = [sys.executable, str(pathlib.Path(__file__).parent / "standin_agent.py"), *where,
                    "--exit-after", "120", *extra]
        made.append(Agent(argv, (cq, st)))
        return made[-1]

    yield start
    for a in made:
        a.stop()
        standin_agent.clean_stale(*a.paths)


def template_in(folder):
    return (f"{folder}/job_{{rank}}_state.lmdb", f"{folder}/job_{{rank}}_command.lmdb")


def test_status_reports_every_agent_with_the_pinned_keys(agents, tmp_path, lib, monkeypatch):
    r1, r2 = unique_rank(), unique_rank()
    rust = agents("rust", r1, "--no-dequeue")
    py = agents("python", r2)
    # Three commands nobody consumes: the Rust agent's queue depth.
    monkeypatch.setenv("AGENT_RANK", str(r1))
    monkeypatch.setenv("RANK", "0")
    client, info = P(), P()
    assert lib.etb_bootstrap_client(ctypes.cast(None, lib.etb_bootstrap_client.argtypes[0]), None, 10.0,
                                    ctypes.byref(client), ctypes.byref(info)) == OK
    lib.etb_info_free(info)
    try:
        for i in range(3):
            assert lib.etb_client_cleanup_batch_detached(client, f"d{i}".encode(), 5.0) == OK
        doc = etb_json("status")
        a, b = by_rank(doc, r1), by_rank(doc, r2)
        for agent in (a, b):
            assert set(agent) == KEYS, agent
            assert agent["agent_alive"] is True and agent["problems"] == [] or agent["problems"] == [
                "world_readable_queue"], agent
            assert 0 <= agent["heartbeat_age_s"] < 5, agent
        assert (a["agent_pid"], b["agent_pid"]) == (rust.pid, py.pid)
        assert a["state_path"] == f"/tmp/agent_rank{r1}_state.lmdb"
        assert a["command_queue_path"] == f"/tmp/agent_rank{r1}_command.lmdb"
        assert a["queue_depth"] == 3 and b["queue_depth"] == 0
        assert a["worker_pid"] == os.getpid(), "our client holds the worker lock"
        assert b["worker_pid"] is None
        # py-lmdb creates the queue 0644: readable by every user.
        assert "world_readable_queue" in b["problems"]
        human = etb("status")
        assert human.returncode == 0
        lines = [l for l in human.stdout.splitlines() if l.startswith((str(r1) + " ", str(r2) + " "))]
        assert len(lines) == 2 and str(rust.pid) in lines[0] and str(py.pid) in lines[1], human.stdout
        assert human.stdout.splitlines()[0].split()[:3] == ["RANK", "AGENT", "PID"]
    finally:
        lib.etb_client_close(client)


def test_status_with_templates_and_a_killed_agent(agents, tmp_path):
    tpl = template_in(tmp_path)
    r1, r2 = 3, 4
    live = agents("python", r1, template=tpl)
    dead = agents("rust", r2, template=tpl)
    os.kill(dead.pid, signal.SIGKILL)
    dead.proc.wait()
    doc = etb_json("status", "--state", tpl[0], "--queue", tpl[1])
    assert [a["rank"] for a in doc["agents"]] == [3, 4]
    a, b = doc["agents"]
    assert a["agent_pid"] == live.pid and a["agent_alive"] is True
    assert b["agent_pid"] is None and b["agent_alive"] is False and "agent_dead" in b["problems"], b
    assert b["state_path"] == str(tmp_path / "job_4_state.lmdb")
    # Only both templates or neither; a template without {rank} is a usage error.
    assert etb("status", "--state", tpl[0]).returncode == 2
    assert etb("status", "--state", "/x/state", "--queue", tpl[1]).returncode == 2
    assert etb("status", "--frobnicate").returncode == 2


def _hostile(folder):
    """Hostile state files for ranks 0..; returns the ranks and a fingerprint function."""
    files = {
        0: b"",
        1: os.urandom(8192),
        2: b"\x00" * 4096 * 2,
        3: (b"\xde\xc0\xef\xbe" * 2048),
    }
    for rank, data in files.items():
        (folder / f"job_{rank}_state.lmdb").write_bytes(data)
        (folder / f"job_{rank}_command.lmdb").write_bytes(data)
    os.chmod(folder / "job_1_state.lmdb", 0o666)  # writable by others: untrusted
    os.mkfifo(folder / "job_5_state.lmdb")
    os.mkdir(folder / "job_6_state.lmdb")
    os.symlink("/etc/passwd", folder / "job_7_state.lmdb")
    (folder / "job_8_state.lmdb").write_bytes(b"x")
    os.symlink("/dev/zero", folder / "job_8_command.lmdb")

    def fingerprint():
        out = {}
        for p in sorted(folder.iterdir()):
            st = os.lstat(p)
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
            out[p.name] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mode, digest)
        return out

    return [0, 1, 2, 3, 5, 6, 7, 8], fingerprint


def test_hostile_files_are_refused_unmodified(tmp_path):
    ranks, fingerprint = _hostile(tmp_path)
    before = fingerprint()
    tpl = template_in(tmp_path)
    t0 = time.monotonic()
    doc = etb_json("status", "--state", tpl[0], "--queue", tpl[1])
    assert time.monotonic() - t0 < 10, "a hang"
    assert [a["rank"] for a in doc["agents"]] == ranks
    for a in doc["agents"]:
        assert set(a) == KEYS
        assert a["heartbeat_age_s"] is None and a["queue_depth"] is None, a
        assert a["problems"], a
    assert "untrusted_file" in by_rank(doc, 1)["problems"]
    assert "untrusted_file" in by_rank(doc, 7)["problems"], "a symlink is refused"
    assert "not_lmdb" in by_rank(doc, 0)["problems"]
    assert fingerprint() == before, "etb status modified or created a file"
    assert etb("doctor", "--state", tpl[0], "--queue", tpl[1], env=dict(os.environ, AGENT_RANK="5", RANK="0"),
               timeout=10).returncode == 1


def _env(**kw):
    env = {k: v for k, v in os.environ.items() if k not in ("AGENT_RANK", "RANK", "AGENT_RANK_OFFSET", "LOCAL_RANK")}
    env.update({k: str(v) for k, v in kw.items()})
    return env


def _doctor(*args, **env):
    out = etb("doctor", "--json", *args, env=_env(**env))
    doc = json.loads(out.stdout)
    assert set(doc) == {"ok", "agent_rank", "steps"}
    for s in doc["steps"]:
        assert set(s) == {"name", "ok", "message"}
    assert [s["name"] for s in doc["steps"]] == STEPS[:len(doc["steps"])], doc
    return out.returncode, doc


def test_doctor_passes_a_good_environment(agents):
    rank = unique_rank()
    a = agents("rust", rank)
    code, doc = _doctor(AGENT_RANK=rank, RANK=0, LOCAL_RANK=1)
    assert code == 0 and doc["ok"] is True and doc["agent_rank"] == rank, doc
    assert [s["name"] for s in doc["steps"]] == STEPS
    assert all(s["ok"] for s in doc["steps"])
    assert f"pid {a.pid}" in doc["steps"][7]["message"], "ptrace says whom it would authorize"
    assert "cuda:1" in doc["steps"][8]["message"]
    human = etb("doctor", env=_env(AGENT_RANK=rank, RANK=0))
    assert human.returncode == 0 and "a bootstrap would succeed now" in human.stdout


def _failing_step(doc):
    assert doc["ok"] is False and not doc["steps"][-1]["ok"], doc
    return doc["steps"][-1]["name"], doc["steps"][-1]["message"]


def test_doctor_names_each_broken_step(agents, tmp_path, lib, monkeypatch):
    tpl = template_in(tmp_path)
    # environment
    code, doc = _doctor(AGENT_RANK=1)
    assert code == 1 and _failing_step(doc)[0] == "environment" and "RANK is not set" in _failing_step(doc)[1]
    assert "also when AGENT_RANK is set" in _failing_step(doc)[1] and "as well" not in _failing_step(doc)[1], doc
    # paths: both templates give one file
    code, doc = _doctor("--state", tpl[0], "--queue", tpl[0], AGENT_RANK=1, RANK=0)
    assert code == 1 and _failing_step(doc)[0] == "paths"
    # state_file: nobody there
    code, doc = _doctor("--state", tpl[0], "--queue", tpl[1], AGENT_RANK=1, RANK=0)
    assert code == 1 and _failing_step(doc) [0] == "state_file" and "not found" in _failing_step(doc)[1]
    assert f"No other agent's state file is in {tmp_path} either" in _failing_step(doc)[1], "the templates are scanned"
    # trust: the state file writable by everyone
    agents("python", 2, template=tpl)
    os.chmod(tmp_path / "job_2_state.lmdb", 0o666)
    code, doc = _doctor("--state", tpl[0], "--queue", tpl[1], AGENT_RANK=2, RANK=0)
    assert code == 1 and _failing_step(doc) == ("trust", _failing_step(doc)[1]) and "writable by every user" in _failing_step(doc)[1]
    # heartbeat: alive but 30 s behind
    agents("rust", 3, "--heartbeat-offset", "30", template=tpl)
    code, doc = _doctor("--state", tpl[0], "--queue", tpl[1], AGENT_RANK=3, RANK=0)
    assert code == 1 and _failing_step(doc)[0] == "heartbeat" and "too old" in _failing_step(doc)[1], doc
    # queue: an agent that made none
    agents("rust", 4, "--no-queue", template=tpl)
    code, doc = _doctor("--state", tpl[0], "--queue", tpl[1], AGENT_RANK=4, RANK=0)
    assert code == 1 and _failing_step(doc)[0] == "queue" and "not found" in _failing_step(doc)[1], doc
    # worker_lock: this process is attached to agent 5
    agents("rust", 5, template=tpl)
    naming_env = {"AGENT_RANK": "5", "RANK": "0"}
    for k, v in naming_env.items():
        monkeypatch.setenv(k, v)
    paths = (str(tmp_path / "job_5_command.lmdb").encode(), str(tmp_path / "job_5_state.lmdb").encode())

    @lib.etb_bootstrap_client.argtypes[0]
    def naming(rank, cq, cq_cap, st, st_cap, _user):
        ctypes.memmove(cq, paths[0], len(paths[0]))
        ctypes.memmove(st, paths[1], len(paths[1]))
        return 0

    client, info = P(), P()
    assert lib.etb_bootstrap_client(naming, None, 10.0, ctypes.byref(client), ctypes.byref(info)) == OK
    lib.etb_info_free(info)
    try:
        code, doc = _doctor("--state", tpl[0], "--queue", tpl[1], AGENT_RANK=5, RANK=0)
        assert code == 1 and _failing_step(doc)[0] == "worker_lock", doc
        assert f"pid {os.getpid()}" in _failing_step(doc)[1]
    finally:
        lib.etb_client_close(client)


def _expand(ranges):
    out = set()
    for part in ranges.split(", "):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def test_doctor_with_a_wrong_offset_names_the_agents_found(agents):
    base = unique_rank()
    agents("rust", base + 100)
    agents("python", base + 101)
    code, doc = _doctor(RANK=base - 50)
    name, message = _failing_step(doc)
    assert code == 1 and name == "state_file", doc
    listed = message.split("agents found in /tmp: ranks ")[1].split(" (")[0].split(":")[0].rstrip(".")
    assert {base + 100, base + 101} <= _expand(listed), message


def test_doctor_with_templates_lists_the_agents_under_them_and_marks_the_dead(agents, tmp_path):
    tpl = template_in(tmp_path)
    agents("rust", 4, template=tpl)
    agents("python", 5, template=tpl)
    dead = agents("rust", 6, template=tpl)
    os.kill(dead.pid, signal.SIGKILL)
    dead.proc.wait()
    # RANK 1 without its offset: agent 1 is not there; 4 and 5 live, 6 is gone; offset 4 finds 5.
    code, doc = _doctor("--state", tpl[0], "--queue", tpl[1], RANK=1)
    name, message = _failing_step(doc)
    assert code == 1 and name == "state_file", doc
    assert f"agents found in {tmp_path}: ranks 4-6 (rank 6 gone, their files left" in message, message
    assert message.endswith(": is AGENT_RANK_OFFSET=4 missing?"), message
    # RANK 2: offset 4 would name the dead agent 6: no offset is offered.
    code, doc = _doctor("--state", tpl[0], "--queue", tpl[1], RANK=2)
    assert "AGENT_RANK_OFFSET=4" not in _failing_step(doc)[1], doc


def test_doctor_and_status_agree_on_a_just_killed_agent(agents):
    """The one verdict: right after a SIGKILL the heartbeat still looks fresh, but nobody holds
    the state LMDB's lock: status says agent_dead, the doctor fails at heartbeat with bootstrap's
    own "gone" message, in the same instant."""
    rank = unique_rank()
    a = agents("rust", rank)
    code, doc = _doctor(AGENT_RANK=rank, RANK=0)
    assert code == 0, doc
    os.kill(a.pid, signal.SIGKILL)
    a.proc.wait()
    status = by_rank(etb_json("status"), rank)
    code, doc = _doctor(AGENT_RANK=rank, RANK=0)
    assert status["agent_alive"] is False and "agent_dead" in status["problems"], status
    assert status["heartbeat_age_s"] < 5.0, "the heartbeat still looks fresh"
    name, message = _failing_step(doc)
    assert code == 1 and name == "heartbeat" and "is gone" in message and "nobody writes it any more" in message, doc
    human = etb("status")
    assert "agent_dead (rank" in human.stdout and "etb gc --dead-agents" in human.stdout, human.stdout


def test_gc_dead_agents_removes_only_what_dead_agents_left(agents, tmp_path):
    tpl = template_in(tmp_path)
    live = agents("rust", 1, template=tpl)
    dead = agents("python", 2, template=tpl)
    worker_lock = tmp_path / ".job_2_state.lmdb.worker"
    worker_lock.write_bytes(b"")
    os.kill(dead.pid, signal.SIGKILL)
    dead.proc.wait()
    files = [tmp_path / f for f in ("job_2_state.lmdb", "job_2_state.lmdb-lock", "job_2_command.lmdb",
                                    "job_2_command.lmdb-lock")]
    sems = ["/cq_job_2_command", "/cq_space_job_2_command", "/cq_ready_job_2_command"]
    assert all(f.exists() for f in files) and all(_exists(n) for n in sems)
    doc = etb_json("gc", "--dead-agents", "--state", tpl[0], "--queue", tpl[1], "--dry-run")
    removed = doc["dead_agents"]["removed"]
    assert [r["rank"] for r in removed] == [2], doc
    assert set(removed[0]["removed"]) == {str(f) for f in files} | set(sems), doc
    assert all(f.exists() for f in files), "--dry-run removes nothing"
    doc = etb_json("gc", "--dead-agents", "--state", tpl[0], "--queue", tpl[1])
    assert [r["rank"] for r in doc["dead_agents"]["removed"]] == [2], doc
    assert not any(f.exists() for f in files) and not any(_exists(n) for n in sems)
    assert worker_lock.exists(), "a worker lock file is never removed"
    assert live.proc.poll() is None and (tmp_path / "job_1_state.lmdb").exists(), "the live agent's files stay"
    assert by_rank(etb_json("status", "--state", tpl[0], "--queue", tpl[1]), 1)["agent_alive"] is True
    # Without the flag, nothing of agents is touched.
    assert "dead_agents" not in etb_json("gc", "--dry-run")


def test_help_goes_to_stdout_and_names_what_gc_removes():
    out = etb("gc", "--help")
    assert out.returncode == 0 and out.stderr == "", out
    for part in ("completion semaphores", "reference-counter", "--dead-agents", "-lock", "/cq_ready_{stem}",
                 "Never a worker lock file"):
        assert part in out.stdout, (part, out.stdout)
    agent = subprocess.run([DEV_AGENT, "--help"], capture_output=True, text=True, timeout=10)
    assert agent.returncode == 0 and agent.stdout.startswith("usage: etb-dev-agent") and "--lenient" in agent.stdout


def _sem_name(pid, tag):
    return f"/command_transfer_batch_gc{tag}_{pid}_{os.urandom(16).hex()}"


def _leak(tag):
    """A process that creates a reference-form completion semaphore and exits, as the reference
    worker client leaks them."""
    code = ("import os, posix_ipc, sys; n = sys.argv[1].replace('PID', str(os.getpid())); "
            "posix_ipc.Semaphore(n, posix_ipc.O_CREX, mode=0o600).close(); print(n)")
    out = subprocess.run([sys.executable, "-c", code, _sem_name("PID", tag)], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _exists(name):
    return os.path.exists("/dev/shm/sem." + name[1:])


def test_gc_removes_only_dead_workers_semaphores(tmp_path):
    tag = str(os.getpid())
    dead = [_leak(tag) for _ in range(3)]
    live = _sem_name(os.getpid(), tag)  # ours: this process lives
    posix_ipc.Semaphore(live, posix_ipc.O_CREX, mode=0o600).close()
    # A process that maps one whose pid in the name is dead (a worker in another pid namespace).
    mapped = dead.pop()
    holder = subprocess.Popen([sys.executable, "-c",
                               "import posix_ipc, sys, time; s = posix_ipc.Semaphore(sys.argv[1]); print('ok', flush=True); time.sleep(60)",
                               mapped], stdout=subprocess.PIPE, text=True)
    queue_sem = f"/cq_gc_test_{tag}_command"
    posix_ipc.Semaphore(queue_sem, posix_ipc.O_CREX, mode=0o600).close()
    foreign = _leak(tag)
    # A native worker that died holding payloads leaves its reference-counter file.
    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                              check=True).stdout.strip()
    rc_file = f"/dev/shm/etb_rc_{dead_pid}_0"
    pathlib.Path(rc_file).write_bytes(bytes(80064))
    try:
        assert holder.stdout.readline().strip() == "ok"
        # As an unprivileged user: root's semaphores are another user's, kept and counted.
        if os.geteuid() == 0 and os.path.exists("/usr/bin/setpriv"):
            out = subprocess.run(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", ETB, "gc",
                                  "--json"], capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out
            doc = json.loads(out.stdout)
            assert foreign not in doc["removed"] and doc["skipped_foreign"] >= 1, doc
            assert _exists(foreign)
        # --dry-run lists without removing.
        doc = etb_json("gc", "--dry-run")
        assert set(doc) == {"removed", "kept_live", "skipped_foreign"}
        assert set(dead) <= set(doc["removed"]) and all(_exists(n) for n in dead), doc
        doc = etb_json("gc")
        assert set(dead) <= set(doc["removed"]), doc
        assert not any(_exists(n) for n in dead)
        assert live not in doc["removed"] and _exists(live), "a live process's semaphore was removed"
        assert mapped not in doc["removed"] and _exists(mapped), "a mapped semaphore was removed"
        assert doc["kept_live"] >= 2
        assert _exists(queue_sem), "a queue semaphore was touched"
        assert f"/etb_rc_{dead_pid}_0" in doc["removed"] and not os.path.exists(rc_file), doc
    finally:
        if os.path.exists(rc_file):
            os.remove(rc_file)
        holder.kill()
        holder.wait()
        for n in [live, mapped, queue_sem, foreign, *dead]:
            try:
                posix_ipc.unlink_semaphore(n)
            except posix_ipc.ExistentialError:
                pass


def test_bootstrap_names_the_agents_found_elsewhere(agents, lib, monkeypatch):
    base = unique_rank()
    agents("rust", base + 100)
    monkeypatch.delenv("AGENT_RANK", raising=False)
    monkeypatch.setenv("RANK", str(base))
    monkeypatch.delenv("AGENT_RANK_OFFSET", raising=False)
    client, info = P(), P()
    status = lib.etb_bootstrap_client(ctypes.cast(None, lib.etb_bootstrap_client.argtypes[0]), None, 0.05,
                                      ctypes.byref(client), ctypes.byref(info))
    message = lib.etb_last_error_message().decode()
    assert status == 5, message  # ETB_ERR_AGENT_NOT_FOUND
    listed = message.split("agents found in /tmp: ranks ")[1].split(" (")[0].split(":")[0].rstrip(".")
    assert base + 100 in _expand(listed), message


def test_output_into_a_reader_that_goes_early_ends_quietly():
    # `etb doctor | head -1`: the reader closes the pipe early; etb must end as Unix tools
    # do (killed by SIGPIPE, or exit), never panic with a backtrace on stderr.
    env = dict(os.environ, AGENT_RANK="5", RANK="0")
    env.pop("AGENT_RANK_OFFSET", None)
    for args in (["doctor"], ["--help"], ["status"]):
        r, w = os.pipe()
        p = subprocess.Popen([ETB, *args], stdout=w, stderr=subprocess.PIPE, env=env)
        os.close(w)
        os.close(r)  # the reader has gone before etb writes: its first write meets EPIPE
        _, err = p.communicate(timeout=30)
        assert b"panicked" not in err and b"Broken pipe" not in err, (args, err.decode())
        assert p.returncode in (0, 1, -signal.SIGPIPE), (args, p.returncode, err.decode())
