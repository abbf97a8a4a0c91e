"""The floor of what a Python worker pays per tensor: ForkingPickler.dumps of shared CPU tensors
(the file_system sharing strategy, as the Python package's tests use), run by bench/run.py in the
pinned torch environment (tests/torch-version) beside our native payloads. Prints one JSON object.

    python torch_dumps.py N"""
import json
import sys
import time

import torch
import torch.multiprocessing as mp
from multiprocessing.reduction import ForkingPickler

n = int(sys.argv[1])
mp.set_sharing_strategy("file_system")
tensors = [torch.empty((1024, 1024), dtype=torch.bfloat16).share_memory_() for _ in range(n)]
t0 = time.perf_counter()
blobs = [ForkingPickler.dumps(t) for t in tensors]
took = time.perf_counter() - t0
print(json.dumps({"n": n, "seconds": took, "per_s": n / took, "us_each": took / n * 1e6, "torch": torch.__version__,
                  "bytes_each": len(blobs[0])}))
