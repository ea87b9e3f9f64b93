"""The pack's imports point one way: nodes -> nodes/adapters -> nodes/core, with no cycle anywhere.

Every import counts, those inside functions too (a cycle that only loads because one side imports lazily is still
a cycle). Read from the source with ``ast``: no ComfyUI needed.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pack_modules() -> dict[str, Path]:
    """Dotted name (from the pack root) -> file, for every module under nodes/."""
    out = {}
    for path in sorted((ROOT / "nodes").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The pack modules ``name`` imports (relative imports resolved; ``from pkg import mod`` -> ``pkg.mod``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mod = node.module if isinstance(node, ast.ImportFrom) else None
            for alias in node.names:
                full = mod or alias.name
                if full.startswith("comfyui_diffstyler."):
                    found.add(full.removeprefix("comfyui_diffstyler."))
    return {m for m in found if m in modules and m != name}


def graph() -> dict[str, set[str]]:
    modules = pack_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
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
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_a_cycle():
    """The check can fail: a two-module loop is reported, a one-way chain is not."""
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_walker_reads_relative_and_nested_imports():
    g = graph()
    assert "nodes.adapters.injector.state" in g["nodes.adapters.injector.install"]
    assert "nodes.core.rows" in g["nodes.adapters.injector.wrapper"]
    assert "nodes.adapters.injector.install" in g["nodes.sample"], "an import inside a function counts"


def test_no_import_cycle_under_nodes():
    assert cycles(graph()) == []


def test_imports_point_one_way():
    """core imports only core (and no comfy); adapters import no node module."""
    g = graph()
    for name, deps in g.items():
        if name.startswith("nodes.core"):
            assert all(d.startswith("nodes.core") for d in deps), (name, deps)
            text = pack_modules()[name].read_text(encoding="utf-8")
            assert "import comfy" not in text and "from comfy" not in text, name
        if name.startswith("nodes.adapters"):
            assert all(d.startswith(("nodes.adapters", "nodes.core", "nodes._api")) for d in deps), (name, deps)


def test_nothing_outside_tests_imports_from_tests():
    """The runner, the benches and the pack use the harness (nodes/harness), never tests/support."""
    support = {p.stem for p in (ROOT / "tests" / "support").glob("*.py")} | {"conftest"}
    offenders = []
    for folder in ("nodes", "scripts", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            names = set()
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.Import):
                    names |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names.add(node.module.split(".")[0])
            if names & support or "tests/support" in text or '"support"' in text:
                offenders.append(f"{path.relative_to(ROOT)}: {sorted(names & support)}")
    assert offenders == []
