"""The library's modules import one way: no cycle, and the layers docs/architecture.md draws.

Read from the source as tests/import_closure.py reads it (imports inside functions count).
"""

from __future__ import annotations

from pathlib import Path

from tests.import_closure import SRC, imports_of

PACKAGE = SRC / "captioning"

# What a part of the library may import (besides config, errors, io, runtime, devices and
# processes, which import no other part). Evaluation, inference and serving read a trained
# model through models.saved: none of them imports training.
MAY_IMPORT = {
    "data": {"data"},
    "metrics": {"metrics", "data"},
    "viz": {"viz"},
    "features": {"features", "data"},
    "models": {"models", "data", "features"},
    "decoding": {"decoding", "models"},
    "inference": {"data", "decoding", "features", "models"},
    "evaluation": {"evaluation", "data", "decoding", "features", "metrics", "models", "viz"},
    "training": {"training", "data", "decoding", "features", "metrics", "models", "registry"},
    "registry": {"registry", "data", "decoding", "inference"},
    "comparison": set(),
    "orchestration": set(),
    "cli": {"data", "decoding", "evaluation", "inference", "orchestration", "registry", "viz"},
}
BASE = {"config", "errors", "io", "runtime", "devices", "processes"}


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def module_graph() -> dict[Path, set[Path]]:
    """Each module of the package -> the modules it imports (package __init__ files left out:
    importing a.b runs a/__init__.py, which is no edge of the design)."""
    return {
        path: {f for f in imports_of(path) if f != path and f.name != "__init__.py"}
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def cycles(graph: dict[Path, set[Path]]) -> list[list[Path]]:
    """The strongly connected parts with more than one module (Tarjan, iteratively)."""
    index: dict[Path, int] = {}
    low: dict[Path, int] = {}
    stack: list[Path] = []
    on_stack: set[Path] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                part = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    part.append(member)
                    if member == node:
                        break
                if len(part) > 1:
                    found.append(part)
    return found


def test_no_module_imports_itself_back():
    found = [sorted(str(p.relative_to(SRC)) for p in part) for part in cycles(module_graph())]
    assert not found, f"import cycles: {found}"


def test_cycle_finder_finds_a_cycle():
    a, b, c = Path("a.py"), Path("b.py"), Path("c.py")
    assert cycles({a: {b}, b: {c}, c: {a}}) == [[c, b, a]]
    assert cycles({a: {b}, b: {c}, c: set()}) == []


def test_each_part_imports_only_the_layers_below_it():
    wrong = []
    for path, targets in module_graph().items():
        part = _part(path)
        allowed = MAY_IMPORT.get(part, set()) | BASE | {part}
        for target in targets:
            if _part(target) not in allowed:
                wrong.append(f"{path.relative_to(SRC)} imports {target.relative_to(SRC)}")
    assert not wrong, "\n".join(sorted(wrong))


def test_every_part_has_its_rule():
    parts = {_part(p) for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.stem != "__init__"}
    assert parts <= set(MAY_IMPORT) | BASE, sorted(parts - set(MAY_IMPORT) - BASE)
