#!/usr/bin/env python3
"""Runs every suite on its standard runner and the non-test gates, sums every result in one
function (`summarize`), and ends with one line "N passed, N failed, N skipped". Exits non-zero
if anything failed.

- Rust: the workspace's test binaries (built by `cargo test --no-run`, then run one by one so
  that the leak check knows their pids), and some of them under valgrind;
- C and C++: built with CMake (tests/CMakeLists.txt) and run under ctest (labels c11, cxx17,
  sanitizers, valgrind, fake-driver);
- Python: pytest (the interop tests, also once per deployed py-lmdb/msgspec pair; packaging; the
  package in a fresh virtual environment);
- gates: cargo fmt, clippy, the short fuzz run, the benchmark smoke pass, the leak check.

A tool that is missing (valgrind, pkg-config, cmake) is reported as skipped with the reason.
Called by scripts/test.sh, which prepares .venv first."""
import json
import os
import pathlib
import re
import secrets
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import leak_check  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
TARGET = (ROOT / os.environ.get("CARGO_TARGET_DIR", "target")).resolve() / "debug"
BUILD = ROOT / "build" / "tests"
CMAKE_BUILD = BUILD / "cmake"
VENV_BIN = pathlib.Path(sys.executable).parent
# The deployed and the newest Python stack of the agent: (py-lmdb, msgspec) pairs, one virtual
# environment each, made once per machine (outside the clone) and reused.
INTEROP_MATRIX = [("1.7.5", "0.20.0"), ("2.1.1", "0.23.0"), ("3.0.0", "0.20.0")]
INTEROP_TESTS = ["tests/python/test_interop.py", "tests/python/test_commands.py", "tests/python/test_survival.py"]
# The agent's torch, pinned once (scripts/setup-torch-venv.sh makes its venv).
TORCH_VERSION = (ROOT / "tests" / "torch-version").read_text().strip()
totals = {"passed": 0, "failed": 0, "skipped": 0}


def log(msg):
    print(msg, flush=True)


