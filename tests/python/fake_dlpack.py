"""DLPack producers over fake CUDA memory, in ctypes, for the tests (tests/python/test_dlpack.py,
tests/torch/test_dlpack_torch.py, the stand-in `jax` of tests/python/fake_jax): managed tensors
(versioned, DLPack 1.x, and legacy) built as dlpack.h lays them out, wrapped in capsules whose
destructor follows the DLPack Python specification (it deletes the tensor only while the capsule
still has its unconsumed name), and objects with __dlpack__ / __dlpack_device__. Every deleter
call is counted (`DELETED`), with the name of the thread it ran on (`DELETED_ON`)."""
import ctypes
import threading

KDL_CPU, KDL_CUDA = 1, 2
FLOAT, BFLOAT, BOOL = 2, 4, 6
READ_ONLY = 1


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_uint32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32), ("dtype", DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class Versioned(ctypes.Structure):
    pass


class Legacy(ctypes.Structure):
    pass


VERSIONED_DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(Versioned))
LEGACY_DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(Legacy))
Versioned._fields_ = [("version", DLPackVersion), ("manager_ctx", ctypes.c_void_p), ("deleter", VERSIONED_DELETER),
                      ("flags", ctypes.c_uint64), ("dl_tensor", DLTensor)]
Legacy._fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", LEGACY_DELETER)]

DELETED = []  # the manager_ctx of each deleter call, in order
DELETED_ON = []  # the name of the thread of each call (/proc: the library's threads have no Python name)
_LIVE = {}  # manager_ctx -> (managed tensor, shape, strides): alive until its deleter runs
_NEXT = [1]
_LOCK = threading.Lock()


def _thread_name():
    with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
        return f.read().strip()


def _deleted(ctx):
    with _LOCK:
        DELETED.append(ctx)
        DELETED_ON.append(_thread_name())
        _LIVE.pop(ctx, None)


@VERSIONED_DELETER
def _delete_versioned(p):
    _deleted(p.contents.manager_ctx)


@LEGACY_DELETER
def _delete_legacy(p):
    _deleted(p.contents.manager_ctx)


def managed(data, shape, *, device=(KDL_CUDA, 0), dtype=(FLOAT, 32, 1), strides=None, byte_offset=0, legacy=False,
            flags=0, version=(1, 1)):
    """A managed tensor (kept alive here until its deleter runs): (address, manager_ctx)."""
    with _LOCK:
        ctx = _NEXT[0]
        _NEXT[0] += 1
    shape_a = (ctypes.c_int64 * max(1, len(shape)))(*shape)
    strides_a = (ctypes.c_int64 * max(1, len(shape)))(*strides) if strides is not None else None
    t = DLTensor(data, DLDevice(*device), len(shape), DLDataType(*dtype),
                 ctypes.cast(shape_a, ctypes.POINTER(ctypes.c_int64)),
                 ctypes.cast(strides_a, ctypes.POINTER(ctypes.c_int64)) if strides_a is not None else None, byte_offset)
    if legacy:
        m = Legacy(t, ctx, _delete_legacy)
    else:
        m = Versioned(DLPackVersion(*version), ctx, _delete_versioned, flags, t)
    _LIVE[ctx] = (m, shape_a, strides_a)
    return ctypes.addressof(m), ctx


# The capsule API, with prototypes of our own (as the library's: ctypes.pythonapi's attributes are
# left as they are).
_api = ctypes.pythonapi
_DESTRUCTOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_new = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p, _DESTRUCTOR)(("PyCapsule_New", _api))
_is_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p)(("PyCapsule_IsValid", _api))
_get_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)(("PyCapsule_GetPointer", _api))
_get_name = ctypes.PYFUNCTYPE(ctypes.c_char_p, ctypes.py_object)(("PyCapsule_GetName", _api))


@_DESTRUCTOR
def _capsule_destructor(capsule):
    # The DLPack Python spec: a capsule still named "dltensor[_versioned]" was never consumed and
    # deletes its tensor; a consumed one ("used_...") leaves it to its consumer.
    for name, kind in ((b"dltensor_versioned", Versioned), (b"dltensor", Legacy)):
        if _is_valid(capsule, name):
            m = ctypes.cast(_get_pointer(capsule, name), ctypes.POINTER(kind)).contents
            m.deleter(ctypes.pointer(m))


_NAMES = (b"dltensor_versioned", b"dltensor")  # alive as long as the module: capsules keep the pointer


def capsule(data, shape, **kw):
    """A DLPack capsule over `data`: (capsule, manager_ctx)."""
    address, ctx = managed(data, shape, **kw)
    return _new(address, _NAMES[1] if kw.get("legacy") else _NAMES[0], _capsule_destructor), ctx


def capsule_name(c):
    return _get_name(c).decode()


class Producer:
    """An array of a framework (JAX, CuPy) over fake CUDA memory: __dlpack__ with the DLPack 2023
    signature (stream, max_version), or an older producer's (stream only: a TypeError for
    max_version), and __dlpack_device__. Records what each __dlpack__ call was asked."""

    def __init__(self, data, shape, *, device=(KDL_CUDA, 0), old=False, **kw):
        self.data, self.shape, self.device, self.old, self.kw = data, tuple(shape), device, old, kw
        self.calls = []
        self.made = []  # the manager_ctx of each capsule made

    def __dlpack_device__(self):
        return self.device

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        if self.old and max_version is not None:
            raise TypeError("__dlpack__() got an unexpected keyword argument 'max_version'")
        self.calls.append({"stream": stream, "max_version": max_version})
        legacy = max_version is None or max_version[0] < 1
        c, ctx = capsule(self.data, self.shape, device=self.device, legacy=legacy, **self.kw)
        self.made.append(ctx)
        return c
