#!/usr/bin/env python3
"""The C ABI as the Python package declares it, made from its one source, the generated header
include/etha_tensor_bus.h.

`parse()` reads the header as a C compiler does: the C preprocessor (`cc -E`, with stand-in
<stdbool.h>, <stddef.h> and <stdint.h> that only name their types, so that the typedef names
survive), pycparser for the declarations, and `cc -dM -E` for the macros. `render()` turns that
into python/etha_tensor_bus/_abi.py: every ETB_* macro, typedef, struct, callback type and
function prototype as a ctypes declaration. The package takes its declarations and constants
from _abi.py; tests/python/test_abi.py fails when _abi.py is not what this script makes from the
header, as tests/header.rs fails when the header is not what cbindgen makes from src/ffi/.

    .venv/bin/python scripts/python_abi.py           # rewrites python/etha_tensor_bus/_abi.py
    .venv/bin/python scripts/python_abi.py --check   # exit status 1 when it is stale

The C types map to ctypes as the package uses them: handles (pointers to the opaque structs) and
`void *` are c_void_p; `const char *` is c_char_p (NUL-terminated strings in and out); a mutable
`char *` (the naming callback's buffers) and byte buffers (`uint8_t *`) are c_void_p, so that
the callee writes into the caller's memory and bytes pass as they are; pointers to anything else
are POINTER(...). The header has no C enum (its enums are `typedef int32_t` plus macros): a
declaration this script does not know is an error, never skipped.

pycparser is a test-time tool (tests/requirements.txt); the package itself needs nothing but
ctypes."""
import argparse
import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap

ROOT = pathlib.Path(__file__).resolve().parent.parent
HEADER = ROOT / "include" / "etha_tensor_bus.h"
ABI = ROOT / "python" / "etha_tensor_bus" / "_abi.py"

# What the stand-in system headers define: only names (their exact widths do not matter to the
# parser, which keeps the typedef names), mapped to ctypes below.
_STUBS = {
    "stdbool.h": "typedef _Bool bool;\n#define true 1\n#define false 0\n",
    "stddef.h": "typedef unsigned long size_t;\n#define NULL ((void *)0)\n",
    "stdint.h": "".join(f"typedef int {t};\n" for t in ("int8_t", "int16_t", "int32_t", "int64_t", "uint8_t",
                                                          "uint16_t", "uint32_t", "uint64_t", "uintptr_t")),
}
_SCALARS = {
    "bool": "c_bool", "char": "c_char", "double": "c_double", "float": "c_float", "size_t": "c_size_t",
    "int8_t": "c_int8", "int16_t": "c_int16", "int32_t": "c_int32", "int64_t": "c_int64", "uint8_t": "c_uint8",
    "uint16_t": "c_uint16", "uint32_t": "c_uint32", "uint64_t": "c_uint64", "uintptr_t": "c_size_t",
}


@dataclasses.dataclass
class Function:
    name: str
    restype: str  # a ctypes expression, or "None"
    argtypes: list  # [(parameter name, ctypes expression)]


@dataclasses.dataclass
class Header:
    """What the header declares, in its order: macros (name -> int), opaque struct names,
    type declarations (("alias", name, ctype) or ("struct", name, [(field, ctype)])) and
    functions (name -> Function)."""

    defines: dict
    opaque: list
    types: list
    functions: dict

    def prefixed(self, prefix):
        """The macros named `prefix` + something: {something: value}, in the header's order."""
        return {k[len(prefix):]: v for k, v in self.defines.items() if k.startswith(prefix)}


def _cc():
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("a C compiler (cc) is needed to preprocess the header")
    return cc


def _preprocess(header, *flags):
    with tempfile.TemporaryDirectory(prefix="etb-abi-") as stubs:
        for name, text in _STUBS.items():
            pathlib.Path(stubs, name).write_text(text)
        out = subprocess.run([_cc(), "-E", "-std=c11", "-nostdinc", f"-I{stubs}", *flags, str(header)],
                             capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"cc -E {header} failed:\n{out.stderr}")
    return out.stdout


