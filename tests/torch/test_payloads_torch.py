"""Native payloads against the real torch, pinned to the agent's version (tests/torch-version; its
venv: scripts/setup-torch-venv.sh): mesh shapes and placements unpickle equal to what torch
builds itself; CUDA tensor payloads,
made through the fake CUDA driver (tests/fake_cuda, ETB_CUDA_DRIVER_PATH), unpickle into the 15
arguments of torch.multiprocessing.reductions.rebuild_cuda_tensor (replaced by a recorder: no
GPU here), and their reference counter is the file torch opens and releases.

Needs ETB_LIBRARY_PATH (the library), ETB_DEV_AGENT and ETB_FAKE_CUDA (the default build of the
fake driver)."""
import ctypes
import itertools
import mmap
import os
import pathlib
import pickle
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing.reductions as reductions
from multiprocessing.reduction import ForkingPickler
from torch.distributed.tensor.placement_types import Partial, Replicate, Shard

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "python"))
from etha_tensor_bus import _native  # noqa: E402

OK, INVALID_ARGUMENT = 0, 2
P = ctypes.c_void_p
# The header's dtypes (ETB_DTYPE_*), as torch names them: (number, torch dtype).
DTYPES = [(code, getattr(torch, name)) for name, code in _native.enum("ETB_DTYPE_").items()]
_ranks = itertools.count(os.getpid() * 1000 + 900)


def test_torch_is_the_agents_version():
    with open(os.path.join(ROOT, "tests", "torch-version")) as f:
        pinned = f.read().strip()
    assert torch.__version__.split("+")[0] == pinned, torch.__version__


def test_typestrs_are_numpys():
    """The typestrs the package derives from the header's dtype names (__cuda_array_interface__ ->
    ETB_DTYPE_*) against numpy's own: every dtype numpy has is there under numpy's typestr, and
    nothing else."""
    import numpy

    from etha_tensor_bus import _payloads

    names = {code: name for name, code in _native.enum("ETB_DTYPE_").items()}
    for code, name in names.items():
        try:
            typestr = numpy.dtype(name).str
        except TypeError:  # bfloat16, float8_*: numpy has none
            assert code not in _payloads._TYPESTR.values(), name
            continue
        assert _payloads._TYPESTR[typestr] == code, name
    for typestr, code in _payloads._TYPESTR.items():
        assert numpy.dtype(typestr).name == names[code], typestr


@pytest.fixture(scope="module")
def lib():
    ledger = os.environ.get("ETB_TEST_LEDGER")
    if ledger:
        with open(ledger, "a") as f:
            f.write(f"{os.getpid()}\n")
    os.environ["ETB_CUDA_DRIVER_PATH"] = os.environ["ETB_FAKE_CUDA"]
    return _native.load(os.environ["ETB_LIBRARY_PATH"])


def payload_bytes(lib, handle):
    n = lib.etb_payload_len(handle)
    return ctypes.string_at(lib.etb_payload_data(handle), n)


def test_mesh_shapes_and_placements_unpickle_to_torchs_own(lib):
    out = P()
    dims = (ctypes.c_int64 * 2)(2, 4)
    assert lib.etb_mesh_shape_payload(dims, 2, ctypes.byref(out)) == OK
    assert ForkingPickler.loads(payload_bytes(lib, out)) == (2, 4)
    lib.etb_payload_free(out)
    items = (_native.Placement * 4)(_native.Placement(0, 0, None), _native.Placement(1, 0, None),
                                    _native.Placement(2, 0, b"avg"), _native.Placement(2, 0, None))
    assert lib.etb_placements_payload(items, 4, ctypes.byref(out)) == OK
    got = ForkingPickler.loads(payload_bytes(lib, out))
    assert got == (Shard(0), Replicate(), Partial("avg"), Partial())
    assert [type(x) for x in got] == [Shard, Replicate, Partial, Partial]
    assert hash(got[0]) == hash(Shard(0)) and got[3].reduce_op == "sum"
    lib.etb_payload_free(out)
    assert lib.etb_placements_payload(items, 0, ctypes.byref(out)) == OK
    assert ForkingPickler.loads(payload_bytes(lib, out)) == ()
    lib.etb_payload_free(out)
    items[0].dim = -1
    assert lib.etb_placements_payload(items, 1, ctypes.byref(out)) == OK
    assert ForkingPickler.loads(payload_bytes(lib, out)) == (Shard(-1),)
    lib.etb_payload_free(out)


