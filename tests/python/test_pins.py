"""Facts written once, read everywhere:

- the version (Cargo.toml's workspace version) appears in no other source, script or build file;
  each reader derives it (the header's ETB_VERSION_* macros from src/ffi/version.rs, the Python
  package from the header and, for the wheel, setup.py from Cargo.toml, the CMake build from
  Cargo.toml);
- the agent's torch version is pinned in tests/torch-version alone: scripts/setup-torch-venv.sh
  (the venv and its folder, torch-<version>), tests/run_all.py, tests/torch/ and tests/gpu/ read
  it, and the README names the file instead of the number."""
import re
import subprocess

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

from conftest import ROOT

# Where a version may be written in prose (the README's install example names the library's
# file), records of what was measured, and the lock file cargo writes.
PROSE = ("README.md", "docs/", "bench/README.md", "bench/results.json", "Cargo.lock")
CODE = re.compile(r"\.(rs|toml|py|sh|txt|cmake|in|c|cpp|h|hpp|cfg|json)$|^\.ci/run$")


def tracked():
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [f for f in out.split("\0") if f and CODE.search(f) and not f.startswith(PROSE)]


def cargo_version():
    return tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]


def test_the_version_is_written_once():
    version = cargo_version()
    pattern = re.compile(rf"(?<![\d.]){re.escape(version)}(?![\d.])")
    found = [f"{name}:{n}: {line.strip()}" for name in tracked() if name != "Cargo.toml" and (ROOT / name).is_file()
             for n, line in enumerate((ROOT / name).read_text(errors="replace").splitlines(), 1)
             if pattern.search(line)]
    assert not found, f"the version {version} is written outside Cargo.toml (derive it instead):\n" + "\n".join(found)
    lines = [line.strip() for line in (ROOT / "Cargo.toml").read_text().splitlines() if pattern.search(line)]
    assert len(lines) == 1, f"Cargo.toml writes the version once, in [workspace.package], not in {lines}"


def test_the_torch_pin_is_written_once():
    pin = (ROOT / "tests" / "torch-version").read_text()
    assert re.fullmatch(r"\d+\.\d+\.\d+\n", pin), f"tests/torch-version is one version line, not {pin!r}"
    pattern = re.compile(rf"(?<![\d.]){re.escape(pin.strip())}(?![\d.])|torch==\d|torch-\d")
    found = [f"{name}:{n}: {line.strip()}" for name in tracked() + ["README.md"] if (ROOT / name).is_file()
             for n, line in enumerate((ROOT / name).read_text(errors="replace").splitlines(), 1)
             if pattern.search(line)]
    assert not found, "the torch version is written outside tests/torch-version (read it there):\n" + "\n".join(found)