def run(argv, register=False, **kw):
    """Runs a command; a run past its timeout comes back as a failed result, not an exception.
    With `register`, the process's pid goes into the run's ledger (the leak check's)."""
    log("$ " + " ".join(str(a) for a in argv))
    timeout = kw.pop("timeout", None)
    kw.setdefault("cwd", ROOT)
    proc = subprocess.Popen([str(a) for a in argv], text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    if register:
        leak_check.register(os.environ["ETB_TEST_LEDGER"], proc.pid)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        return subprocess.CompletedProcess(argv, 124, stdout or "", (stderr or "") + f"\nTIMED OUT after {timeout} s\n")


def show(out):
    sys.stdout.write(out.stdout)
    sys.stdout.write(out.stderr)
    sys.stdout.flush()


def record(suite, passed, failed, skipped=0, why=""):
    totals["passed"] += passed
    totals["failed"] += failed
    totals["skipped"] += skipped
    extra = f", {skipped} skipped" if skipped else ""
    log(f"== {suite}: {passed} passed, {failed} failed{extra}" + (f" ({why})" if why else ""))


def skip(suite, why):
    record(suite, 0, 0, 1, why)


def summarize(suite, kind, out, junit=None):
    """The one place that turns a runner's output into counts: `kind` is "cargo" (libtest's
    "test result:" lines), "pytest" (its last line), "ctest" (its JUnit file: each test counts
    the cases its program reports as "N passed, N failed", or one), "plain" (a "N passed, N
    failed" line) or "exit" (the exit status alone). A run that failed without any failure
    counted (a crash, a build error, a sanitizer's report) counts as one failure."""
    text = out.stdout + "\n" + out.stderr
    passed = failed = skipped = 0
    if kind == "cargo":
        for p, f, ign in re.findall(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", text):
            passed, failed, skipped = passed + int(p), failed + int(f), skipped + int(ign)
    elif kind == "pytest":
        lines = [l for l in out.stdout.strip().splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", l)]
        tail = lines[-1] if lines else ""
        passed = sum(int(x) for x in re.findall(r"(\d+) passed", tail))
        failed = sum(int(x) for x in re.findall(r"(\d+) (?:failed|errors?)\b", tail))
        skipped = sum(int(x) for x in re.findall(r"(\d+) skipped", tail))
    elif kind == "ctest":
        try:
            cases = list(ET.parse(junit).getroot().iter("testcase"))
        except (ET.ParseError, FileNotFoundError, TypeError):
            cases = []
        for case in cases:
            status = case.get("status")
            if status in ("notrun", "disabled") or case.find("skipped") is not None:
                skipped += 1
                continue
            inner = re.findall(r"^(\d+) passed, (\d+) failed$", case.findtext("system-out") or "", re.M)
            ok = status == "run" and case.find("failure") is None
            p, f = (int(inner[-1][0]), int(inner[-1][1])) if inner else (int(ok), int(not ok))
            if not ok and f == 0:
                f = 1
            passed, failed = passed + p, failed + f
    elif kind == "plain":
        m = re.findall(r"^(\d+) passed, (\d+) failed$", out.stdout, re.M)
        if m:
            passed, failed = int(m[-1][0]), int(m[-1][1])
    else:
        passed = int(out.returncode == 0)
    if out.returncode != 0 and failed == 0:
        failed, passed = 1, passed if kind != "exit" else 0
    if failed:
        show(out)
    record(suite, passed, failed, skipped)
    return failed == 0


def code_gates():
    """The code-health gates: the tree is formatted (rustfmt.toml) and clippy-clean, with every
    unsafe block documented."""
    summarize("cargo fmt --check", "exit", run(["cargo", "fmt", "--all", "--check"]))
    summarize("cargo clippy -D warnings -D clippy::undocumented_unsafe_blocks", "exit",
              run(["cargo", "clippy", "--workspace", "--all-targets", "--quiet", "--", "-D", "warnings", "-D",
                   "clippy::undocumented_unsafe_blocks"], timeout=1800))


def test_binaries():
    """The workspace's test executables, as cargo builds them: {name: (path, package folder)}."""
    out = run(["cargo", "test", "--workspace", "--no-run", "--message-format=json", "--quiet"], timeout=1800)
    if out.returncode != 0:
        summarize("cargo test --no-run (build the Rust tests)", "exit", out)
        return None
    found = {}
    for m in map(json.loads, (l for l in out.stdout.splitlines() if l.startswith("{"))):
        if m.get("reason") == "compiler-artifact" and m.get("executable") and m.get("profile", {}).get("test"):
            kinds, name = m["target"]["kind"], m["target"]["name"]
            key = f"lib {name}" if {"lib", "rlib", "cdylib", "staticlib"} & set(kinds) else name
            found[key] = (m["executable"], str(pathlib.Path(m["manifest_path"]).parent))
    return found


def rust_tests(binaries):
    """Every test binary, run as cargo would (from its package's folder), one after another."""
    env = dict(os.environ, ETB_DEV_AGENT=str(TARGET / "etb-dev-agent"))
    for name, (exe, folder) in sorted(binaries.items()):
        summarize(f"cargo test: {name}", "cargo",
                  run([exe, "--test-threads", "4"], register=True, cwd=folder, env=env, timeout=1200))


def rust_under_valgrind(binaries):
    """The unit tests of the core and of the C boundary, and the integration tests of bootstrap
    and of hostile inputs, under valgrind memcheck: no error, nothing definitely lost."""
    valgrind = shutil.which("valgrind")
    names = ("lib etb_core", "lib etha_tensor_bus", "bootstrap", "hostile")
    if not valgrind:
        for name in names:
            skip(f"cargo test binary {name} under valgrind", "valgrind is not installed (.ci/run installs it)")
        return
    vg = [valgrind, "-q", f"--suppressions={ROOT / 'tests' / 'valgrind.supp'}", "--error-exitcode=9", "--leak-check=full",
          "--errors-for-leak-kinds=definite", "--show-leak-kinds=definite"]
    env = dict(os.environ, ETB_DEV_AGENT=str(TARGET / "etb-dev-agent"))
    env.pop("ETB_CUDA_DRIVER_PATH", None)
    for name in names:
        if name not in binaries:
            record(f"find the {name} test binary", 0, 1)
            continue
        exe, folder = binaries[name]
        summarize(f"cargo test binary {name} under valgrind memcheck", "cargo",
                  run([*vg, exe, "--test-threads", "2"], register=True, cwd=folder, env=env, timeout=1800))


def c_tests():
    """The C test programs (C11 and C++17), their sanitizer and valgrind runs, the fake-driver
    builds and the C++ wrapper's test, built with CMake and run under ctest."""
    cmake, ctest = shutil.which("cmake", path=str(VENV_BIN)) or shutil.which("cmake"), \
        shutil.which("ctest", path=str(VENV_BIN)) or shutil.which("ctest")
    if not cmake or not ctest:
        skip("C and C++ tests (CMake, ctest)", "cmake is not installed: pip install cmake (.ci/run's venv has it)")
        return None
    configure = run([cmake, "-S", ROOT / "tests", "-B", CMAKE_BUILD, f"-DETB_TARGET_DIR={TARGET}"], timeout=600)
    if not summarize("configure the C and C++ tests (cmake)", "exit", configure):
        return None
    if not summarize("build the C and C++ tests (-Wall -Wextra -Werror)", "exit",
                     run([cmake, "--build", CMAKE_BUILD, "-j", "2"], timeout=1800)):
        return None
    junit = CMAKE_BUILD / "junit.xml"
    junit.unlink(missing_ok=True)
    out = run([ctest, "--test-dir", CMAKE_BUILD, "-j", "4", "--output-on-failure", "--output-junit", junit],
              timeout=3600)
    summarize("C and C++ tests (ctest: c11, cxx17, sanitizers, valgrind, fake-driver)", "ctest", out, junit)
    return CMAKE_BUILD


def pytest_suite(name, python, path, env, register=True):
    args = [path] if isinstance(path, str) else list(path)
    # pytest's tmp_path folders under build/, removed after the run: its default (/tmp/pytest-of-USER,
    # the last three runs kept) would leave them in /tmp after the suite.
    basetemp = BUILD / "pytest-tmp" / re.sub(r"[^A-Za-z0-9]+", "-", name)[:60]
    shutil.rmtree(basetemp, ignore_errors=True)
    basetemp.parent.mkdir(parents=True, exist_ok=True)
    try:
        summarize(name, "pytest", run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}",
                                       *args], register=register, env=env, timeout=1800))
    finally:
        shutil.rmtree(basetemp, ignore_errors=True)


