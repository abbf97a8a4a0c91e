"""tests/gpu/dlpack.sh's two processes. `produce` (no torch): a CuPy array (JAX if CuPy is missing)
on cuda:LOCAL_RANK, its capsule through etb_client_dlpack_payload, the payload's bytes handed to
`consume` (the torch python), which unpickles them with ForkingPickler.loads, checks the values,
writes 42.0 into element 0, synchronizes and drops its tensor; then the producer checks the write,
etb_payload_in_use false, and the capsule's deleter run once by etb_payload_free."""
import ctypes
import os
import subprocess
import sys

results = []


def check(name, ok, detail=""):
    results.append(ok)
    print(("ok - " if ok else "not ok - ") + name + ("" if ok else f": {detail}"), flush=True)


def consume(path):
    import torch
    from multiprocessing.reduction import ForkingPickler

    t = ForkingPickler.loads(open(path, "rb").read())
    ok = t.is_cuda and t.tolist() == [float(i) for i in range(16)]
    t[0] = 42.0
    torch.cuda.synchronize()
    del t
    print("consumer", "ok" if ok else "values differ", flush=True)
    sys.exit(0 if ok else 1)


def produce(lib_path, torch_python, work):
    lib = ctypes.CDLL(lib_path)
    P = ctypes.c_void_p
    lib.etb_last_error_message.restype = ctypes.c_char_p
    lib.etb_payload_data.restype = P
    lib.etb_payload_data.argtypes = [P]
    lib.etb_payload_len.restype = ctypes.c_size_t
    lib.etb_payload_len.argtypes = [P]
    lib.etb_client_dlpack_payload.argtypes = [P, P, ctypes.c_int32, P, ctypes.POINTER(P)]
    lib.etb_payload_in_use.argtypes = [P, ctypes.POINTER(ctypes.c_bool)]
    lib.etb_payload_free.argtypes = [P]
    lib.etb_bootstrap_client.argtypes = [ctypes.POINTER(P), ctypes.POINTER(P)]
    client, info = P(), P()
    if lib.etb_bootstrap_client(ctypes.byref(client), ctypes.byref(info)) != 0:
        check("bootstrap", False, lib.etb_last_error_message())
        return
    device = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        import cupy
        with cupy.cuda.Device(device):
            x = cupy.arange(16, dtype=cupy.float32)
        producer = "cupy"
    except ImportError:
        import jax
        import jax.numpy as jnp
        x = jax.device_put(jnp.arange(16, dtype=jnp.float32), jax.local_devices()[device])
        producer = "jax"
    try:
        cap = x.__dlpack__(stream=1, max_version=(1, 1))
    except TypeError:
        cap = x.__dlpack__(stream=1)
    api = ctypes.pythonapi
    api.PyCapsule_IsValid.argtypes = [ctypes.py_object, ctypes.c_char_p]
    api.PyCapsule_GetPointer.restype = P
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    api.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]
    versioned = bool(api.PyCapsule_IsValid(cap, b"dltensor_versioned"))
    name, used = (b"dltensor_versioned", b"used_dltensor_versioned") if versioned else (b"dltensor", b"used_dltensor")
    make = lib.etb_client_dlpack_payload if versioned else lib.etb_client_dlpack_legacy_payload
    make.argtypes = [P, P, ctypes.c_int32, P, ctypes.POINTER(P)]
    payload = P()
    status = make(client, api.PyCapsule_GetPointer(cap, name), 1, None, ctypes.byref(payload))
    check(f"{producer} {'versioned' if versioned else 'legacy'} capsule -> payload", status == 0,
          lib.etb_last_error_message())
    if status != 0:
        return
    api.PyCapsule_SetName(cap, used)
    path = os.path.join(work, "payload.bin")
    with open(path, "wb") as f:
        f.write(ctypes.string_at(lib.etb_payload_data(payload), lib.etb_payload_len(payload)))
    out = subprocess.run([torch_python, __file__, "consume", path], capture_output=True, text=True, timeout=300)
    check("a torch process opens it and sees the values", out.returncode == 0, out.stdout + out.stderr)
    busy = ctypes.c_bool(True)
    lib.etb_payload_in_use(payload, ctypes.byref(busy))
    check("the reference counter is back at 0", not busy.value)
    check("the consumer's write is seen", float(x[0]) == 42.0, repr(x[0]))
    lib.etb_payload_free(payload)  # the capsule's deleter runs here (the slot reads 0)
    del cap
    check("freed: the producer's array still valid after its deleter", float(x[1]) == 1.0)
    lib.etb_client_close(client)


if __name__ == "__main__":
    if sys.argv[1] == "consume":
        consume(sys.argv[2])
    produce(*sys.argv[2:5])
    print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
    sys.exit(0 if all(results) else 1)
