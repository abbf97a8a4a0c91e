"""The checks of tests/gpu/check.sh (see there): run by it, with the agent already started."""
import ctypes
import os
import subprocess
import sys
import time

LIB = os.path.abspath(sys.argv[1])
ROOT = os.environ["ETB_GPU_CHECK_ROOT"]
DEVICE = int(os.environ["LOCAL_RANK"])
results = []


def check(name, ok, detail=""):
    results.append(bool(ok))
    print(f"{'ok' if ok else 'not ok'} - {name}{': ' + str(detail) if detail else ''}", flush=True)


P = ctypes.c_void_p
NAMING = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_int64, P, ctypes.c_size_t, P, ctypes.c_size_t, P)


class Options(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32), ("path_naming_fn", NAMING), ("user_data", P),
                ("connection_timeout_s", ctypes.c_double), ("cuda_mode", ctypes.c_int32)]


def load():
    lib = ctypes.CDLL(LIB)
    lib.etb_bootstrap_options_init.argtypes = [ctypes.POINTER(Options)]
    lib.etb_bootstrap_client_ex.argtypes = [ctypes.POINTER(Options), ctypes.POINTER(P), ctypes.POINTER(P)]
    lib.etb_bootstrap_client_ex.restype = ctypes.c_int32
    for name in ("etb_info_device_uuid", "etb_info_device_name", "etb_info_device_pci_bus_id", "etb_last_error_message"):
        getattr(lib, name).restype = ctypes.c_char_p
    for name in ("etb_info_device_uuid", "etb_info_device_name", "etb_info_device_pci_bus_id", "etb_info_cuda_bound",
                 "etb_info_cuda_driver_version", "etb_info_free"):
        getattr(lib, name).argtypes = [P]
    lib.etb_info_cuda_bound.restype = ctypes.c_bool
    lib.etb_info_cuda_driver_version.restype = ctypes.c_int32
    lib.etb_client_cuda_context.argtypes = [P]
    lib.etb_client_cuda_context.restype = P
    lib.etb_client_bind_current_thread.argtypes = [P]
    lib.etb_client_bind_current_thread.restype = ctypes.c_int32
    lib.etb_client_close.argtypes = [P]
    return lib


@NAMING
def naming(rank, cq, cq_cap, st, st_cap, _):
    for path, buf in ((f"{ROOT}/gpu_check_command.lmdb", cq), (f"{ROOT}/gpu_check_state.lmdb", st)):
        data = path.encode() + b"\0"
        ctypes.memmove(buf, data, len(data))
    return 0


def bootstrap(lib, mode):
    o = Options()
    lib.etb_bootstrap_options_init(ctypes.byref(o))
    o.path_naming_fn, o.connection_timeout_s, o.cuda_mode = naming, 10.0, mode
    client, info = P(), P()
    t0 = time.perf_counter()
    status = lib.etb_bootstrap_client_ex(ctypes.byref(o), ctypes.byref(client), ctypes.byref(info))
    return status, client, info, time.perf_counter() - t0


if "--cost" in sys.argv:
    # A fresh process that has not touched CUDA: what AUTO costs over SKIP.
    lib = load()
    for label, mode in (("SKIP", 2), ("AUTO", 0), ("AUTO again (context already retained)", 0)):
        status, client, info, took = bootstrap(lib, mode)
        print(f"# bootstrap with {label}: status {status}, {took * 1e3:.1f} ms", flush=True)
    sys.exit(0)

import torch  # noqa: E402  (after the --cost branch, which must not load CUDA first)

torch.cuda.set_device(DEVICE)
x = torch.ones(4, device=f"cuda:{DEVICE}")  # PyTorch initializes the device's primary context
libcuda = ctypes.CDLL("libcuda.so.1")
libcuda.cuCtxGetCurrent.argtypes = [ctypes.POINTER(P)]
torch_ctx = P()
libcuda.cuCtxGetCurrent(ctypes.byref(torch_ctx))

lib = load()
status, client, info, took = bootstrap(lib, 1)  # ETB_CUDA_REQUIRE
check("bootstrap with ETB_CUDA_REQUIRE in a PyTorch process", status == 0, lib.etb_last_error_message().decode())
if status == 0:
    ours = lib.etb_client_cuda_context(client)
    check("our context is PyTorch's current (primary) context", ours == torch_ctx.value, (hex(ours or 0), hex(torch_ctx.value or 0)))
    current = P()
    libcuda.cuCtxGetCurrent(ctypes.byref(current))
    check("still current after bootstrap", current.value == ours)
    props = torch.cuda.get_device_properties(DEVICE)
    want = f"GPU-{props.uuid}" if not str(props.uuid).startswith("GPU-") else str(props.uuid)
    got = lib.etb_info_device_uuid(info).decode()
    check("UUID matches torch.cuda.get_device_properties", got == want.lower(), (got, want))
    check("device name matches", lib.etb_info_device_name(info).decode() == props.name, lib.etb_info_device_name(info))
    check("driver version reported", lib.etb_info_cuda_driver_version(info) > 0, lib.etb_info_cuda_driver_version(info))
    print(f"# bootstrap took {took * 1e3:.2f} ms; device {lib.etb_info_device_name(info).decode()} "
          f"{lib.etb_info_device_pci_bus_id(info).decode()} {got}", flush=True)
    y = (x * 2).sum().item()
    check("a kernel runs after the bind", y == 8.0, y)
    import threading

    seen = {}

    def other_thread():
        seen["bind"] = lib.etb_client_bind_current_thread(client)
        c = P()
        libcuda.cuCtxGetCurrent(ctypes.byref(c))
        seen["ctx"] = c.value
        seen["sum"] = torch.ones(8, device=f"cuda:{DEVICE}").sum().item()

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    check("bind_current_thread on a second thread", seen.get("bind") == 0 and seen.get("ctx") == ours, seen)
    lib.etb_client_close(client)
    lib.etb_info_free(info)
    torch.cuda.synchronize()
    check("PyTorch still works after the client released its retain", torch.ones(2, device=f"cuda:{DEVICE}").sum().item() == 2.0)

cost = subprocess.run([sys.executable, __file__, LIB, "--cost"], capture_output=True, text=True, timeout=120)
print(cost.stdout.strip(), cost.stderr.strip()[-500:], flush=True)
check("AUTO and SKIP bootstraps in a fresh process", cost.returncode == 0 and cost.stdout.count("status 0,") == 3, cost.returncode)
passed = sum(results)
print(f"{passed} passed, {len(results) - passed} failed")
sys.exit(0 if passed == len(results) else 1)