def python_tests(c_build):
    env = dict(os.environ, ETB_LIBRARY_PATH=str(TARGET / "libetha_tensor_bus.so"),
               ETB_DEV_AGENT=str(TARGET / "etb-dev-agent"), ETB_CLI=str(TARGET / "etb"))
    if c_build:
        env["ETB_C_TEST_C"], env["ETB_C_TEST_CPP"] = str(c_build / "test_bootstrap_c"), str(c_build / "test_bootstrap_cpp")
    pytest_suite("Python interop and etb (pytest, ctypes, py-lmdb/msgspec/posix_ipc stand-in agent)", sys.executable,
                 "tests/python", env)
    return env


def interop_matrix(env):
    """The interop tests against each deployed py-lmdb/msgspec pair (and the newest), each in a
    small virtual environment kept under ~/.cache/etha-tensor-bus (made once per machine)."""
    cache = pathlib.Path(os.environ.get("ETB_CACHE_DIR", pathlib.Path.home() / ".cache" / "etha-tensor-bus"))
    for lmdb, msgspec in INTEROP_MATRIX:
        venv = cache / "interop" / f"lmdb-{lmdb}-msgspec-{msgspec}"
        python = venv / "bin" / "python"
        want = [f"lmdb=={lmdb}", f"msgspec=={msgspec}", "posix-ipc==1.3.2", "pytest==9.0.2"]
        stamp = venv / ".requirements"
        if not python.exists() or not stamp.exists() or stamp.read_text() != "\n".join(want):
            shutil.rmtree(venv, ignore_errors=True)
            venv.parent.mkdir(parents=True, exist_ok=True)
            made = run([sys.executable, "-m", "venv", venv], timeout=600)
            if made.returncode == 0:
                made = run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *want], timeout=1200)
            if made.returncode != 0:
                summarize(f"make the interop venv py-lmdb {lmdb} + msgspec {msgspec}", "exit", made)
                continue
            stamp.write_text("\n".join(want))
        probe = run([python, "-c", "import lmdb, msgspec; print(lmdb.__version__, '.'.join(map(str, lmdb.version())), "
                                   "msgspec.__version__)"], timeout=60)
        versions = probe.stdout.split()
        if probe.returncode != 0 or versions[0] != lmdb or versions[2] != msgspec:
            summarize(f"the interop venv has py-lmdb {lmdb} and msgspec {msgspec}", "exit",
                      subprocess.CompletedProcess(probe.args, 1, probe.stdout, probe.stderr))
            continue
        pytest_suite(f"interop with py-lmdb {lmdb} (LMDB {versions[1]}) + msgspec {msgspec}", str(python), INTEROP_TESTS,
                     env)


def torch_tests(c_build):
    """The native payloads against the real torch, pinned to the agent's version (TORCH_VERSION,
    tests/torch-version), in the virtual environment scripts/setup-torch-venv.sh makes once per
    machine (about 5 GB the first time)."""
    made = run(["scripts/setup-torch-venv.sh"], timeout=3000)
    if made.returncode != 0:
        summarize(f"make the torch {TORCH_VERSION} venv (scripts/setup-torch-venv.sh)", "exit", made)
        return
    python = made.stdout.strip().splitlines()[-1]
    if not c_build:
        record(f"native payloads against torch {TORCH_VERSION}", 0, 1, why="the fake CUDA driver was not built")
        return
    env = dict(os.environ, ETB_LIBRARY_PATH=str(TARGET / "libetha_tensor_bus.so"),
               ETB_DEV_AGENT=str(TARGET / "etb-dev-agent"), ETB_FAKE_CUDA=str(c_build / "libfakecuda_default.so"))
    pytest_suite(f"native payloads and the Python drop-in against torch {TORCH_VERSION} (pytest, fake CUDA driver)",
                 python, "tests/torch", env)


