"""The Python package in layers, read from its sources (every import, also one inside a function):
each module imports only modules of the layers below its own or of its own layer, and no module
imports in a circle; and the same bad input raises the same exception wherever it is given."""
import ast

import pytest

from conftest import ROOT

PACKAGE = ROOT / "python" / "etha_tensor_bus"
# Bottom up. _abi: generated declarations; _native: loading and declaring; errors: exceptions;
# _common: the shared helpers; _payloads and client: the forms; bootstrap returns a client.
LAYERS = [["_abi"], ["_native", "errors"], ["_common", "_aio"], ["_payloads", "client"], ["bootstrap"], ["__init__"]]


def imports():
    """{module: {package module it imports}} for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.glob("*.py")):
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:  # from . import x / from .x import y
                found.update([node.module] if node.module else [a.name for a in node.names])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("etha_tensor_bus"):
                rest = node.module.split(".")[1:]
                found.update(rest[:1] if rest else [a.name for a in node.names])
            elif isinstance(node, ast.Import):
                found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("etha_tensor_bus."))
        out[path.stem] = {m.split(".")[0] for m in found}
    return out


def cycle(graph):
    """An import cycle of `graph` as a list of modules, or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_every_module_has_a_layer():
    layered, modules = {m for layer in LAYERS for m in layer}, set(imports())
    assert modules <= layered, f"{sorted(modules - layered)} of python/etha_tensor_bus/ have no place in LAYERS"
    assert layered <= modules, f"LAYERS names {sorted(layered - modules)}, which the package no longer has"


def test_modules_import_only_from_their_layer_or_below():
    level = {m: i for i, layer in enumerate(LAYERS) for m in layer}
    for module, deps in imports().items():
        above = sorted(d for d in deps if level.get(d, -1) > level[module])
        assert not above, f"{module} imports {above}, of a layer above its own"


def test_no_import_cycle():
    found = cycle(imports())
    assert found is None, f"the package imports in a circle: {' -> '.join(found)}"


def test_the_cycle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("call", ["bootstrap_client", "TensorBusClient"])
def test_a_bad_cuda_mode_is_a_value_error_everywhere(call):
    from etha_tensor_bus import TensorBusClient, bootstrap_client

    with pytest.raises(ValueError, match="cuda_mode must be one of") as e:
        if call == "bootstrap_client":
            bootstrap_client(connection_timeout=0.0, cuda_mode="sometimes")
        else:
            TensorBusClient(0, "/nonexistent/cq.lmdb", "/nonexistent/st.lmdb", 0.0, cuda_mode="sometimes")
    assert not isinstance(e.value, KeyError), type(e.value)