def _macros(header):
    """Every ETB_* macro with its integer value, in the order the header defines them."""
    values = {}
    for line in _preprocess(header, "-dM").splitlines():
        m = re.fullmatch(r"#define (ETB_\w+) (.*)", line)
        if m:
            try:
                values[m.group(1)] = int(m.group(2), 0)
            except ValueError:
                raise RuntimeError(f"{m.group(1)} is not an integer literal: {m.group(2)!r}") from None
    order = re.findall(r"^\s*#\s*define\s+(ETB_\w+)", pathlib.Path(header).read_text(), re.M)
    if sorted(order) != sorted(values):
        raise RuntimeError(f"the header's ETB_* macros {sorted(order)} are not the preprocessor's {sorted(values)}")
    return {name: values[name] for name in order}


class _Mapper:
    def __init__(self, c_ast):
        self.c_ast = c_ast
        self.opaque, self.structs, self.aliases = [], set(), set()
        # Structs only declared (`struct DLManagedTensorVersioned;`: DLPack's, defined in dlpack.h):
        # passed behind pointers, as c_void_p, and not the library's handles.
        self.foreign = set()

    def base(self, node):
        """A TypeDecl's type (IdentifierType or Struct) as a ctypes expression."""
        c = self.c_ast
        if isinstance(node, c.IdentifierType):
            name = " ".join(node.names)
            if name == "void":
                return "None"
            if name in self.aliases:
                return name
            if name in _SCALARS:
                return _SCALARS[name]
            raise RuntimeError(f"unknown C type {name!r}")
        if isinstance(node, c.Struct):
            if node.name in self.structs:
                return node.name
            raise RuntimeError(f"struct {node.name} is used by value but not defined")
        raise RuntimeError(f"unsupported type {type(node).__name__}")

    def ctype(self, node):
        """A declarator (TypeDecl, PtrDecl, FuncDecl under a pointer) as a ctypes expression."""
        c = self.c_ast
        if isinstance(node, c.TypeDecl):
            return self.base(node.type)
        if isinstance(node, c.PtrDecl):
            inner = node.type
            if isinstance(inner, c.FuncDecl):
                return self.callback(inner)
            if isinstance(inner, c.TypeDecl):
                t = inner.type
                if isinstance(t, c.Struct) and t.name in self.opaque:
                    return "c_void_p"  # a handle
                if isinstance(t, c.Struct) and t.name in self.foreign:
                    return "c_void_p"  # another header's struct (DLPack's managed tensors)
                if isinstance(t, c.IdentifierType):
                    name = " ".join(t.names)
                    if name == "void" or name == "uint8_t":
                        return "c_void_p"  # any memory; byte buffers
                    if name == "char":
                        return "c_char_p" if "const" in inner.quals else "c_void_p"
            return f"POINTER({self.ctype(inner)})"
        raise RuntimeError(f"unsupported declarator {type(node).__name__}")

    def params(self, func):
        c = self.c_ast
        out = []
        for p in (func.args.params if func.args else []):
            if isinstance(p, c.EllipsisParam):
                raise RuntimeError("variadic functions are not supported")
            t = self.ctype(p.type)
            if t == "None" and p.name is None:  # (void)
                continue
            out.append((p.name, t))
        return out

    def callback(self, func):
        args = ", ".join(t for _, t in self.params(func))
        return f"CFUNCTYPE({self.ctype(func.type)}{', ' + args if args else ''})"


