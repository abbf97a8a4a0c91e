"""Packaging: the CMake build and install, the SONAME, pkg-config and find_package consumers
built against the installed (and then relocated) package and run against etb-dev-agent."""
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = (ROOT / os.environ.get("CARGO_TARGET_DIR", "target")).resolve() / "debug"
VERSION = re.search(r'^version = "([0-9.]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
MAJOR, MINOR, PATCH = VERSION.split(".")
SONAME = f"libetha_tensor_bus.so.0.{MINOR}" if MAJOR == "0" else f"libetha_tensor_bus.so.{MAJOR}"
CMAKE = str(pathlib.Path(sys.executable).parent / "cmake")


def run(argv, **kw):
    out = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{argv}\n{out.stdout}\n{out.stderr}"
    return out.stdout


def readelf_dynamic(path):
    return run(["readelf", "-d", path])


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Configure, build and install to a fresh prefix, with a stray CARGO_TARGET_DIR that must be
    ignored (never installing a stale library from elsewhere)."""
    base = tmp_path_factory.mktemp("pkg")
    stray = base / "stray-target"
    env = dict(os.environ, CARGO_TARGET_DIR=str(stray))
    build, prefix = base / "build", base / "prefix"
    run([CMAKE, "-S", ROOT, "-B", build, f"-DCMAKE_INSTALL_PREFIX={prefix}"], env=env)
    run([CMAKE, "--build", build], env=env)
    run([CMAKE, "--install", build], env=env)
    assert not stray.exists(), "the CMake build used the inherited CARGO_TARGET_DIR"
    return {"base": base, "build": build, "prefix": prefix}


@pytest.fixture
def agent():
    """A running etb-dev-agent for a rank of our own; yields the environment a worker needs."""
    rank = os.getpid() * 1000 + 900 + agent.counter
    agent.counter += 1
    proc = subprocess.Popen([TARGET / "etb-dev-agent", "--rank", str(rank), "--die-with-parent", "--exit-after", "120"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("ready")
    yield dict(os.environ, AGENT_RANK=str(rank), RANK="0")
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    proc.stdout.close()
    # The worker lock file, which the library never removes: the operator's (here the test's).
    pathlib.Path(f"/tmp/.agent_rank{rank}_state.lmdb.worker").unlink(missing_ok=True)


agent.counter = 0


def test_install_layout(installed):
    p = installed["prefix"]
    lib = p / "lib"
    assert (lib / f"libetha_tensor_bus.so.{VERSION}").is_file()
    assert os.readlink(lib / SONAME) == f"libetha_tensor_bus.so.{VERSION}"
    assert os.readlink(lib / "libetha_tensor_bus.so") == SONAME
    for f in ["lib/libetha_tensor_bus.a", "include/etha_tensor_bus.h", "include/etha_tensor_bus.hpp",
              "lib/cmake/EthaTensorBus/EthaTensorBusConfig.cmake",
              "lib/cmake/EthaTensorBus/EthaTensorBusConfigVersion.cmake", "lib/pkgconfig/etha-tensor-bus.pc"]:
        assert (p / f).is_file(), f
    assert not (p / "lib64").exists()


def test_the_node_tool_is_installed_in_bin(installed, tmp_path):
    etb = installed["prefix"] / "bin" / "etb"
    assert etb.is_file() and os.access(etb, os.X_OK)
    tpl = (f"{tmp_path}/x{{rank}}_state.lmdb", f"{tmp_path}/x{{rank}}_command.lmdb")
    out = subprocess.run([etb, "status", "--state", tpl[0], "--queue", tpl[1], "--json"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == '{"agents":[]}', out
    assert subprocess.run([etb], capture_output=True, timeout=30).returncode == 2, "usage error"


def test_the_stand_in_agent_is_installed_in_bin(installed, tmp_path):
    """`cmake --install` puts etb-dev-agent in bin/ (the README's "Try it" starts it from there):
    it runs, says ready, and cleans up after itself."""
    agent = installed["prefix"] / "bin" / "etb-dev-agent"
    assert agent.is_file() and os.access(agent, os.X_OK)
    out = subprocess.run([agent, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "usage: etb-dev-agent" in out.stdout, out
    st, cq = tmp_path / "try_state.lmdb", tmp_path / "try_command.lmdb"
    proc = subprocess.run([agent, "--state", st, "--command-queue", cq, "--exit-after", "0.2"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout.startswith("ready pid="), proc
    assert not st.exists() and not cq.exists(), "a clean exit removes its files"


def test_soname_exports_and_no_runpath(installed):
    real = installed["prefix"] / "lib" / f"libetha_tensor_bus.so.{VERSION}"
    dyn = readelf_dynamic(real)
    assert f"Library soname: [{SONAME}]" in dyn
    assert "RUNPATH" not in dyn and "RPATH" not in dyn
    assert "libcuda" not in dyn, "the CUDA driver must be loaded at run time, never linked"
    names = [l.split()[-1] for l in run(["nm", "-D", "--defined-only", real]).splitlines() if l.strip()]
    assert names and all(n.startswith("etb_") for n in names), [n for n in names if not n.startswith("etb_")]


def test_plain_cargo_build_links_and_runs_from_the_target_folder(tmp_path):
    """A plain `cargo build` sets no SONAME (only installing builds do), so a C program linked
    against target/<profile> records the file it linked and runs against it there."""
    assert "Library soname" not in readelf_dynamic(TARGET / "libetha_tensor_bus.so")
    src = tmp_path / "version.c"
    src.write_text('#include <stdio.h>\n#include "etha_tensor_bus.h"\n'
                   'int main(void) { printf("%s\\n", etb_version()); return 0; }\n')
    exe = tmp_path / "version"
    run(["cc", "-std=c11", "-Wall", "-Werror", f"-I{ROOT / 'include'}", src, f"-L{TARGET}",
         "-letha_tensor_bus", "-o", exe])
    assert "Shared library: [libetha_tensor_bus.so]" in readelf_dynamic(exe)
    env = dict(os.environ, LD_LIBRARY_PATH=str(TARGET))
    assert run([exe], env=env).strip() == VERSION


def test_no_installed_file_names_the_source_or_build_tree(installed):
    needles = [str(ROOT).encode(), str(installed["build"]).encode()]
    for path in installed["prefix"].rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            for needle in needles:
                assert needle not in data, f"{path} names {needle.decode()}"


def pkg_config_build(prefix, out):
    if not shutil.which("pkg-config"):
        pytest.skip("pkg-config is not installed (.ci/run installs it)")
    env = dict(os.environ, PKG_CONFIG_PATH=str(prefix / "lib" / "pkgconfig"))
    flags = run(["pkg-config", "--cflags", "--libs", "etha-tensor-bus"], env=env).split()
    assert f"-I{prefix}/lib/pkgconfig/../../include" in flags or f"-I{prefix}/include" in flags, flags
    run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", ROOT / "examples" / "c" / "demo.c", *flags, "-o", out])
    return out


def test_pkg_config_consumer(installed, agent):
    exe = pkg_config_build(installed["prefix"], installed["base"] / "demo_pkgconfig")
    dyn = readelf_dynamic(exe)
    assert f"Shared library: [{SONAME}]" in dyn
    assert str(installed["build"]) not in dyn and str(ROOT) not in dyn
    out = run([exe], env=dict(agent, LD_LIBRARY_PATH=str(installed["prefix"] / "lib")))
    assert "worker bootstrapped" in out and f"agent_rank         = {agent['AGENT_RANK']}" in out


def cmake_consumer(prefix, build, env):
    run([CMAKE, "-S", ROOT / "examples" / "cmake", "-B", build, f"-DCMAKE_PREFIX_PATH={prefix}"], env=env)
    run([CMAKE, "--build", build], env=env)
    ctest = str(pathlib.Path(CMAKE).parent / "ctest")
    return run([ctest, "--output-on-failure"], cwd=build, env=env)


def test_cmake_consumer_under_ctest(installed, agent):
    out = cmake_consumer(installed["prefix"], installed["base"] / "consumer", agent)
    assert "100% tests passed" in out and "3 tests" in out.replace("out of 3", "3 tests"), out
    dyn = readelf_dynamic(installed["base"] / "consumer" / "demo_c")
    assert f"Shared library: [{SONAME}]" in dyn


def test_relocated_prefix(installed, agent):
    moved = installed["base"] / "moved" / "elsewhere"
    moved.parent.mkdir()
    shutil.copytree(installed["prefix"], moved, symlinks=True)
    out = cmake_consumer(moved, installed["base"] / "consumer-moved", agent)
    assert "100% tests passed" in out, out
    exe = pkg_config_build(moved, installed["base"] / "demo_pkgconfig_moved")
    out = run([exe], env=dict(agent, LD_LIBRARY_PATH=str(moved / "lib")))
    assert "worker bootstrapped" in out


def test_version_compatibility(installed, tmp_path):
    for wanted, ok in [("0.1", True), (f"0.{MINOR}.{PATCH}", True), ("0.2", False), ("1.0", False)]:
        proj = tmp_path / f"v{wanted}"
        proj.mkdir()
        (proj / "CMakeLists.txt").write_text(
            f"cmake_minimum_required(VERSION 3.16)\nproject(v LANGUAGES C)\nfind_package(EthaTensorBus {wanted} CONFIG REQUIRED)\n")
        out = subprocess.run([CMAKE, "-S", proj, "-B", proj / "b", f"-DCMAKE_PREFIX_PATH={installed['prefix']}"],
                             capture_output=True, text=True)
        assert (out.returncode == 0) == ok, (wanted, out.stderr[-500:])


def test_absolute_libdir_gives_absolute_pc_paths(tmp_path):
    build = tmp_path / "abs"
    run([CMAKE, "-S", ROOT, "-B", build, "-DCMAKE_INSTALL_LIBDIR=/opt/abs/lib64", "-DCMAKE_INSTALL_PREFIX=/opt/abs"])
    pc = (build / "etha-tensor-bus.pc").read_text()
    assert "libdir=/opt/abs/lib64" in pc and "prefix=/opt/abs" in pc and "//" not in pc.split("Libs")[0], pc


def test_wheel_with_the_library_is_platform_tagged(tmp_path):
    """`pip wheel ./python` from a copy of the checkout (what git tracks, and what it does not
    ignore): setuptools-rust builds the library and etb; the wheel is platform-tagged and ships
    both. Nothing is copied by hand."""
    tree = tmp_path / "tree"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    assert not list((tree / "python").rglob("*.so*")), "the copy must hold no built library"
    env = dict(os.environ, CARGO_TARGET_DIR=str(ROOT / "build" / "tests" / "pkg-cargo"))
    env.pop("ETB_LIBRARY_PATH", None)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check", "-w", tmp_path / "dist",
         tree / "python"], env=env)
    wheels = [p.name for p in (tmp_path / "dist").glob("*.whl")]
    assert len(wheels) == 1 and "none-any" not in wheels[0] and "linux" in wheels[0], wheels
    import zipfile

    names = zipfile.ZipFile(tmp_path / "dist" / wheels[0]).namelist()
    assert any(n.startswith("etha_tensor_bus/libetha_tensor_bus") and ".so" in n for n in names), names
    assert any(n.endswith(".data/scripts/etb") for n in names), names
