"""DLPack payloads against the real torch (issue 22), pinned like tests/torch/test_payloads_torch.py
(whose fixtures and recorder of rebuild_cuda_tensor this reuses: no GPU here): payloads from a
DLManagedTensorVersioned and from a legacy DLManagedTensor over fake CUDA allocations unpickle
into the same 15 arguments of rebuild_cuda_tensor as the EtbCudaTensor route for the same memory
(every one but ref_counter_offset, the payload's own slot), for every dtype, strides and a
byte_offset; from Python, a capsule of torch.utils.dlpack.to_dlpack of a CPU tensor and a NumPy
array are refused naming the device, nothing sent.

Needs ETB_LIBRARY_PATH, ETB_DEV_AGENT and ETB_FAKE_CUDA, as test_payloads_torch.py."""
import ctypes
import os
import pathlib
import sys

import numpy
import pytest
import torch
import torch.utils.dlpack

from test_payloads_torch import DTYPES, OK, P, client, counter, fake, lib, make, rebuild_args  # noqa: F401

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))
import fake_dlpack as fd  # noqa: E402

# torch dtype -> DLPack (code, bits), as dlpack.h names them (kDLFloat8_e5m2 is 12, not our 11).
DLPACK = {torch.float32: (2, 32), torch.float64: (2, 64), torch.float16: (2, 16), torch.bfloat16: (4, 16),
          torch.uint8: (1, 8), torch.int8: (0, 8), torch.int16: (0, 16), torch.int32: (0, 32), torch.int64: (0, 64),
          torch.bool: (6, 8), torch.float8_e4m3fn: (10, 8), torch.float8_e5m2: (12, 8)}


def payload(lib, handle):
    return ctypes.string_at(lib.etb_payload_data(handle), lib.etb_payload_len(handle))


def test_torch_names_the_same_dlpack_codes():
    """The table above is torch's own: to_dlpack of a CPU tensor of each dtype says its code."""
    for dtype, (code, bits) in DLPACK.items():
        if dtype in (torch.float8_e4m3fn, torch.float8_e5m2) and not hasattr(torch.utils.dlpack, "to_dlpack"):
            continue
        t = torch.zeros(2, dtype=dtype)
        cap = torch.utils.dlpack.to_dlpack(t)
        ptr = ctypes.pythonapi.PyCapsule_GetPointer
        ptr.restype, ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
        m = ctypes.cast(ptr(cap, b"dltensor"), ctypes.POINTER(fd.Legacy)).contents
        assert (m.dl_tensor.dtype.code, m.dl_tensor.dtype.bits) == (code, bits), dtype


@pytest.mark.parametrize("code, dtype", DTYPES, ids=[str(d) for _, d in DTYPES])
def test_versioned_and_legacy_unpickle_as_the_cuda_tensor_route(lib, client, fake, code, dtype):
    base = fake.fake_cuda_alloc(1, 1 << 20, 0)
    size = torch.empty((), dtype=dtype).element_size()
    for shape, strides, offset in (((4, 8), None, 0), ((4, 8), (1, 4), 256), ((), None, 64), ((3, 5, 2), (10, 2, 1), 0)):
        _, want_handle = make(lib, client, code, base + offset, shape, strides)
        want = rebuild_args(payload(lib, want_handle))
        for legacy in (False, True):
            address, ctx = fd.managed(base, shape, device=(fd.KDL_CUDA, 1), dtype=(*DLPACK[dtype], 1), strides=strides,
                                    byte_offset=offset, legacy=legacy)
            out = P()
            fn = lib.etb_client_dlpack_legacy_payload if legacy else lib.etb_client_dlpack_payload
            assert fn(client, address, 0, None, ctypes.byref(out)) == OK, lib.etb_last_error_message()
            got = rebuild_args(payload(lib, out))
            # Every argument but ref_counter_offset (12): each payload holds its own slot.
            assert got[:12] + got[13:] == want[:12] + want[13:], (dtype, shape, strides, offset, legacy)
            assert got[5] == dtype and got[6] == 1 and tuple(got[1]) == shape, got
            assert got[9] == want[9] == offset, "byte_offset honoured: the storage starts at data + byte_offset"
            # The consumer's release, then the free: the deleter runs once, in the free (and no
            # payload is left deferred with its counter file at the process's end).
            m, _, value = counter(got[11], got[12])
            assert value == 1
            m[64 + 8 * got[12]:72 + 8 * got[12]] = (0).to_bytes(8, "little")
            m.close()
            before = len(fd.DELETED)
            lib.etb_payload_free(out)
            assert fd.DELETED[before:] == [ctx], "the deleter runs once, in the free"
        lib.etb_payload_free(want_handle)
    assert size >= 1


@pytest.fixture()
def py_client(lib):
    """A Python TensorBusClient on cuda:1 of the fake driver, against etb-dev-agent."""
    import subprocess

    from etha_tensor_bus import TensorBusClient

    rank = os.getpid() * 1000 + 990
    agent = subprocess.Popen([os.environ["ETB_DEV_AGENT"], "--rank", str(rank), "--exit-after", "120",
                              "--die-with-parent"], stdout=subprocess.PIPE, text=True)
    assert agent.stdout.readline().startswith("ready")
    c = TensorBusClient(rank, f"/tmp/agent_rank{rank}_command.lmdb", f"/tmp/agent_rank{rank}_state.lmdb", 5.0,
                        cuda_mode="require", device_index=1)
    c.init_pair("pair", "train", "infer", 1)
    yield c
    c.close()
    agent.terminate()
    agent.wait()
    pathlib.Path(f"/tmp/.agent_rank{rank}_state.lmdb.worker").unlink(missing_ok=True)


def test_cpu_capsule_and_numpy_are_refused_naming_the_device(py_client):
    from etha_tensor_bus import TensorBusError

    capsule = torch.utils.dlpack.to_dlpack(torch.arange(4, dtype=torch.float32))
    with pytest.raises(TensorBusError, match="kDLCPU"):
        py_client.register_tensors("cpu_capsule", [(capsule, "pair")])
    name = ctypes.pythonapi.PyCapsule_GetName
    name.restype, name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    assert name(capsule) == b"dltensor", "a refused capsule is not consumed: its destructor deletes the tensor"
    with pytest.raises(TensorBusError, match="kDLCPU"):
        py_client.register_tensors("numpy", [(numpy.arange(4, dtype=numpy.float32), "pair")])
    assert not py_client.batch_known("cpu_capsule") and not py_client.batch_known("numpy"), "nothing was sent"
    # A torch tensor keeps its ForkingPickler route (not DLPack), even on the CPU.
    batch = py_client.register_tensors("torch_cpu", [(torch.zeros(2), "pair")])
    batch.close()
