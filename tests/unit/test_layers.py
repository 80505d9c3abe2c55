"""The import contract: layers, forbidden imports and no cycles, over every product module.

Layers, bottom to top (docs/ARCHITECTURE.md)::

    models → privacy → protocol → client | server | deploy → simulations → cli

A module may import its own package and the layers below it, never a layer above or a
sibling of the same rank, not even inside a function. Opacus and ``cryptography`` are
imported only under ``privacy/``; the SDK (``client.sdk``) reaches neither torch, Flower
nor Opacus; and no chain of imports, lazy ones included, leads back to where it started.
The checks read the source with :mod:`ast`, so they see every import statement.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = {
    "models": 0,
    "privacy": 1,
    "protocol": 2,
    "client": 3,
    "server": 3,
    "deploy": 3,
    "simulations": 4,
    "console": 4,
    "cli": 5,
}
ONLY_IN_PRIVACY = ("opacus", "cryptography")
SDK = "client.sdk"
NOT_IN_SDK = ("torch", "flwr", "opacus")


@dataclass(frozen=True)
class ImportEdge:
    """``importer`` imports ``imported`` at ``line``."""

    importer: str
    imported: str
    line: int


def module_name(root: Path, path: Path) -> str:
    """``a/b/c.py`` → ``a.b.c``; ``a/b/__init__.py`` → ``a.b``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_modules(root: Path) -> dict[str, Path]:
    """Every module of the layered packages under ``root``."""
    modules = {}
    for package in LAYERS:
        for path in sorted((root / package).rglob("*.py")):
            modules[module_name(root, path)] = path
    return modules


def imports_of(name: str, path: Path, known: set[str]) -> list[ImportEdge]:
    """Every import in the file, at any depth (function bodies included).

    ``from a.b import c`` counts as importing ``a.b.c`` when that is a module, else ``a.b``.
    """
    edges = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            edges += [ImportEdge(name, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                target = f"{base}.{alias.name}"
                edges.append(ImportEdge(name, target if target in known else base, node.lineno))
    return edges


def import_graph(root: Path) -> dict[str, list[ImportEdge]]:
    """Each product module's imports."""
    modules = product_modules(root)
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def layer_violations(graph: dict[str, list[ImportEdge]]) -> list[str]:
    """Imports of a higher layer or of a sibling package of the same rank."""
    found = []
    for edges in graph.values():
        for edge in edges:
            own, other = edge.importer.split(".")[0], edge.imported.split(".")[0]
            if other not in LAYERS or other == own:
                continue
            if LAYERS[other] >= LAYERS[own]:
                found.append(f"{edge.importer}:{edge.line} imports {edge.imported}")
    return found


def forbidden_imports(graph: dict[str, list[ImportEdge]]) -> list[str]:
    """Opacus or ``cryptography`` imported outside ``privacy/``."""
    return [
        f"{edge.importer}:{edge.line} imports {edge.imported}"
        for edges in graph.values()
        for edge in edges
        if edge.imported.split(".")[0] in ONLY_IN_PRIVACY
        and not edge.importer.startswith("privacy")
    ]


def reachable(graph: dict[str, list[ImportEdge]], start: str) -> set[str]:
    """Every module (product or third-party) that importing ``start`` can import."""
    seen: set[str] = set()
    stack = [name for name in graph if name == start or name.startswith(start + ".")]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        for edge in graph.get(name, []):
            stack.append(edge.imported)
    return seen


def cycles(graph: dict[str, list[ImportEdge]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), or a module
    importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for edge in graph[node]:
            target = edge.imported
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or any(e.imported == node for e in graph[node]):
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, list[ImportEdge]]:
    return import_graph(ROOT)


def test_no_module_imports_a_higher_layer_or_a_sibling(graph):
    assert layer_violations(graph) == []


def test_opacus_and_cryptography_are_imported_only_under_privacy(graph):
    assert forbidden_imports(graph) == []


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_the_sdk_reaches_neither_torch_flower_nor_opacus(graph):
    tops = {name.split(".")[0] for name in reachable(graph, SDK)}
    assert tops.isdisjoint(NOT_IN_SDK), sorted(tops & set(NOT_IN_SDK))


def _planted_tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for package in LAYERS:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for relative, text in files.items():
        (tmp_path / relative).write_text(text)
    return tmp_path


def test_the_checks_catch_a_planted_cross_layer_import_a_lazy_one_and_a_cycle(tmp_path):
    root = _planted_tree(
        tmp_path,
        {
            "models/spec.py": "def f():\n    from server.registry import X\n",
            "server/registry.py": "import deploy.process\n",
            "privacy/a.py": "from privacy import b\n",
            "privacy/b.py": "from privacy.a import thing\n",
            "protocol/wire.py": "from cryptography.hazmat import x\n",
        },
    )
    planted = import_graph(root)
    assert layer_violations(planted) == [
        "models.spec:2 imports server.registry",
        "server.registry:1 imports deploy.process",
    ]
    assert forbidden_imports(planted) == ["protocol.wire:1 imports cryptography.hazmat"]
    assert cycles(planted) == [["privacy.a", "privacy.b"]]
