"""A worker in Python, with PyTorch: its own one-rank gloo process group (torchrun
--nproc-per-node 1 would make one too), a pair with a device mesh and placements, one tensor
registered and sent. README, "Try it".   AGENT_RANK=0 RANK=0 python examples/python/worker.py"""
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.placement_types import Shard

from etha_tensor_bus.bootstrap import bootstrap_client


def main():
    # CPU tensors are shared through files the agent can open (the default strategy passes file
    # descriptors to related processes only).
    torch.multiprocessing.set_sharing_strategy("file_system")
    with tempfile.NamedTemporaryFile() as store:
        dist.init_process_group("gloo", init_method=f"file://{store.name}", rank=0, world_size=1)
        mesh = init_device_mesh("cpu", (1,))
        client, info = bootstrap_client()
        print(f"bootstrapped: agent rank {info.agent_rank} ({info.method}), state {info.state_path}")
        # The agent must know the pair and the batch before it transfers it.
        client.init_pair("weights", "train", "infer", 2, device_mesh=mesh, placements=(Shard(0),), timeout=300.0)
        weights = torch.zeros(1024)
        batch = client.register_tensors("step_0", [(weights, "weights")])
        done = batch.transfer("send")  # a Completion at once, as the reference's transfer(); C and C++ block
        done.acquire(300.0)
        print(f"sent step_0 (transfer signal {'set' if batch.query_transfer_signal() else 'clear'})")
        batch.close()  # CleanupBatch
        client.close()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