@pytest.fixture(scope="module")
def client(lib):
    """A client bound (through the fake driver) to cuda:1, against a running etb-dev-agent."""
    rank = next(_ranks)
    agent = subprocess.Popen([os.environ["ETB_DEV_AGENT"], "--rank", str(rank), "--exit-after", "120",
                              "--die-with-parent"], stdout=subprocess.PIPE, text=True)
    assert agent.stdout.readline().startswith("ready")
    os.environ.update(AGENT_RANK=str(rank), RANK="0", LOCAL_RANK="1")
    opts = _native.BootstrapOptions()
    lib.etb_bootstrap_options_init(ctypes.byref(opts))
    opts.cuda_mode = 1  # require
    c, info = P(), P()
    assert lib.etb_bootstrap_client_ex(ctypes.byref(opts), ctypes.byref(c), ctypes.byref(info)) == OK, \
        lib.etb_last_error_message()
    lib.etb_info_free(info)
    yield c
    lib.etb_client_close(c)
    agent.terminate()
    agent.wait()
    # The worker lock file, which the library never removes: the operator's (here the test's).
    pathlib.Path(f"/tmp/.agent_rank{rank}_state.lmdb.worker").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def fake(lib):
    f = ctypes.CDLL(os.environ["ETB_FAKE_CUDA"])
    f.fake_cuda_alloc.restype = ctypes.c_ulonglong
    f.fake_cuda_alloc.argtypes = [ctypes.c_int, ctypes.c_ulonglong, ctypes.c_int]
    return f


class Recorded(Exception):
    pass


def rebuild_args(data):
    """The 15 arguments the payload calls rebuild_cuda_tensor with (torch looks it up by name)."""
    seen = []

    def recorder(*args):
        seen.append(args)
        return "rebuilt"

    original = reductions.rebuild_cuda_tensor
    reductions.rebuild_cuda_tensor = recorder
    try:
        assert ForkingPickler.loads(data) == "rebuilt"
    finally:
        reductions.rebuild_cuda_tensor = original
    assert len(seen) == 1 and len(seen[0]) == 15
    return seen[0]


def make(lib, client, dtype, data, shape, strides=None, wait=0, stream=None):
    t = _native.CudaTensor()
    lib.etb_cuda_tensor_init(ctypes.byref(t))
    t.dtype, t.data, t.ndim, t.wait_on_stream, t.stream = dtype, data, len(shape), wait, stream
    sh = (ctypes.c_int64 * max(1, len(shape)))(*shape)
    t.shape = ctypes.cast(sh, ctypes.POINTER(ctypes.c_int64))
    if strides is not None:
        st = (ctypes.c_int64 * max(1, len(strides)))(*strides)
        t.strides = ctypes.cast(st, ctypes.POINTER(ctypes.c_int64))
    out = P()
    status = lib.etb_client_cuda_tensor_payload(client, ctypes.byref(t), ctypes.byref(out))
    return status, out


def expected_handle(buffer_id, base, device):
    return (b"FAKEIPC\0" + buffer_id.to_bytes(8, "little") + base.to_bytes(8, "little")
            + device.to_bytes(4, "little")).ljust(64, b"\0")


def counter(name, slot):
    """Opens the reference-counter file as torch does (shm_open, 80,064 bytes): (header, slot)."""
    path = "/dev/shm/" + name.decode().lstrip("/")
    with open(path, "r+b") as f:
        m = mmap.mmap(f.fileno(), 80064)
    return m, int.from_bytes(m[0:4], "little"), int.from_bytes(m[64 + 8 * slot:72 + 8 * slot], "little", signed=True)


