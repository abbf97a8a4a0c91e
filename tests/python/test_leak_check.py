"""The leak check sees only what the run made: a leak of one of the run's processes is caught,
another program's completion semaphore made meanwhile is ignored (tests/leak_check.py)."""
import os
import subprocess
import sys

import posix_ipc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import leak_check  # noqa: E402

LEAK = """
import os, posix_ipc, sys
ledger = sys.argv[1]
if ledger != "-":
    open(ledger, "a").write(f"{os.getpid()}\\n")
name = f"/command_transfer_batch_leaktest_send_{os.getpid()}_{os.urandom(16).hex()}"
posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode=0o600).close()
rank = os.getpid() * 1000 + 999
open(f"/tmp/agent_rank{rank}_state.lmdb", "w").close()
print(name, rank)
"""


def _run(ledger):
    out = subprocess.run([sys.executable, "-c", LEAK, ledger], capture_output=True, text=True, check=True)
    name, rank = out.stdout.split()
    return "/dev/shm/sem." + name[1:], f"/tmp/agent_rank{rank}_state.lmdb"


def test_a_leak_of_the_run_is_caught_and_a_foreign_one_ignored(tmp_path):
    ledger = tmp_path / "ledger"
    before = leak_check.snapshot()
    ours = _run(str(ledger))      # a process of the (child) run: registered, leaks two names
    foreign = _run("-")           # another program, not in the ledger, leaks the same kinds
    try:
        after = leak_check.snapshot()
        assert set(ours) | set(foreign) <= after, "the snapshot must see every name"
        found = leak_check.leaks(before, after, leak_check.read_ledger(ledger))
        assert set(ours) <= set(found), found
        assert not set(foreign) & set(found), f"another program's names counted: {found}"
        # Nothing appeared in between: no leak.
        assert leak_check.leaks(after, after, leak_check.read_ledger(ledger)) == []
    finally:
        for path in (*ours, *foreign):
            if path.startswith("/dev/shm/sem."):
                try:
                    posix_ipc.unlink_semaphore("/" + path[len("/dev/shm/sem."):])
                except posix_ipc.ExistentialError:
                    pass
            else:
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass


def test_names_are_attributed_to_their_pids():
    hexa = "0123456789abcdef0123456789abcdef"
    assert leak_check.owner_pids(f"/dev/shm/sem.command_transfer_b_42_x_1234_{hexa}") == {1234}
    assert 5 in leak_check.owner_pids("/tmp/agent_rank5007_state.lmdb")
    assert 777 in leak_check.owner_pids("/dev/shm/sem.cq_etb_test_gone_777_4_command")
    assert 31 in leak_check.owner_pids("/tmp/etb-lmdb-unit-fs-31")
    assert leak_check.owner_pids("/tmp/etb-bench-abc123") is None
