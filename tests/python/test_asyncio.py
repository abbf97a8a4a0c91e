"""Completions awaited in asyncio, through the package, against the Python stand-in agent
(py-lmdb, msgspec, posix_ipc), which holds each Transfer D seconds before it posts (it handles
commands one at a time): 64 awaits at once finish in about 64 D, while a ticker task keeps its
10 ms beat (the loop is never blocked: its lag stays under 20 ms) and the process has one thread
more than before (the client's watcher), not one per await; a cancelled await leaves the
completion usable and, once freed, no semaphore."""
import asyncio
import gc
import os
import pickle
import sys
import time

from conftest import ROOT, library_path, unique_rank

sys.path.insert(0, str(ROOT / "python"))

D = 0.02


def client_for(monkeypatch, rank):
    monkeypatch.setenv("AGENT_RANK", str(rank))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("AGENT_RANK_OFFSET", raising=False)
    monkeypatch.setenv("ETB_LIBRARY_PATH", library_path())
    from etha_tensor_bus.bootstrap import bootstrap_client
    client, _ = bootstrap_client(cuda_mode="skip")
    client.init_pair("p", "a", "b", 1)
    return client


def our_semaphores(part):
    tag = f"_{os.getpid()}_"
    return [n for n in os.listdir("/dev/shm") if n.startswith("sem.command_") and tag in n and part in n]


def test_64_awaits_at_once_never_block_the_loop(python_agent, monkeypatch):
    rank = unique_rank()
    python_agent(rank, "--hold", "Transfer", str(D))
    client = client_for(monkeypatch, rank)
    batch = client.register_tensors("aio", [(pickle.dumps(b"\x01\x02", 3), "p")])

    async def main():
        lags, stop = [], asyncio.Event()

        async def ticker():
            while not stop.is_set():
                t0 = time.monotonic()
                await asyncio.sleep(0.01)
                lags.append(time.monotonic() - t0 - 0.01)

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        completions = [batch.transfer("send") for _ in range(64)]
        await asyncio.gather(*completions)
        took = time.monotonic() - t0
        threads_during = len(os.listdir("/proc/self/task"))
        stop.set()
        await tick
        for c in completions:
            assert c.poll() is True
            c.close()
        return took, max(lags), threads_during

    tasks_before = len(os.listdir("/proc/self/task"))
    took, lag, threads_during = asyncio.run(main())
    assert threads_during == tasks_before + 1, "one watcher thread for the client, none per await"
    assert lag < 0.020, f"the ticker lagged {lag * 1e3:.1f} ms: the loop was blocked"
    assert took >= 64 * D * 0.9, f"{took:.3f} s: the agent handles the 64 transfers one at a time"
    assert took < 64 * D * 3 + 2.0, f"{took:.3f} s for 64 transfers of {D} s each"
    assert not our_semaphores("aio")
    batch.close()
    client.close()


def test_a_cancelled_await_leaves_the_completion_usable_and_no_semaphore(python_agent, monkeypatch):
    rank = unique_rank()
    python_agent(rank, "--hold", "Transfer", "0.3")
    client = client_for(monkeypatch, rank)
    batch = client.register_tensors("aioc", [(pickle.dumps(b"\x01\x02", 3), "p")])

    async def main():
        done = batch.transfer("send")
        task = asyncio.ensure_future(done)  # awaiting the Completion in a task
        await asyncio.sleep(0.05)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        readers = client._aio()._by_loop[asyncio.get_running_loop()]
        assert not readers.futures and not readers.reading, "the cancelled future left the reader's set"
        await done  # the completion stays usable: a new await gets its outcome
        assert done.poll() is True
        other = batch.transfer("send")
        waiter = asyncio.ensure_future(other)
        await asyncio.sleep(0.05)
        waiter.cancel()
        return other

    other = asyncio.run(main())
    assert our_semaphores("aioc"), "the unfinished completion still owns its semaphore"
    other.close()
    del other
    gc.collect()
    assert not our_semaphores("aioc"), "freeing the completion removed its semaphore"
    batch.close()
    client.close()
