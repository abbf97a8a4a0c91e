"""A worker in an asyncio server (vLLM and SGLang are asyncio servers): four layers' batches
sent at once and awaited together, while the loop goes on serving. No thread is parked per
await: the client's one watcher thread proves each transfer and wakes the loop through the
client's event fd. README, "Event loops".   AGENT_RANK=0 RANK=0 python examples/python/asyncio_worker.py"""
import asyncio
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.placement_types import Shard

from etha_tensor_bus.bootstrap import bootstrap_client


async def send_all(client, layers):
    batches = [client.register_tensors(f"layer_{i}", [(t, "weights")]) for i, t in enumerate(layers)]
    # Each transfer() returns a Completion at once; awaiting them parks no thread.
    await asyncio.gather(*(batch.transfer("send") for batch in batches))
    for batch in batches:
        batch.close()
    return len(batches)


async def serve(client, layers):
    beats = 0

    async def heartbeat():  # the server's own work goes on meanwhile
        nonlocal beats
        while True:
            await asyncio.sleep(0.01)
            beats += 1

    ticker = asyncio.create_task(heartbeat())
    sent = await send_all(client, layers)
    ticker.cancel()
    print(f"sent {sent} layers while the loop went on ({beats} beats)")


def main():
    torch.multiprocessing.set_sharing_strategy("file_system")
    with tempfile.NamedTemporaryFile() as store:
        dist.init_process_group("gloo", init_method=f"file://{store.name}", rank=0, world_size=1)
        mesh = init_device_mesh("cpu", (1,))
        client, info = bootstrap_client()
        client.init_pair("weights", "train", "infer", 2, device_mesh=mesh, placements=(Shard(0),), timeout=300.0)
        layers = [torch.full((1024,), float(i)) for i in range(4)]
        asyncio.run(serve(client, layers))
        client.close()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
