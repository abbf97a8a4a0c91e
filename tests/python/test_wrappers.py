"""The wrappers cover the whole C ABI. The header (include/etha_tensor_bus.h, parsed as a C compiler
reads it: scripts/python_abi.py) is the list; these tests fail when a function or a group of
macros is added to it (to src/ffi/) and a wrapper lags:

- every exported function has a C++ form (include/etha_tensor_bus.hpp calls it) and a Python form
  (python/etha_tensor_bus/ calls it; its declaration alone, generated into _abi.py, is not one);
- every group of macros (ETB_DTYPE_*, ETB_CUDA_*, ...) has a C++ enum class with one enumerator
  per macro, named after it, and is used by the Python package;

unless OMISSIONS below names it, with the reason. An omission that no longer holds (the function
is gone, or the wrapper now uses it) fails too. Needs only the sources: no library, no agent.
"""
import ast
import re
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import python_abi  # noqa: E402

HPP = ROOT / "include" / "etha_tensor_bus.hpp"
PACKAGE = ROOT / "python" / "etha_tensor_bus"

# The deliberate omissions, the one list: (wrapper, function or "GROUP_*") -> why it has no form.
OMISSIONS = {
    ("C++", "etb_bootstrap_client"):
        "etb::bootstrap_client calls etb_bootstrap_client_ex, which takes the same arguments and every option",
    ("C++", "ETB_OK/ETB_ERR_*"):
        "statuses stay the C EtbStatus (etb::Error::status()), as in C: a code added later must not fall outside "
        "an old program's enum",
    ("C++", "ETB_LOG_*"): "etb::LogFn receives the level as the C int32_t, compared with the C macros",
    ("C++", "ETB_VERSION_*"): "version numbers, not an enumeration; etb::version() gives the library's",
    ("Python", "etb_bootstrap_client"):
        "bootstrap_client calls etb_bootstrap_client_ex, which takes the same arguments and every option",
    ("Python", "etb_info_device_index"):
        "BootstrapInfo has the reference's fields: `device` (\"cuda:{index}\") carries the index",
    ("Python", "etb_status_name"):
        "errors.STATUS names the statuses from the header's macros (test_abi.py checks them against etb_status_name)",
    ("Python", "etb_dtype_name"):
        "the Python forms take dtypes as __cuda_array_interface__ typestrs, derived from the ETB_DTYPE_* names",
    ("Python", "ETB_PTRACE_*"):
        "bootstrap_client keeps the reference's signature and the default, ETB_PTRACE_AGENT; setup_ptrace() and "
        "setup_ptrace_pid() are the others",
}


@pytest.fixture(scope="module")
def header():
    return python_abi.parse()


def groups(header):
    """The header's macros by group: "ETB_DTYPE_*" -> {macro: value}; the statuses are one group,
    "ETB_OK/ETB_ERR_*"."""
    out = {}
    for name, value in header.defines.items():
        key = "ETB_OK/ETB_ERR_*" if name == "ETB_OK" or name.startswith("ETB_ERR_") else \
            "_".join(name.split("_")[:2]) + "_*"
        out.setdefault(key, {})[name] = value
    return out


def cpp_source():
    """The C++ wrapper without its comments (which name C functions they do not call)."""
    text = re.sub(r"/\*.*?\*/", "", HPP.read_text(), flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def cpp_calls():
    return set(re.findall(r"\b(etb_\w+)\s*\(", cpp_source()))


def cpp_enums():
    """{enum class name: [(enumerator, macro)]}."""
    return {name: re.findall(r"(\w+)\s*=\s*(ETB_\w+)", body)
            for name, body in re.findall(r"enum\s+class\s+(\w+)\s*:\s*[\w:()]+\s*\{(.*?)\}", cpp_source(), re.S)}


def python_names():
    """Every etb_*/ETB_* name the package's own code uses, as an attribute (lib.etb_x, _abi.ETB_X)
    or a string ("etb_client_close", "ETB_CUDA_"), in every module but the generated _abi.py."""
    used = set()
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "_abi.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr.lower().startswith("etb_"):
                used.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    re.fullmatch(r"(etb|ETB)_\w*", node.value):
                used.add(node.value)
    return used


def group_used(group, names):
    """Whether one of `names` is a macro of `group` or its prefix ("ETB_CUDA_AUTO", "ETB_CUDA_")."""
    prefixes = [p.rstrip("*") for p in group.split("/")]
    return any(n.startswith(p) for n in names for p in prefixes)


def missing(wrapper, wanted, have):
    return [w for w in wanted if w not in have and (wrapper, w) not in OMISSIONS]


def test_every_export_has_a_cpp_form(header):
    lacking = missing("C++", header.functions, cpp_calls())
    assert not lacking, (f"{HPP.name} has no form of {lacking}: add one (RAII, [[nodiscard]], etb::Error), with "
                         "a test in tests/cpp/test_wrapper.cpp, or name it in OMISSIONS with the reason")


def test_every_export_has_a_python_form(header):
    lacking = missing("Python", header.functions, python_names())
    assert not lacking, (f"python/etha_tensor_bus/ never calls {lacking}: add its Python form, with a test, or name "
                         "it in OMISSIONS with the reason")


def test_every_macro_group_has_a_cpp_enum(header):
    enums = cpp_enums()
    by_group = {}
    for enum, members in enums.items():
        kinds = {"_".join(m.split("_")[:2]) + "_*" for _, m in members}
        assert len(kinds) == 1, f"etb::{enum} mixes the macro groups {sorted(kinds)}"
        by_group[kinds.pop()] = enum
    lacking = missing("C++", groups(header), by_group)
    assert not lacking, f"{HPP.name} has no enum class for {lacking}: add one, or name it in OMISSIONS with the reason"
    for group, enum in by_group.items():
        macros = groups(header).get(group, {})
        members = dict((m, e) for e, m in enums[enum])
        lacks, extra = sorted(set(macros) - set(members)), sorted(set(members) - set(macros))
        assert not lacks and not extra, f"etb::{enum} lacks {lacks} and has {extra}, unlike the header's {group}"
        for macro, enumerator in members.items():
            assert enumerator.lower() == macro[len(group) - 1:].replace("_", "").lower(), \
                f"etb::{enum}::{enumerator} is not named after {macro}"


def test_every_macro_group_is_used_by_the_python_package(header):
    names = python_names()
    lacking = [g for g in groups(header)
               if not group_used(g, names) and ("Python", g) not in OMISSIONS]
    assert not lacking, (f"python/etha_tensor_bus/ uses none of {lacking}: take them from _abi (e.g. "
                         "_native.enum(prefix)), or name them in OMISSIONS with the reason")


def test_omissions_are_current(header):
    """An omission names a function or group the header has and its wrapper does not use."""
    cpp, python, grouped = cpp_calls(), python_names(), groups(header)
    cpp_groups = {"_".join(m.split("_")[:2]) + "_*" for members in cpp_enums().values() for _, m in members}
    for (wrapper, name), why in OMISSIONS.items():
        assert why, (wrapper, name)
        assert name in header.functions or name in grouped, f"OMISSIONS names {name}, which the header no longer has"
        if name in header.functions:
            used = name in (cpp if wrapper == "C++" else python)
        else:
            used = name in cpp_groups if wrapper == "C++" else group_used(name, python)
        assert not used, f"OMISSIONS says {wrapper} has no form of {name}, but it has one now: remove the entry"
