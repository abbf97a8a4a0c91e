#!/usr/bin/env python3
"""Runs every suite (Rust unit and integration tests with the header check, the C test program
compiled as C11 and as C++17, the Python interop tests) and a leak check, then prints one line
"N passed, N failed" over all of them. Exits non-zero if anything failed.

Called by scripts/test.sh, which prepares .venv first."""
import os
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET = (ROOT / os.environ.get("CARGO_TARGET_DIR", "target")).resolve() / "debug"
BUILD = ROOT / "build" / "tests"
totals = {"passed": 0, "failed": 0}


def log(msg):
    print(msg, flush=True)


def count(suite, passed, failed):
    totals["passed"] += passed
    totals["failed"] += failed
    log(f"== {suite}: {passed} passed, {failed} failed")


def run(argv, **kw):
    """Runs a command; a run past its timeout comes back as a failed result, not an exception."""
    log("$ " + " ".join(str(a) for a in argv))
    try:
        return subprocess.run(argv, cwd=ROOT, text=True, capture_output=True, **kw)
    except subprocess.TimeoutExpired as e:
        text = lambda b: (b.decode(errors="replace") if isinstance(b, bytes) else b) or ""
        return subprocess.CompletedProcess(argv, 124, text(e.stdout), text(e.stderr) + f"\nTIMED OUT after {e.timeout} s\n")


def show(out):
    sys.stdout.write(out.stdout)
    sys.stdout.write(out.stderr)
    sys.stdout.flush()


def ipc_snapshot():
    """What our tests could leave: semaphores and agent files."""
    names = set()
    for n in os.listdir("/dev/shm"):
        if n.startswith(("sem.cq_", "sem.command_", "sem.etb_", "etb-bench-")):
            names.add("/dev/shm/" + n)
    tmp = pathlib.Path(os.environ.get("TMPDIR", "/tmp"))
    for folder in {tmp, pathlib.Path("/tmp")}:
        for n in os.listdir(folder):
            if n.startswith(("agent_rank", "etb-test-", "etb-lmdb-unit-", "etb-demo-")):
                names.add(str(folder / n))
    return names


def cargo_tests():
    out = run(["scripts/build.sh"])
    if out.returncode != 0:
        show(out)
        count("cargo build", 0, 1)
        return False
    out = run(["cargo", "test", "--workspace", "--no-fail-fast", "--quiet", "--", "--test-threads", "4"], timeout=1200)
    show(out)
    passed = sum(int(m) for m in re.findall(r"test result: \w+\. (\d+) passed", out.stdout))
    failed = sum(int(m) for m in re.findall(r"(\d+) failed;", out.stdout))
    if out.returncode != 0 and failed == 0:
        failed = 1  # a build error or a crash of the test harness
    count("cargo test (unit, integration, header freshness)", passed, failed)
    return True


