"""The import graph of the project's packages: no cycles, and every package imports
only from the layers below it (docs/architecture.md).

Every ``import`` and ``from ... import`` counts, including those inside functions
(a lazy import is still a dependency), read from the source with ``ast`` so nothing
is executed. ``from pkg import name`` counts as an import of ``pkg.name`` when that
is a module, else of ``pkg``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fsexchange", "host_bridge", "engine")

#: A module may import from its own package (prefix) and from the packages listed.
#: Order is bottom-up: protocol, then the engine's layers, then the bridge.
ALLOWED: dict[str, tuple[str, ...]] = {
    "fsexchange": (),
    "engine.nets": ("fsexchange",),
    "engine.devices": ("fsexchange",),
    "engine.media": ("fsexchange",),
    "engine.models": ("fsexchange", "engine.nets", "engine.media", "engine.devices"),
    "engine.faces": ("fsexchange", "engine.models"),
    "engine.quality": ("fsexchange", "engine.nets", "engine.media", "engine.models",
                       "engine.faces", "engine.devices"),
    "engine.stages": ("fsexchange", "engine.nets", "engine.media", "engine.models",
                      "engine.faces", "engine.quality", "engine.devices"),
    "engine.service": ("fsexchange", "engine.stages", "engine.devices"),
    "engine.commands": ("fsexchange", "engine"),
    "engine": ("fsexchange",),  # engine/__init__.py
    "host_bridge": ("fsexchange",),
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


def _targets(mod: str, node: ast.AST, is_pkg: bool, mods: dict[str, Path]) -> list[str]:
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = mod.split(".")
            if not is_pkg:
                base = base[:-1]
            base = base[:len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        for a in node.names:
            full = f"{prefix}.{a.name}"
            names.append(full if full in mods else prefix)
    out = []
    for name in names:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        if name and name != mod:
            out.append(name)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[mod].update(_targets(mod, node, path.name == "__init__.py",
                                           mods))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _layer(mod: str) -> str:
    best = ""
    for layer in ALLOWED:
        if (mod == layer or mod.startswith(layer + ".")) and len(layer) > len(best):
            best = layer
    return best


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 80  # the walk found the project
    assert cycles(graph) == []


def test_every_package_imports_only_from_the_layers_below():
    bad = []
    for mod, targets in import_graph().items():
        layer = _layer(mod)
        assert layer, f"{mod} belongs to no layer in ALLOWED"
        for t in targets:
            if _layer(t) == layer:
                continue
            if not any(t == a or t.startswith(a + ".") for a in ALLOWED[layer]):
                bad.append(f"{mod} -> {t}")
    assert bad == []


def test_the_checks_can_fail():
    """A cycle and a layer violation, built by hand, are caught."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert _layer("engine.stages.pti") == "engine.stages"
    assert _layer("engine") == "engine"
    assert not any("engine.stages".startswith(a) for a in ALLOWED["engine.nets"])


def test_engine_top_level_stays_small_and_packages_say_what_they_hold():
    top = [p.name for p in (ROOT / "engine").glob("*.py")]
    assert len(top) <= 8, top
    for init in [ROOT / pkg / "__init__.py" for pkg in PACKAGES] + list(
            (ROOT / "engine").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "import" in doc.lower(), f"{init}: say what may be imported"