def parse(header=HEADER):
    """The header's declarations (see Header)."""
    from pycparser import c_ast, c_parser

    ast = c_parser.CParser().parse(_preprocess(header, "-P"), str(header))
    m = _Mapper(c_ast)
    types, functions = [], {}
    for ext in ast.ext:
        if isinstance(ext, c_ast.Typedef) and ext.name in _SCALARS:
            continue  # the stand-in system headers' own typedefs
        if isinstance(ext, c_ast.Typedef):
            t = ext.type
            if isinstance(t, c_ast.TypeDecl) and isinstance(t.type, c_ast.Struct):
                s = t.type
                if s.decls is None:  # typedef struct X X;: opaque, used only behind pointers
                    m.opaque.append(s.name)
                    continue
                fields = [(d.name, m.ctype(d.type)) for d in s.decls]
                m.structs.add(s.name)
                types.append(("struct", s.name, fields))
                continue
            types.append(("alias", ext.name, m.ctype(t)))
            m.aliases.add(ext.name)
        elif isinstance(ext, c_ast.Decl) and isinstance(ext.type, c_ast.Struct) and ext.type.decls is None:
            m.foreign.add(ext.type.name)  # struct X; (declared only)
        elif isinstance(ext, c_ast.Decl) and isinstance(ext.type, c_ast.FuncDecl):
            f = ext.type
            functions[ext.name] = Function(ext.name, m.ctype(f.type), m.params(f))
        else:
            raise RuntimeError(f"unsupported declaration at {ext.coord}: {type(ext).__name__}")
    return Header(_macros(header), m.opaque, types, functions)


def render(h):
    """python/etha_tensor_bus/_abi.py for the header `h`."""
    used = set(re.findall(r"\b(CFUNCTYPE|POINTER|c_\w+)\b", repr((h.types, [dataclasses.astuple(f) for f in
                                                                               h.functions.values()]))))
    names = sorted(used | {"Structure"} if any(k == "struct" for k, _, _ in h.types) else used)
    lines = [
        '"""The C ABI of include/etha_tensor_bus.h for ctypes: its ETB_* macros, its types and every',
        "function's restype and argtypes, in the header's order. Handles (" + ", ".join(h.opaque[:2]) + ",",
        ", ".join(h.opaque[2:]) + ") are c_void_p.",
        "",
        "Generated from the header by scripts/python_abi.py -- do not edit by hand. Regenerate with",
        "`.venv/bin/python scripts/python_abi.py`; tests/python/test_abi.py fails when this file is stale.",
        '"""',
        *textwrap.wrap(f"from ctypes import ({', '.join(names)})", 100, subsequent_indent="    "),
        "",
        "# The macros.",
    ]
    lines += [f"{k} = {v}" for k, v in h.defines.items()]
    lines += ["", "DEFINES = {"] + [f'    "{k}": {k},' for k in h.defines] + ["}", ""]
    lines += ["# The types."]
    for kind, name, body in h.types:
        if kind == "alias":
            lines.append(f"{name} = {body}")
        else:
            lines += ["", "", f"class {name}(Structure):", "    _fields_ = ["]
            lines += [f'        ("{field}", {t}),' for field, t in body]
            lines += ["    ]", "", ""]
    lines += ["", "# Every function: name -> (restype, argtypes).", "FUNCTIONS = {"]
    for f in h.functions.values():
        lines += textwrap.wrap(f"{f.name}({', '.join(n for n, _ in f.argtypes)})", 110, initial_indent="    # ",
                               subsequent_indent="    #     ")
        entry = f'    "{f.name}": ({f.restype}, [{", ".join(t for _, t in f.argtypes)}]),'
        if len(entry) > 110:
            entry = "\n".join(textwrap.wrap(entry, 110, subsequent_indent="        ", break_on_hyphens=False))
        lines.append(entry)
    lines += ["}", ""]
    text = "\n".join(lines)
    return re.sub(r"\n{4,}", "\n\n\n", text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when _abi.py is not what the header makes")
    args = ap.parse_args(argv)
    text = render(parse())
    if args.check:
        if ABI.read_text() != text:
            print(f"{ABI.relative_to(ROOT)} is stale: run {sys.argv[0]}", file=sys.stderr)
            return 1
        return 0
    ABI.write_text(text)
    print(f"wrote {ABI.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