def c_tests():
    """Each tests/c/test_*.c, compiled as C11 and as C++17, then run against etb-dev-agent."""
    BUILD.mkdir(parents=True, exist_ok=True)
    flags = ["-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'include'}"]
    link = [f"-L{TARGET}", "-letha_tensor_bus", f"-Wl,-rpath,{TARGET}", "-lm", "-ldl", "-lpthread"]
    binaries = {}
    fakes = {"": [], "unversioned": ["-DFAKE_UNVERSIONED"], "missing": ["-DFAKE_NO_RETAIN"]}
    for variant, defines in fakes.items():
        out = run(["cc", "-std=c11", "-shared", "-fPIC", *flags, *defines, str(ROOT / "tests" / "fake_cuda" / "fake_cuda.c"),
                   "-lpthread", "-o", str(BUILD / f"libfakecuda{variant}.so")])
        show(out) if out.returncode else None
        count(f"compile the fake CUDA driver {variant or 'default'}", int(out.returncode == 0), int(out.returncode != 0))
    for src in sorted((ROOT / "tests" / "c").glob("test_*.c")):
        for flavour in ("c", "cpp"):
            out_path = BUILD / f"{src.stem}_{flavour}"
            if flavour == "c":
                argv = ["cc", "-std=c11", *flags, str(src), *link, "-o", str(out_path)]
            else:
                argv = ["c++", "-std=c++17", *flags, "-x", "c++", str(src), "-x", "none", *link, "-o", str(out_path)]
            out = run(argv)
            if out.returncode != 0:
                show(out)
                count(f"compile {src.name} as {flavour}", 0, 1)
                continue
            count(f"compile {src.name} as {flavour} with -Wall -Wextra -Werror", 1, 0)
            binaries[(src.stem, flavour)] = str(out_path)
    env = dict(os.environ, ETB_DEV_AGENT=str(TARGET / "etb-dev-agent"))
    env.pop("ETB_EXTERNAL_AGENT_PID", None)
    env.pop("ETB_CUDA_DRIVER_PATH", None)
    runs = []
    for (stem, flavour), binary in binaries.items():
        if stem != "test_cuda":
            # The others run as on a machine without a CUDA driver.
            runs.append((f"{stem} as {flavour}", binary, env))
            continue
        # The CUDA test loads a fake driver; one per process (the driver is loaded once).
        for variant in fakes if flavour == "c" else [""]:
            case_env = dict(env, ETB_CUDA_DRIVER_PATH=str(BUILD / f"libfakecuda{variant}.so"), ETB_TEST_CUDA_VARIANT=variant)
            runs.append((f"{stem} as {flavour}, fake driver {variant or 'default'}", binary, case_env))
    for name, binary, case_env in runs:
        out = run([binary], env=case_env, timeout=600)
        show(out)
        m = re.search(r"^(\d+) passed, (\d+) failed$", out.stdout, re.M)
        passed, failed = (int(m.group(1)), int(m.group(2))) if m else (0, 1)
        if out.returncode != 0 and failed == 0:
            failed = 1
        count(name, passed, failed)
    return {flavour: path for (stem, flavour), path in binaries.items() if stem == "test_bootstrap"}


def sanitizer_and_valgrind_tests():
    """The C tests built with AddressSanitizer + UBSan (LeakSanitizer included), and run under
    valgrind memcheck, as are the library's unit tests: no error, nothing definitely lost."""
    import json
    import shutil

    flags = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
             "-fno-omit-frame-pointer", "-g", f"-I{ROOT / 'include'}"]
    link = [f"-L{TARGET}", "-letha_tensor_bus", f"-Wl,-rpath,{TARGET}", "-lm", "-ldl", "-lpthread"]
    env = dict(os.environ, ETB_DEV_AGENT=str(TARGET / "etb-dev-agent"), ASAN_OPTIONS="detect_leaks=1")
    env.pop("ETB_CUDA_DRIVER_PATH", None)

    def judge(name, out):
        m = re.search(r"^(\d+) passed, (\d+) failed$", out.stdout, re.M) or re.search(r"test result: \w+\. (\d+) passed; (\d+) failed", out.stdout)
        passed, failed = (int(m.group(1)), int(m.group(2))) if m else (0, 1)
        if out.returncode != 0 and failed == 0:
            failed = 1  # a sanitizer or valgrind report
        if failed:
            show(out)
        count(name, passed, failed)

    for stem in ("test_bootstrap", "test_commands", "test_cuda"):
        exe = BUILD / f"{stem}_asan"
        out = run(["cc", *flags, str(ROOT / "tests" / "c" / f"{stem}.c"), *link, "-o", str(exe)])
        if out.returncode != 0:
            show(out)
            count(f"compile {stem} with ASan/UBSan", 0, 1)
            continue
        case_env = dict(env, ETB_CUDA_DRIVER_PATH=str(BUILD / "libfakecuda.so")) if stem == "test_cuda" else env
        judge(f"{stem} under ASan/LSan/UBSan", run([str(exe)], env=case_env, timeout=900))
    valgrind = shutil.which("valgrind")
    if not valgrind:
        count("valgrind is installed (.ci/run installs it)", 0, 1)
        return
    vg = [valgrind, "-q", f"--suppressions={ROOT / 'tests' / 'valgrind.supp'}", "--error-exitcode=9", "--leak-check=full",
          "--errors-for-leak-kinds=definite", "--show-leak-kinds=definite"]
    for stem in ("test_bootstrap", "test_commands"):
        judge(f"{stem} under valgrind memcheck", run([*vg, str(BUILD / f"{stem}_c")], env=env, timeout=1800))
    out = run(["cargo", "test", "--workspace", "--no-run", "--message-format=json"])
    found = {}
    for m in map(json.loads, out.stdout.splitlines()):
        if m.get("executable") and m.get("profile", {}).get("test"):
            kinds, name = m["target"]["kind"], m["target"]["name"]
            found[f"lib {name}" if {"lib", "rlib", "cdylib", "staticlib"} & set(kinds) else name] = m["executable"]
    # The unit tests of the core and of the C boundary, and the integration tests of bootstrap
    # and of hostile inputs.
    for name in ("lib etb_core", "lib etha_tensor_bus", "bootstrap", "hostile"):
        if name not in found:
            count(f"find the {name} test binary", 0, 1)
            continue
        judge(f"cargo test binary {name} under valgrind memcheck",
              run([*vg, found[name], "--test-threads", "2"], env=env, timeout=1800))


