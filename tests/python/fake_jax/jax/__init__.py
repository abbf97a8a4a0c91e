"""A stand-in `jax` for the test command (no JAX, no GPU here): just what
examples/python/jax_worker.py uses — local_devices(), device_put(), jax.numpy's ones() and
bfloat16 — with arrays over fake CUDA memory (the fake driver named by ETB_CUDA_DRIVER_PATH,
FAKE_CUDA_DEVICES devices) that offer DLPack as a JAX array does: __dlpack__(*, stream,
max_version, dl_device, copy) and __dlpack_device__() -> (kDLCUDA, device id), each
__dlpack__ call recorded in `CALLS`. The DLPack producers are tests/python/fake_dlpack.py's. With
FAKE_JAX_REPORT set, the process writes there at exit the calls and the deleters that ran."""
import atexit
import ctypes
import json
import os

import fake_dlpack as _fd

CALLS = []  # (device id, the __dlpack__ keyword arguments) of each call
_driver = ctypes.CDLL(os.environ["ETB_CUDA_DRIVER_PATH"])
_driver.fake_cuda_alloc.restype = ctypes.c_ulonglong
_driver.fake_cuda_alloc.argtypes = [ctypes.c_int, ctypes.c_ulonglong, ctypes.c_int]
_DTYPES = {"bfloat16": ((_fd.BFLOAT, 16, 1), 2), "float32": ((_fd.FLOAT, 32, 1), 4)}


class Device:
    def __init__(self, id):
        self.id = id
        self.platform = "gpu"

    def __repr__(self):
        return f"CudaDevice(id={self.id})"


def local_devices():
    return [Device(i) for i in range(int(os.environ.get("FAKE_CUDA_DEVICES", "2")))]


class Array:
    def __init__(self, shape, dtype, device):
        self.shape, self.dtype, self.device = tuple(shape), dtype, device
        code, size = _DTYPES[dtype]
        count = 1
        for n in self.shape:
            count *= n
        self._data = _driver.fake_cuda_alloc(device.id, max(1, count * size), 0)
        self._producer = _fd.Producer(self._data, self.shape, device=(_fd.KDL_CUDA, device.id), dtype=code)

    def __dlpack_device__(self):
        return self._producer.__dlpack_device__()

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        CALLS.append((self.device.id, {"stream": stream, "max_version": max_version}))
        return self._producer.__dlpack__(stream=stream, max_version=max_version, dl_device=dl_device, copy=copy)


def device_put(x, device):
    return Array(x.shape, x.dtype, device)


@atexit.register
def _report():
    if os.environ.get("FAKE_JAX_REPORT"):
        with open(os.environ["FAKE_JAX_REPORT"], "w") as f:
            json.dump({"calls": CALLS, "deleted": len(_fd.DELETED), "deleted_on": _fd.DELETED_ON}, f)


from . import numpy  # noqa: E402  (jax.numpy, as `import jax.numpy as jnp` finds it)
