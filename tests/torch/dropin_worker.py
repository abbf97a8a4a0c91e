"""A worker written against the reference client (etha.tensor_bus), with only the import changed,
as docs/protocol.md section 7 and the README show it. Run by tests/torch/test_dropin_torch.py
under the pinned torch's venv (tests/torch-version), against the Python stand-in agent; prints,
as one JSON line, what it sent (the mesh shape, the placements' repr, each tensor's dtype, shape
and values).

    argv: PG_FILE  (the file:// rendezvous of the one-rank gloo group)
"""
import gc
import json
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor.placement_types import Replicate, Shard

# The reference worker has: from etha.tensor_bus.bootstrap import bootstrap_client
from etha_tensor_bus.bootstrap import bootstrap_client

mp.set_sharing_strategy("file_system")
dist.init_process_group("gloo", init_method=f"file://{sys.argv[1]}", rank=0, world_size=1)
mesh = init_device_mesh("cpu", (1,))
placements = (Shard(0), Replicate())

client, info = bootstrap_client()
client.init_pair("weights", "train", "infer", 1, device_mesh=mesh, placements=placements)

tensors = [
    torch.arange(6, dtype=torch.float32).reshape(2, 3),
    torch.tensor([1, -2, 3], dtype=torch.int64),
    torch.tensor([[True, False]]),
    torch.linspace(0, 1, 4, dtype=torch.bfloat16),
    torch.nn.Parameter(torch.ones(2, 2, dtype=torch.float16)),
]
batch = client.register_tensors("step", [(t, "weights") for t in tensors])
sem = batch.transfer("send")
sem.acquire(30)
signal = batch.query_transfer_signal()
sem.release()
sem.close()

sent = {
    "mesh_shape": list(mesh.mesh.shape),
    "placements": repr(placements),
    "tensors": [{"dtype": str(t.dtype), "shape": list(t.shape), "values": t.detach().tolist()} for t in tensors],
    "signal": signal,
}
del batch  # dropped without close(): a non-blocking CleanupBatch, as the reference's __del__
gc.collect()
client.close()
dist.destroy_process_group()
print(json.dumps(sent), flush=True)
