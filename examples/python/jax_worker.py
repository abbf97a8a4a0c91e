# A JAX worker: one process drives every local GPU, so it holds one client per local agent, each
# bound to its own device (device_index), and registers each device's shard through DLPack
# (x.__dlpack__(stream=1, max_version=(1, 1)): no torch in this process). README, "DLPack: JAX,
# CuPy and C producers". The arguments are the local agents' ranks, one per GPU in device order;
# their files are the default ones, /tmp/agent_rank{N}_{command,state}.lmdb.
#   python examples/python/jax_worker.py 0 1
import sys

import jax
import jax.numpy as jnp

from etha_tensor_bus import TensorBusClient


def send_shard(client, device):
    x = jax.device_put(jnp.ones((1024, 1024), jnp.bfloat16), device)
    client.init_pair("weights", "train", "infer", 1)
    batch = client.register_tensors("step_0", [(x, "weights")])  # the payload lives with `batch`
    batch.transfer("send", blocking=True)  # done: the agent did it and survived it
    print(f"agent rank {client.info.agent_rank} on {client.info.device}: sent step_0 from {device}")
    return batch


devices = jax.local_devices()
ranks = [int(r) for r in sys.argv[1:]]
assert len(ranks) == len(devices), f"one agent rank per local device: {len(devices)} devices"
clients = [TensorBusClient(rank, f"/tmp/agent_rank{rank}_command.lmdb", f"/tmp/agent_rank{rank}_state.lmdb",
                           device_index=d.id) for rank, d in zip(ranks, devices)]
batches = [send_shard(client, d) for client, d in zip(clients, devices)]
while batches:
    # CleanupBatch (the agent lets go of the memory), then the payload is freed with its
    # BatchHandler: the shard's DLPack deleter runs.
    batches.pop().close()
for client in clients:
    client.close()