def cpp_wrapper_tests():
    """The C++ wrapper: -Wpedantic clean, run under AddressSanitizer, LeakSanitizer and UBSan."""
    BUILD.mkdir(parents=True, exist_ok=True)
    exe = BUILD / "test_wrapper_asan"
    argv = ["c++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-Wpedantic", "-fsanitize=address,undefined",
            "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g", f"-I{ROOT / 'include'}",
            str(ROOT / "tests" / "cpp" / "test_wrapper.cpp"), f"-L{TARGET}", "-letha_tensor_bus",
            f"-Wl,-rpath,{TARGET}", "-o", str(exe)]
    out = run(argv)
    if out.returncode != 0:
        show(out)
        count("compile the C++ wrapper test with sanitizers", 0, 1)
        return
    count("compile the C++ wrapper test (-Wpedantic, ASan, UBSan)", 1, 0)
    env = dict(os.environ, ETB_DEV_AGENT=str(TARGET / "etb-dev-agent"), ASAN_OPTIONS="detect_leaks=1")
    out = run([str(exe)], env=env, timeout=600)
    show(out)
    m = re.search(r"^(\d+) passed, (\d+) failed$", out.stdout, re.M)
    passed, failed = (int(m.group(1)), int(m.group(2))) if m else (0, 1)
    if out.returncode != 0 and failed == 0:
        failed = 1  # a sanitizer report makes the run fail
    count("C++ wrapper under ASan/LSan/UBSan", passed, failed)


def pytest_suite(name, python, path, env):
    out = run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", path], env=env, timeout=1800)
    show(out)
    tail = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    passed = int(m.group(1)) if (m := re.search(r"(\d+) passed", tail)) else 0
    failed = sum(int(x) for x in re.findall(r"(\d+) (?:failed|error)", tail))
    if out.returncode != 0 and failed == 0:
        failed = 1
    count(name, passed, failed)


def packaging_tests():
    """CMake install, SONAME, pkg-config and find_package consumers, relocation."""
    pytest_suite("packaging (CMake install, pkg-config, find_package, relocation)", sys.executable,
                 "tests/packaging", dict(os.environ))


def python_package_tests():
    """The Python package pip-installed (with the library inside) into a fresh virtual environment."""
    import shutil

    venv, src = BUILD / "pkg-venv", BUILD / "pkg-src"
    shutil.rmtree(venv, ignore_errors=True)
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(ROOT / "python", src, ignore=shutil.ignore_patterns("*.so*", "__pycache__", "*.egg-info", "build"))
    shutil.copy2(TARGET / "libetha_tensor_bus.so", src / "etha_tensor_bus" / "libetha_tensor_bus.so")
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(src),
              "pytest==9.0.2"]]
    for argv in steps:
        out = run(argv, timeout=900)
        if out.returncode != 0:
            show(out)
            count("install the Python package into a fresh venv", 0, 1)
            return
    count("pip install the Python package into a fresh venv", 1, 0)
    env = {k: v for k, v in os.environ.items() if k not in ("ETB_LIBRARY_PATH", "PYTHONPATH", "VIRTUAL_ENV")}
    env["ETB_DEV_AGENT"] = str(TARGET / "etb-dev-agent")
    pytest_suite("Python package (fresh venv, shipped library)", str(venv / "bin" / "python"),
                 "tests/python_package", env)


