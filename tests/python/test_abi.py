"""The package's ctypes declarations (etha_tensor_bus._native, from the generated _abi.py) against
the header: _abi.py is what scripts/python_abi.py makes from the header, every struct's size and
field offsets are as a C compiler lays them out, and the status table is the library's own
etb_status_name."""
import ctypes
import difflib
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, _native

from etha_tensor_bus import errors as sys_errors  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
import python_abi  # noqa: E402

STRUCTS = {"EtbBootstrapOptions": _native.BootstrapOptions, "EtbTensorPayload": _native.TensorPayload,
           "EtbCudaTensor": _native.CudaTensor, "EtbPlacement": _native.Placement}


def c_layout(tmp_path):
    """sizeof and offsetof of every field, as printed by a C program compiled against the header."""
    cc = shutil.which("cc")
    if not cc:
        pytest.skip("no C compiler")
    lines = ['#include <stddef.h>', '#include <stdio.h>', '#include "etha_tensor_bus.h"', "int main(void) {"]
    for c_name, cls in STRUCTS.items():
        lines.append(f'    printf("{c_name} size %zu\\n", sizeof({c_name}));')
        for field, _ in cls._fields_:
            lines.append(f'    printf("{c_name}.{field} %zu\\n", offsetof({c_name}, {field}));')
    lines += ["    return 0;", "}"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "layout"
    subprocess.run([cc, "-std=c11", "-Wall", "-Werror", f"-I{ROOT / 'include'}", str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return dict(line.rsplit(" ", 1) for line in out.splitlines())


def test_struct_sizes_and_offsets_match_the_header(tmp_path):
    c = c_layout(tmp_path)
    for c_name, cls in STRUCTS.items():
        assert int(c[f"{c_name} size"]) == ctypes.sizeof(cls), c_name
        for field, _ in cls._fields_:
            assert int(c[f"{c_name}.{field}"]) == getattr(cls, field).offset, f"{c_name}.{field}"
    assert int(c["EtbBootstrapOptions size"]) == 64, "the size the header documents for 64-bit Linux"
    assert int(c["EtbBootstrapOptions.device_index"]) == 56, "past the 56 bytes of the layout before it"
    assert int(c["EtbCudaTensor size"]) == 48, "the size the header documents for 64-bit Linux"


def test_every_field_of_the_header_structs_is_declared(tmp_path):
    """A field added to a C struct but not to the ctypes one would shift nothing but be missing."""
    header = (ROOT / "include" / "etha_tensor_bus.h").read_text()
    for c_name, cls in STRUCTS.items():
        body = header.split(f"typedef struct {c_name} {{")[1].split(f"}} {c_name};")[0]
        fields = re.findall(r"(\w+);\s*$", body, re.M)
        assert fields == [f for f, _ in cls._fields_], c_name


def test_status_table_matches_etb_status_name(lib):
    for name, code in sys_errors.STATUS.items():
        assert lib.etb_status_name(code).decode() == ("ETB_OK" if name == "OK" else f"ETB_ERR_{name}"), name
    codes = set(sys_errors.STATUS.values())
    assert codes == set(range(len(codes))), "numbers are never skipped"
    assert lib.etb_status_name(len(codes)).decode() == "ETB_UNKNOWN_STATUS", "a published status is missing here"


def test_abi_module_is_what_the_header_makes():
    """python/etha_tensor_bus/_abi.py (the package's declarations and constants) is generated from
    the header: a function, macro or struct field added, changed or removed on one side only fails
    here."""
    made = python_abi.render(python_abi.parse())
    checked_in = python_abi.ABI.read_text()
    diff = "".join(list(difflib.unified_diff(checked_in.splitlines(True), made.splitlines(True), "_abi.py (checked in)",
                                             "_abi.py (from the header)"))[:40])
    assert checked_in == made, ("python/etha_tensor_bus/_abi.py is stale: regenerate it with "
                                f"`.venv/bin/python scripts/python_abi.py` and commit it\n{diff}")


def test_dtype_table_is_the_librarys(lib):
    """The header's ETB_DTYPE_* name the library's dtypes (the core's table, etb_dtype_name): the
    same names, no number missing on either side; the typestrs the package derives from those
    names have the library's element sizes."""
    from etha_tensor_bus import _payloads

    dtypes = _native.enum("ETB_DTYPE_")
    for name, code in dtypes.items():
        assert lib.etb_dtype_name(code) == name.encode(), f"ETB_DTYPE_{name.upper()}"
    count = len(dtypes)
    assert sorted(dtypes.values()) == list(range(count)), "numbers are dense"
    assert lib.etb_dtype_name(count) is None and lib.etb_dtype_size(count) == 0, "a dtype of the library is missing"
    assert _payloads._TYPESTR, "no typestr derived"
    for typestr, code in _payloads._TYPESTR.items():
        kind, size = typestr[1], int(typestr[2:])
        assert lib.etb_dtype_size(code) == size, typestr
        want = "bool" if kind == "b" else {"f": "float", "i": "int", "u": "uint"}[kind] + str(8 * size)
        assert lib.etb_dtype_name(code) == want.encode(), typestr