@pytest.mark.parametrize("code, dtype", DTYPES, ids=[str(d) for _, d in DTYPES])
def test_cuda_tensor_arguments_for_every_dtype(lib, client, fake, code, dtype):
    elem = dtype.itemsize
    base = fake.fake_cuda_alloc(1, 1 << 20, 0)
    cases = [
        ("contiguous", base, (4, 8), None, (8, 1)),
        ("strided", base, (4, 3), (1, 4), (1, 4)),
        ("0-d", base, (), None, ()),
        ("offset into the allocation", base + 256 * elem, (16,), None, (1,)),
    ]
    for name, data, shape, strides, want_strides in cases:
        status, out = make(lib, client, code, data, shape, strides)
        assert status == OK, (name, lib.etb_last_error_message())
        blob = payload_bytes(lib, out)
        assert blob[:2] == b"\x80\x03" and blob[-1:] == b"."
        a = rebuild_args(blob)
        assert a[0] is torch.Tensor, name
        assert type(a[1]) is torch.Size and a[1] == torch.Size(shape), name
        assert a[2] == want_strides and a[3] == 0, name
        assert a[4] is torch.storage.TypedStorage and a[5] is dtype, name
        assert a[6] == 1, "the client's device"
        buffer_id = 0  # read back: the fake's handle carries it
        assert len(a[7]) == 64 and a[7][:8] == b"FAKEIPC\0", name
        buffer_id = int.from_bytes(a[7][8:16], "little")
        assert a[7] == expected_handle(buffer_id, base, 1), "the handle of the allocation's base"
        assert a[9] == data - base and a[8] == ((1 << 20) - (data - base)) // elem * elem, name
        assert a[10] is False
        assert a[11].startswith(f"/etb_rc_{os.getpid()}_".encode()) and isinstance(a[12], int), name
        assert a[13] == bytes(64) and a[14] is False, name
        m, header, value = counter(a[11], a[12])
        assert (header, value) == (1, 1), "the slot is set, and this process counts itself once"
        in_use = ctypes.c_bool(False)
        assert lib.etb_payload_in_use(out, ctypes.byref(in_use)) == OK and in_use.value
        # The consumer's release, as torch does it: slot -= 1.
        m[64 + 8 * a[12]:72 + 8 * a[12]] = (value - 1).to_bytes(8, "little", signed=True)
        m.close()
        assert lib.etb_payload_in_use(out, ctypes.byref(in_use)) == OK and not in_use.value
        lib.etb_payload_free(out)
    # An empty tensor: no handle, no counter, no event; data may be 0.
    status, out = make(lib, client, code, 0, (4, 0))
    assert status == OK, lib.etb_last_error_message()
    a = rebuild_args(payload_bytes(lib, out))
    assert a[7] is None and a[8] == 0 and a[9] == 0 and a[11] == b"" and a[12] == 0 and a[14] is False
    in_use = ctypes.c_bool(True)
    assert lib.etb_payload_in_use(out, ctypes.byref(in_use)) == OK and not in_use.value
    lib.etb_payload_free(out)


def test_torchs_own_release_frees_the_slot_and_keeps_the_file(lib, client, fake):
    base = fake.fake_cuda_alloc(1, 4096, 0)
    status, out = make(lib, client, 0, base, (16,))
    assert status == OK, lib.etb_last_error_message()
    a = rebuild_args(payload_bytes(lib, out))
    torch.UntypedStorage._release_ipc_counter_cuda(a[11], a[12])
    in_use = ctypes.c_bool(True)
    assert lib.etb_payload_in_use(out, ctypes.byref(in_use)) == OK and not in_use.value
    assert os.path.exists("/dev/shm/" + a[11].decode().lstrip("/")), "torch's release left the file (our count is 1)"
    lib.etb_payload_free(out)


def test_a_stream_wait_sends_the_event(lib, client, fake):
    base = fake.fake_cuda_alloc(1, 4096, 0)
    status, out = make(lib, client, 0, base, (16,), wait=1, stream=2)  # CU_STREAM_PER_THREAD
    assert status == OK, lib.etb_last_error_message()
    a = rebuild_args(payload_bytes(lib, out))
    assert a[13][:8] == b"FAKEEVT\0" and len(a[13]) == 64 and a[14] is True
    lib.etb_payload_free(out)
