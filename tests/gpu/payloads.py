"""GPU check of the native CUDA tensor payloads, for a machine with a GPU (see payloads.sh).

The producer is this process, a native worker without torch: it loads the CUDA driver and the
library through ctypes, allocates with cuMemAlloc_v2, fills the memory, and makes payloads. A
separate PyTorch process (the consumer, as the agent would be) unpickles each payload with
ForkingPickler.loads, checks the values, writes into the memory, and drops its tensor. The
producer then sees the write and the reference counter back at 0.

    python3 payloads.py LIB.so TORCH_PYTHON [TORCH_VERSION]
        (env: AGENT_RANK, RANK, LOCAL_RANK of a running agent; TORCH_VERSION: the pinned one,
        tests/torch-version, which payloads.sh passes: the consumer's torch must be it)

Prints one line per check and ends with "N passed, N failed"; a sandbox that refuses CUDA IPC
is reported as "unsupported", apart from failures."""
import ctypes
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
from etha_tensor_bus import _native  # noqa: E402

results = {"passed": 0, "failed": 0, "unsupported": 0}


def check(name, ok, detail=""):
    results["passed" if ok else "failed"] += 1
    print(f"{'ok' if ok else 'not ok'} - {name}" + (f": {detail}" if detail and not ok else ""), flush=True)


CONSUMER = r"""
import sys, time, torch
from multiprocessing.reduction import ForkingPickler
data = open(sys.argv[1], "rb").read()
n = int(sys.argv[2])
try:
    t = ForkingPickler.loads(data)
except RuntimeError as e:
    print("UNSUPPORTED", e, flush=True)
    sys.exit(3)
torch.cuda.synchronize()
ok = t.dtype == torch.float32 and t.shape == (n,) and t.is_cuda
ok = ok and torch.equal(t.cpu(), torch.arange(n, dtype=torch.float32))
print("VALUES", "ok" if ok else f"bad {t[:8].tolist()}", flush=True)
t.mul_(2)
torch.cuda.synchronize()
print("WROTE", flush=True)
del t
import gc; gc.collect()
torch.cuda.synchronize()
time.sleep(0.5)
print("RELEASED", flush=True)
"""


def check_lookup(cuda, base, device):
    """What the payloads' one cuPointerGetAttributes call assumes of a real driver
    (crates/etb-core/src/cuda/ipc.rs): asked from a thread with no current context, about a pointer
    inside cuMemAlloc memory, it answers device memory, not managed, on this device, legacy-IPC
    capable, and the range cuMemGetAddressRange_v2 answers (the allocation's base and size)."""
    asked = (ctypes.c_int * 6)(2, 8, 9, 10, 11, 12)  # MEMORY_TYPE, IS_MANAGED, DEVICE_ORDINAL,
    # IS_LEGACY_CUDA_IPC_CAPABLE, RANGE_START_ADDR, RANGE_SIZE (cuda.h)
    values = (ctypes.c_uint64 * 6)()
    data = (ctypes.c_void_p * 6)(*[ctypes.addressof(values) + 8 * i for i in range(6)])
    ptr = ctypes.c_uint64(base + 4096)
    answer = {}
    thread = threading.Thread(target=lambda: answer.update(rc=cuda.cuPointerGetAttributes(ctypes.c_uint(6), asked,
                                                                                           data, ptr)))
    thread.start()
    thread.join()
    start, size = ctypes.c_uint64(), ctypes.c_size_t()
    rc = cuda.cuMemGetAddressRange_v2(ctypes.byref(start), ctypes.byref(size), ptr)
    got = (answer.get("rc"), values[0], values[1], values[2] & 0xFFFFFFFF, values[3], values[4], values[5])
    want = (0, 2, 0, device, 1, start.value, size.value)
    check("cuPointerGetAttributes with no current context: device memory and its allocation's range",
          rc == 0 and start.value == base and got == want, f"got {got}, want {want} (cuMemGetAddressRange_v2: {rc})")