def fuzz_smoke():
    """A short libFuzzer run of every target (scripts/fuzz.sh, stable toolchain, pinned
    cargo-fuzz): each target passes if it ran and found no crash."""
    seconds = os.environ.get("ETB_FUZZ_SECONDS", "3")
    out = run(["scripts/fuzz.sh", seconds], timeout=3600)
    lines = re.findall(r"^(\w+): (\S+) executions, (.*)$", out.stdout, re.M)
    if not lines:
        show(out)
        count("fuzz smoke pass (scripts/fuzz.sh)", 0, 1)
        return
    for target, execs, verdict in lines:
        ok = verdict == "0 crashes" and execs.isdigit() and int(execs) > 0
        if not ok:
            show(out)
        count(f"fuzz {target} for {seconds} s: {execs} executions, {verdict}", int(ok), int(not ok))


def bench_smoke():
    """A quick pass of the benchmark code (release build), so that it does not rot; its figures
    are not judged here."""
    out = run(["bench/run.sh", "--quick"], timeout=1800)
    ok = out.returncode == 0 and "command round trip" in out.stdout
    if not ok:
        show(out)
    count("benchmark smoke pass (bench/run.sh --quick)", int(ok), int(not ok))


def python_tests(binaries):
    env = dict(os.environ, ETB_LIBRARY_PATH=str(TARGET / "libetha_tensor_bus.so"))
    for flavour in ("c", "cpp"):
        if flavour in binaries:
            env[f"ETB_C_TEST_{flavour.upper()}"] = binaries[flavour]
    out = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/python"], env=env, timeout=900)
    show(out)
    tail = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    passed = int(m.group(1)) if (m := re.search(r"(\d+) passed", tail)) else 0
    failed = sum(int(x) for x in re.findall(r"(\d+) (?:failed|error)", tail))
    if out.returncode not in (0,) and failed == 0:
        failed = 1
    count("Python interop (pytest, ctypes, py-lmdb/msgspec/posix_ipc stand-in agent)", passed, failed)


def code_gates():
    """The code-health gates: the tree is formatted (rustfmt.toml) and clippy-clean, with every
    unsafe block documented. Each is one result."""
    out = run(["cargo", "fmt", "--all", "--check"])
    if out.returncode != 0:
        show(out)
    count("cargo fmt --check", int(out.returncode == 0), int(out.returncode != 0))
    out = run(["cargo", "clippy", "--workspace", "--all-targets", "--quiet", "--",
               "-D", "warnings", "-D", "clippy::undocumented_unsafe_blocks"], timeout=1200)
    if out.returncode != 0:
        show(out)
    count("cargo clippy -D warnings -D clippy::undocumented_unsafe_blocks", int(out.returncode == 0), int(out.returncode != 0))


def main():
    started = time.monotonic()
    before = ipc_snapshot()
    code_gates()
    if cargo_tests():
        binaries = c_tests()
        sanitizer_and_valgrind_tests()
        cpp_wrapper_tests()
        python_tests(binaries)
        packaging_tests()
        python_package_tests()
        fuzz_smoke()
        bench_smoke()
    left = sorted(ipc_snapshot() - before)
    if left:
        log("left behind by the suite:\n  " + "\n  ".join(left))
    count("nothing left in /dev/shm or /tmp", 0 if left else 1, 1 if left else 0)
    log(f"(took {time.monotonic() - started:.1f} s)")
    print(f"{totals['passed']} passed, {totals['failed']} failed", flush=True)
    return 1 if totals["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
