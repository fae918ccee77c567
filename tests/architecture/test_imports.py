"""The package's modules import each other in one direction only: no import circle, checked from the source.

Every import counts, at module level or inside a function (a lazy import is still a dependency), except those
under ``if TYPE_CHECKING:``, which exist only for the type checker.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "asyncbatch"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports, resolved to the module (``from .x import y`` is ``x``, or ``x.y``
    when that is a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(child) for child in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("asyncbatch"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if not target.startswith("asyncbatch"):
                continue
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
    return {m for m in found if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    paths = list(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own modules: importing a package runs its __init__ first
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_circle() -> None:
    edges = graph()
    assert len(edges) > 40  # the walk found the package
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges) or [])


def test_the_cycle_finder_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_layers_point_one_way() -> None:
    """The store knows nothing of providers or the engine; providers know nothing of the store or the engine;
    the engine never reaches the client side (manager, CLI, helpers, gateway); the two servers (emulator,
    gateway) share the wire format (``asyncbatch.wire``), never each other's code."""
    edges = graph()

    def reaches(module: str, prefix: str) -> set[str]:
        return {m for m in edges[module] if m == prefix or m.startswith(prefix + ".")}

    for module in edges:
        if module.startswith("asyncbatch.store"):
            assert not reaches(module, "asyncbatch.providers") and not reaches(module, "asyncbatch.engine"), module
        if module.startswith("asyncbatch.providers"):
            assert not reaches(module, "asyncbatch.store") and not reaches(module, "asyncbatch.engine"), module
        if module.startswith("asyncbatch.engine"):
            for client in ("asyncbatch.manager", "asyncbatch.cli", "asyncbatch.litellm", "asyncbatch.gateway"):
                assert not reaches(module, client), (module, client)
        if module.startswith("asyncbatch.gateway"):
            assert not reaches(module, "asyncbatch.emulator"), module
        if module.startswith("asyncbatch.emulator"):
            assert not reaches(module, "asyncbatch.gateway"), module
        if module.startswith("asyncbatch.wire"):
            assert all(m.startswith("asyncbatch.wire") for m in edges[module]), module