def main():
    lib_path, torch_python = sys.argv[1], sys.argv[2]
    if len(sys.argv) > 3:
        pinned = sys.argv[3].strip()
        proc = subprocess.run([torch_python, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                              text=True, timeout=300)
        found = proc.stdout.strip().split("+")[0]
        check(f"the consumer's torch is the agent's pinned {pinned}", found == pinned, found or proc.stderr[-2000:])
    cuda = ctypes.CDLL(os.environ.get("ETB_CUDA_DRIVER_PATH", "libcuda.so.1"))
    lib = _native.load(lib_path)
    opts = _native.BootstrapOptions()
    lib.etb_bootstrap_options_init(ctypes.byref(opts))
    opts.cuda_mode = 1  # require
    client, info = ctypes.c_void_p(), ctypes.c_void_p()
    status = lib.etb_bootstrap_client_ex(ctypes.byref(opts), ctypes.byref(client), ctypes.byref(info))
    check("bootstrap bound to the GPU", status == 0, lib.etb_last_error_message())
    if status != 0:
        return
    lib.etb_info_free(info)
    n = 1 << 20
    ptr = ctypes.c_uint64()
    rc = cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(n * 4))
    check("cuMemAlloc_v2", rc == 0, f"CUresult {rc}")
    host = (ctypes.c_float * n)(*range(n))
    rc = cuda.cuMemcpyHtoD_v2(ptr, host, ctypes.c_size_t(n * 4))
    check("fill the memory", rc == 0, f"CUresult {rc}")
    check_lookup(cuda, ptr.value, int(os.environ.get("LOCAL_RANK", "0")))
    for name, wait in (("synchronized", 0), ("stream/event path", 1)):
        t = _native.CudaTensor()
        lib.etb_cuda_tensor_init(ctypes.byref(t))
        shape = (ctypes.c_int64 * 1)(n)
        t.dtype, t.data, t.ndim, t.wait_on_stream, t.stream = 0, ptr.value, 1, wait, None
        t.shape = ctypes.cast(shape, ctypes.POINTER(ctypes.c_int64))
        payload = ctypes.c_void_p()
        status = lib.etb_client_cuda_tensor_payload(client, ctypes.byref(t), ctypes.byref(payload))
        check(f"payload ({name})", status == 0, lib.etb_last_error_message())
        if status != 0:
            continue
        blob = ctypes.string_at(lib.etb_payload_data(payload), lib.etb_payload_len(payload))
        with tempfile.NamedTemporaryFile(delete=False) as f:
            f.write(blob)
        if wait:
            rc = cuda.cuMemcpyHtoD_v2(ptr, host, ctypes.c_size_t(n * 4))  # back to 0..n for the next read
        proc = subprocess.run([torch_python, "-c", CONSUMER, f.name, str(n)], capture_output=True, text=True, timeout=300)
        os.unlink(f.name)
        out = proc.stdout
        if "UNSUPPORTED" in out:
            results["unsupported"] += 1
            print(f"unsupported - {name}: this sandbox refuses CUDA IPC: {out.strip()}", flush=True)
            lib.etb_payload_free(payload)
            continue
        check(f"torch unpickles the values ({name})", "VALUES ok" in out, out + proc.stderr[-2000:])
        back = (ctypes.c_float * n)()
        cuda.cuCtxSynchronize()
        rc = cuda.cuMemcpyDtoH_v2(back, ptr, ctypes.c_size_t(n * 4))
        check(f"the producer sees torch's write ({name})", rc == 0 and back[3] == 6.0 and back[n - 1] == 2.0 * (n - 1),
              f"rc {rc}, {back[3]}")
        in_use = ctypes.c_bool(True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lib.etb_payload_in_use(payload, ctypes.byref(in_use))
            if not in_use.value:
                break
            time.sleep(0.05)
        check(f"the reference counter is 0 after torch dropped the tensor ({name})", not in_use.value)
        lib.etb_payload_free(payload)
        rc = cuda.cuMemcpyHtoD_v2(ptr, host, ctypes.c_size_t(n * 4))
    cuda.cuMemFree_v2(ptr)
    lib.etb_client_close(client)


if __name__ == "__main__":
    main()
    extra = f", {results['unsupported']} unsupported" if results["unsupported"] else ""
    print(f"{results['passed']} passed, {results['failed']} failed{extra}")
    sys.exit(1 if results["failed"] else 0)
