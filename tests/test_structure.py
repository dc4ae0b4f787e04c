"""The package's shape: no import cycle among compressor/ modules, and no module over 500 lines
unless it says why at its top.

Imports are read with `ast`, not executed: module-level and function-level `import` and
`from ... import` count alike (a function-level import that closes a loop is still a loop, only
hidden), relative imports are resolved, and `from pkg import name` points at the submodule
`pkg.name` when that is a module. Imports under `if TYPE_CHECKING:` never run and do not count,
nor do modules imported by name through `importlib.import_module` (a registry of module paths).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "compressor"
MAX_LINES = 500
# A module over MAX_LINES says why in its module docstring, e.g.
#     """... Over 500 lines because <reason>."""
LONG_MARKER = "Over 500 lines because"


def _module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module):
    """Every Import / ImportFrom node that runs, skipping `if TYPE_CHECKING:` bodies."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """module -> the compressor modules it imports (a package's `__init__` is the package name)."""
    modules = _module_names()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # `from pkg import sub` depends on the submodule pkg.sub; `from pkg import name` on
                # what pkg/__init__.py defines or re-exports
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                           for alias in node.names]
            for target in targets:
                # `import a.b.c` runs a, a.b and a.b.c; the deepest known module is what is used
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    # So a package's __init__ may re-export its submodules' names while they import each other
    # (`from . import sibling` is an edge to the sibling only); a submodule that imports a name from
    # its own package's __init__ while that __init__ imports it back is a loop.
    return graph


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest import loop through the first module of a strongly connected component."""
    members = set(component)
    start = component[0]
    previous = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return list(reversed(path)) + [start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return component


def test_the_graph_reader_sees_the_imports_it_must():
    """The reader resolves relative, `from pkg import submodule` and function-level imports."""
    graph = import_graph()
    assert "compressor.backends.cengine.ops" in graph["compressor.backends.cengine.lower"]
    assert "compressor.errors" in graph["compressor.backends.cengine.lower"]
    assert "compressor.native" in graph["compressor.quantize.fakequant"]  # `from .. import native`
    assert "compressor.quantize.qdq" in graph["compressor.export.onnx_export"]  # inside ExportPass.run
    # under `if TYPE_CHECKING:` only: not an import that runs
    assert "compressor.backends.cengine.lower" not in graph["compressor.backends.cengine.ops.registry"]
    loop = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert [c for c in _strongly_connected(loop) if len(c) > 1] == [["a", "b", "c"]]
    assert _one_cycle(loop, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_no_import_cycles():
    graph = import_graph()
    cycles = [c for c in _strongly_connected(graph) if len(c) > 1]
    message = []
    for component in cycles:
        loop = _one_cycle(graph, component)
        message.append(f"{len(component)} modules import each other, e.g. " + " -> ".join(loop)
                       + (f"\n    (all of them: {', '.join(component)})" if len(component) > len(loop) - 1 else ""))
    assert not cycles, ("import cycles among compressor/ modules (move what both sides need into a lower "
                        "module, or look a module up by name through a registry):\n  " + "\n  ".join(message))


def test_long_modules_say_why():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        lines = text.count("\n") + (not text.endswith("\n"))
        if lines <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if LONG_MARKER not in doc:
            too_long.append(f"{path.relative_to(ROOT)} ({lines} lines)")
    assert not too_long, (f"modules over {MAX_LINES} lines; split them, or say why in the module docstring "
                          f"with '{LONG_MARKER} ...':\n  " + "\n  ".join(too_long))