def packaging_tests():
    """CMake install, SONAME, pkg-config and find_package consumers, relocation."""
    pytest_suite("packaging (CMake install, pkg-config, find_package, relocation)", sys.executable,
                 "tests/packaging", dict(os.environ))


def python_package_tests():
    """The Python package as users install it: `pip install ./python` from a clean copy of the
    checkout (its tracked files) into a fresh virtual environment; setuptools-rust builds the
    library and etb with cargo and ships them. ETB_LIBRARY_PATH unset."""
    venv, tree = BUILD / "pkg-venv", BUILD / "pkg-tree"
    shutil.rmtree(venv, ignore_errors=True)
    shutil.rmtree(tree, ignore_errors=True)
    files = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tree / name)
    env = {k: v for k, v in os.environ.items() if k not in ("ETB_LIBRARY_PATH", "PYTHONPATH", "VIRTUAL_ENV")}
    # The package's cargo build, cached between runs of the suite (it builds in release mode).
    build_env = dict(env, CARGO_TARGET_DIR=str(BUILD / "pkg-cargo"))
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
              str(tree / "python"), "pytest==9.0.2", "posix-ipc==1.3.2", "tomli==2.2.1; python_version < '3.11'"]]
    for argv in steps:
        out = run(argv, env=build_env, timeout=1800)
        if out.returncode != 0:
            summarize("pip install ./python into a fresh venv (setuptools-rust builds the library)", "exit", out)
            return
    record("pip install ./python into a fresh venv (setuptools-rust builds the library)", 1, 0)
    env["ETB_DEV_AGENT"] = str(TARGET / "etb-dev-agent")
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    pytest_suite("Python package (fresh venv, shipped library)", str(venv / "bin" / "python"), "tests/python_package", env)


def fuzz_smoke():
    """A short libFuzzer run of every target (scripts/fuzz.sh, stable toolchain, pinned
    cargo-fuzz): each target passes if it ran and found no crash."""
    seconds = os.environ.get("ETB_FUZZ_SECONDS", "3")
    out = run(["scripts/fuzz.sh", seconds], timeout=3600)
    lines = re.findall(r"^(\w+): (\S+) executions, (.*)$", out.stdout, re.M)
    if not lines:
        summarize("fuzz smoke pass (scripts/fuzz.sh)", "plain", out)
        return
    for target, execs, verdict in lines:
        ok = verdict == "0 crashes" and execs.isdigit() and int(execs) > 0
        if not ok:
            show(out)
        record(f"fuzz {target} for {seconds} s: {execs} executions, {verdict}", int(ok), int(not ok))


def bench_smoke():
    """A quick pass of the benchmark code (release build), so that it does not rot; its figures
    are not judged here."""
    out = run(["bench/run.sh", "--quick"], timeout=1800)
    if out.returncode == 0 and "command round trip" not in out.stdout:
        out = subprocess.CompletedProcess(out.args, 1, out.stdout, out.stderr + "\nno round-trip figure printed\n")
    summarize("benchmark smoke pass (bench/run.sh --quick)", "exit", out)


def main():
    started = time.monotonic()
    BUILD.mkdir(parents=True, exist_ok=True)
    ledger = BUILD / f"ledger-{secrets.token_hex(4)}"
    os.environ["ETB_TEST_LEDGER"] = str(ledger)
    leak_check.register(ledger, os.getpid())
    before = leak_check.snapshot()
    natives_done = None
    code_gates()
    built = run(["scripts/build.sh"], timeout=1800)
    if summarize("cargo build --workspace", "exit", built):
        binaries = test_binaries()
        if binaries is not None:
            rust_tests(binaries)
        c_build = c_tests()
        if binaries is not None:
            rust_under_valgrind(binaries)
        # What the Rust and C tests left, seen before the Python tests run `etb gc`, which removes
        # dead workers' semaphores and counter files whoever left them (and would hide a leak).
        natives_done = leak_check.snapshot()
        env = python_tests(c_build)
        interop_matrix(env)
        torch_tests(c_build)
        packaging_tests()
        python_package_tests()
        fuzz_smoke()
        bench_smoke()
    pids = leak_check.read_ledger(ledger)
    left = sorted(set(leak_check.leaks(before, leak_check.snapshot(), pids)) |
                  set(leak_check.leaks(before, natives_done, pids) if natives_done is not None else ()))
    if left:
        log("left behind by the suite:\n  " + "\n  ".join(left))
    record("nothing of this run left in /dev/shm or /tmp", 0 if left else 1, 1 if left else 0)
    ledger.unlink(missing_ok=True)
    log(f"(took {time.monotonic() - started:.1f} s)")
    print(f"{totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped", flush=True)
    return 1 if totals["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
