"""The tables the docs copy from the header, checked against it (the header itself is generated
from src/ffi/, whose dtype constants tests/header.rs checks against the core's table): the
README's status codes and dtype list, docs/torch-ipc.md's dtype list with the element sizes the
library reports, and every ETB_* name the README mentions."""
import re
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import python_abi  # noqa: E402

README = ROOT / "README.md"
TORCH_IPC = ROOT / "docs" / "torch-ipc.md"


@pytest.fixture(scope="module")
def header():
    return python_abi.parse()


def statuses(header):
    return [(v, k) for k, v in header.defines.items() if k == "ETB_OK" or k.startswith("ETB_ERR_")]


def dtypes(header):
    return [(v, k[len("ETB_DTYPE_"):]) for k, v in header.defines.items() if k.startswith("ETB_DTYPE_")]


def test_readme_status_table_is_the_headers(header):
    rows = [(int(code), name) for code, name in re.findall(r"^\| +(\d+) \| `(ETB_\w+)` \|", README.read_text(), re.M)]
    assert rows == statuses(header), "README's status table (## Status codes) differs from the header's ETB_OK/ETB_ERR_*"


def test_readme_dtype_list_is_the_headers(header):
    text = README.read_text()
    para = text[text.index("- dtypes: "):]
    para = para[:para.index("(`etb_dtype_name`")]
    listed = [(int(code), name) for name, code in re.findall(r"`(?:ETB_DTYPE_)?(\w+)` (\d+)", para)]
    assert listed == dtypes(header), "README's dtype list (Native payloads) differs from the header's ETB_DTYPE_*"


def test_torch_ipc_dtype_list_is_the_librarys(header, lib):
    text = TORCH_IPC.read_text()
    para = text[text.index("Dtypes, numbered for the C ABI"):]
    para = para[:para.index("The opening bytes")]
    listed = [(int(code), name, int(size)) for code, name, size in re.findall(r"(\d+) `(\w+)`\s+\((\d+)", para)]
    want = [(code, name.lower(), lib.etb_dtype_size(code)) for code, name in dtypes(header)]
    assert listed == want, "docs/torch-ipc.md's dtype list (section 1) differs from the header's and the library's"


# Names of the README's that are not the C ABI's.
NOT_ABI = {"ETB_CUDA_DRIVER_PATH": "an environment variable", "ETB_ERR_X": "a message's placeholder",
           "etb_function": "a message's placeholder", "etb_target": "the attribute of a Python log record"}


def test_every_etb_name_the_readme_mentions_exists(header):
    names = set(header.defines) | set(header.functions) | set(NOT_ABI)
    mentioned = set(re.findall(r"\b(ETB_(?:ERR|DTYPE|CUDA|PTRACE|TRANSFER|PLACEMENT|LOG)_\w+|etb_[a-z_]+)\b",
                               README.read_text()))
    unknown = sorted(n for n in mentioned if n not in names and not n.endswith("_"))
    assert not unknown, f"README names {unknown}, which the header does not have"
