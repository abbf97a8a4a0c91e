"""What a Python worker hands to init_pair and register_tensors, turned into the bytes the agent
unpickles: torch objects as the reference sends them (imported lazily: never when no torch
object is passed), pre-pickled bytes as they are, and the torch-free forms through the
library's native payloads."""
import ctypes
import re
import sys

from . import _native
from ._common import Owned, check


def _typestrs():
    """numpy-style typestrs (of __cuda_array_interface__) -> ETB_DTYPE_*, for the header's dtypes
    that numpy has: floatN, intN, uintN (N bits: N/8 bytes) and bool, the one-byte ones with either
    byte-order mark; bfloat16 and the float8 types have no typestr."""
    out = {}
    for name, code in _native.enum("ETB_DTYPE_").items():
        m = re.fullmatch(r"(float|int|uint)(\d+)", name)
        if not m and name != "bool":
            continue
        kind, size = ("b", 1) if name == "bool" else ({"float": "f", "int": "i", "uint": "u"}[m[1]], int(m[2]) // 8)
        for order in ("|", "<") if size == 1 else ("<",):
            out[f"{order}{kind}{size}"] = code
    return out


_TYPESTR = _typestrs()
_PLACEMENT_KIND = _native.enum("ETB_PLACEMENT_")  # {"shard": ETB_PLACEMENT_SHARD, "replicate": ..., "partial": ...}


def _torch_loaded():
    return "torch" in sys.modules


def _forking_dumps(obj):
    from multiprocessing.reduction import ForkingPickler

    return bytes(ForkingPickler.dumps(obj))


def _take(handle):
    """The bytes of an EtbPayload handle, which is then freed."""
    lib = _native.lib()
    try:
        return ctypes.string_at(lib.etb_payload_data(handle), lib.etb_payload_len(handle))
    finally:
        lib.etb_payload_free(handle)


def mesh_bytes(device_mesh):
    """None, pre-pickled bytes, a torch DeviceMesh (the reference's
    ForkingPickler.dumps(tuple(mesh.mesh.shape))), or a tuple of ints (native payload)."""
    if device_mesh is None:
        return None
    if isinstance(device_mesh, (bytes, bytearray, memoryview)):
        return bytes(device_mesh)
    if _torch_loaded() and hasattr(device_mesh, "mesh") and hasattr(device_mesh.mesh, "shape"):
        return _forking_dumps(tuple(device_mesh.mesh.shape))
    if isinstance(device_mesh, (tuple, list)) and all(isinstance(d, int) for d in device_mesh):
        dims = (ctypes.c_int64 * max(1, len(device_mesh)))(*device_mesh)
        out = ctypes.c_void_p()
        check(_native.lib().etb_mesh_shape_payload(dims, len(device_mesh), ctypes.byref(out)))
        return _take(out)
    raise TypeError(f"device_mesh must be a torch DeviceMesh, a tuple of ints or bytes, not {type(device_mesh).__name__}")


def _native_placement(p):
    if p == "replicate":
        return _native.Placement(_PLACEMENT_KIND["replicate"], 0, None)
    if isinstance(p, tuple) and len(p) == 2 and p[0] in ("shard", "partial"):
        if p[0] == "shard" and isinstance(p[1], int):
            return _native.Placement(_PLACEMENT_KIND["shard"], p[1], None)
        if p[0] == "partial" and isinstance(p[1], str):
            return _native.Placement(_PLACEMENT_KIND["partial"], 0, p[1].encode("utf-8"))
    raise TypeError(f"a placement must be ('shard', dim), 'replicate' or ('partial', op), not {p!r}")


def placements_bytes(placements):
    """None, pre-pickled bytes, torch placements (ForkingPickler.dumps(placements), as the
    reference), or ('shard', dim) / 'replicate' / ('partial', op) forms (native payload)."""
    if placements is None:
        return None
    if isinstance(placements, (bytes, bytearray, memoryview)):
        return bytes(placements)
    items = tuple(placements)
    if _torch_loaded() and items and all(type(p).__module__.startswith("torch.") for p in items):
        return _forking_dumps(items)
    native = [_native_placement(p) for p in items]
    array = (_native.Placement * max(1, len(native)))(*native)
    out = ctypes.c_void_p()
    check(_native.lib().etb_placements_payload(array, len(native), ctypes.byref(out)))
    return _take(out)


def _is_torch_tensor(obj):
    return _torch_loaded() and type(obj).__module__.startswith("torch") and hasattr(obj, "detach")


def tensor_payload(tensor, client_handle, keep):
    """The bytes of one register_tensors entry. A native CUDA payload made for an object with
    __cuda_array_interface__ or __dlpack__, or for a DLPack capsule, is appended to `keep` (its
    memory must stay alive with the batch; a DLPack payload owns its producer's tensor)."""
    if isinstance(tensor, (bytes, bytearray, memoryview)):
        return bytes(tensor)
    if _is_torch_tensor(tensor):
        return _forking_dumps(tensor.detach())
    if type(tensor).__name__ == "PyCapsule":
        return _capsule_payload(tensor, client_handle, keep)
    if hasattr(tensor, "__dlpack__"):  # before __cuda_array_interface__: CuPy has both
        return _dlpack_object_payload(tensor, client_handle, keep)
    iface = getattr(tensor, "__cuda_array_interface__", None)
    if iface is not None:
        return _cuda_array_payload(iface, client_handle, keep)
    raise TypeError(
        f"a tensor must be a torch.Tensor, an object with __cuda_array_interface__ (Numba...) or __dlpack__ (JAX, "
        f"CuPy...), a DLPack capsule or pre-pickled bytes, not {type(tensor).__name__}"
    )


def _cuda_array_payload(iface, client_handle, keep):
    lib = _native.lib()
    typestr = iface["typestr"]
    if typestr not in _TYPESTR:
        raise TypeError(f"__cuda_array_interface__ typestr {typestr!r} has no torch dtype this library knows")
    dtype = _TYPESTR[typestr]
    size = lib.etb_dtype_size(dtype)
    shape = tuple(int(d) for d in iface["shape"])
    strides = iface.get("strides")
    if strides is not None:
        if any(s % size for s in strides):
            raise ValueError(f"__cuda_array_interface__ strides {tuple(strides)} are not multiples of the element size {size}")
        strides = tuple(s // size for s in strides)
    data = int(iface["data"][0])
    t = _native.CudaTensor()
    lib.etb_cuda_tensor_init(ctypes.byref(t))
    t.dtype, t.data, t.ndim = dtype, data, len(shape)
    shape_arr = (ctypes.c_int64 * max(1, len(shape)))(*shape)
    t.shape = ctypes.cast(shape_arr, ctypes.POINTER(ctypes.c_int64))
    if strides is not None:
        strides_arr = (ctypes.c_int64 * max(1, len(strides)))(*strides)
        t.strides = ctypes.cast(strides_arr, ctypes.POINTER(ctypes.c_int64))
    stream = iface.get("stream")
    if stream is not None:  # the consumer waits for the work queued on it (1 and 2 are CUDA's special streams)
        t.wait_on_stream, t.stream = 1, (0 if stream == 1 else stream)
    out = ctypes.c_void_p()
    check(lib.etb_client_cuda_tensor_payload(client_handle, ctypes.byref(t), ctypes.byref(out)))
    payload = _NativePayload(out)
    keep.append(payload)
    return payload.bytes()


# DLPack (docs/torch-ipc.md section 7). The consumer asks the producer for the tensor with the
# stream it will use: the IPC event of the payload is recorded on CUDA's legacy default stream
# (wait_on_stream 1, stream NULL), which is DLPack's stream 1; for another device type, None
# (the library then refuses the tensor, naming the device).
KDL_CUDA = 2
LEGACY_DEFAULT_STREAM = 1
# The capsule names of the DLPack Python specification, and those of a consumed capsule. Module
# constants: PyCapsule_SetName keeps the pointer, so the strings must outlive every capsule.
_VERSIONED, _USED_VERSIONED = b"dltensor_versioned", b"used_dltensor_versioned"
_LEGACY, _USED_LEGACY = b"dltensor", b"used_dltensor"


class _CapsuleApi:
    """Prototypes of our own for the four capsule functions (from ctypes.pythonapi's library, not
    its attributes: setting their argtypes would change them for every other user of ctypes in
    the process), made once."""

    def __init__(self):
        proto, api = ctypes.PYFUNCTYPE, ctypes.pythonapi
        named = (ctypes.py_object, ctypes.c_char_p)
        self.is_valid = proto(ctypes.c_int, *named)(("PyCapsule_IsValid", api))
        self.get_pointer = proto(ctypes.c_void_p, *named)(("PyCapsule_GetPointer", api))
        self.set_name = proto(ctypes.c_int, *named)(("PyCapsule_SetName", api))
        self.get_name = proto(ctypes.c_char_p, ctypes.py_object)(("PyCapsule_GetName", api))


_CAPSULE_API = []


def _capsule_api():
    if not _CAPSULE_API:
        _CAPSULE_API.append(_CapsuleApi())
    return _CAPSULE_API[0]


def _capsule_payload(capsule, client_handle, keep):
    """A DLPack capsule (DLPack Python spec): a versioned ("dltensor_versioned") or legacy
    ("dltensor") managed tensor, through etb_client_dlpack_payload / _legacy_payload. Consumed
    (renamed "used_...": its destructor then leaves the tensor to the payload) only on success;
    refused, the capsule stays as it was and its own destructor deletes the tensor."""
    api, lib = _capsule_api(), _native.lib()
    for name, used, make in ((_VERSIONED, _USED_VERSIONED, lib.etb_client_dlpack_payload),
                             (_LEGACY, _USED_LEGACY, lib.etb_client_dlpack_legacy_payload)):
        if api.is_valid(capsule, name):
            managed = api.get_pointer(capsule, name)
            out = ctypes.c_void_p()
            check(make(client_handle, managed, 1, None, ctypes.byref(out)))
            payload = _NativePayload(out)  # owns the managed tensor from here on
            if api.set_name(capsule, used) != 0:
                raise RuntimeError("PyCapsule_SetName failed on a consumed DLPack capsule")
            keep.append(payload)
            return payload.bytes()
    got = api.get_name(capsule)
    if got in (_USED_VERSIONED, _USED_LEGACY):
        raise ValueError(f"this DLPack capsule was consumed already ({got.decode()!r}): a capsule is used once")
    raise TypeError(f"a capsule named {got!r} is not a DLPack capsule ('dltensor_versioned' or 'dltensor')")


def _dlpack_object_payload(obj, client_handle, keep):
    """An object with __dlpack__ (and __dlpack_device__): asked for a capsule with the stream the
    payload's event is recorded on, max_version (1, 1) first; an older producer, whose __dlpack__
    takes no max_version, gets the older call."""
    device = obj.__dlpack_device__() if hasattr(obj, "__dlpack_device__") else (KDL_CUDA, 0)
    stream = LEGACY_DEFAULT_STREAM if int(device[0]) == KDL_CUDA else None
    try:
        capsule = obj.__dlpack__(stream=stream, max_version=(1, 1))
    except TypeError:
        capsule = obj.__dlpack__(stream=stream)
    return _capsule_payload(capsule, client_handle, keep)


class _NativePayload(Owned):
    """A native payload kept alive with its batch (it holds the reference-counter slot)."""

    _release = "etb_payload_free"

    def __init__(self, handle):
        self._handle = handle

    def bytes(self):
        lib = _native.lib()
        return ctypes.string_at(lib.etb_payload_data(self._handle), lib.etb_payload_len(self._handle))

    def in_use(self):
        busy = ctypes.c_bool(False)
        check(_native.lib().etb_payload_in_use(self._handle, ctypes.byref(busy)))
        return busy.value

