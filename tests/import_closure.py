"""The project modules a stage script runs, read from its imports as Python would follow them.

Static, so it sees every path a stage can take: imports inside functions count (they run when
that branch does: fine-tuning, a data source), ``if TYPE_CHECKING:`` blocks do not (they never
run). Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` first, so package
``__init__`` files are in the closure too. Only modules under ``src/captioning`` are followed;
the closure of a stage is what its DVC ``deps`` must cover.

    python tests/import_closure.py stages/train.py     # the deps it needs, one per line
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = "captioning"


def module_file(name: str) -> Path | None:
    """``captioning.data.vocab`` -> src/captioning/data/vocab.py (or its package __init__)."""
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        return None
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(path: Path) -> str:
    """The package a relative import in ``path`` starts from."""
    return ".".join(path.relative_to(SRC).parent.parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST, path: Path) -> set[str]:
    """Module names each import statement of ``tree`` may run (not under TYPE_CHECKING)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _package_of(path).split(".") if path.is_relative_to(SRC) else []
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            # ``from captioning.data import vocab`` imports the module captioning.data.vocab.
            names.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def imports_of(path: Path) -> set[Path]:
    """The files under src/captioning that ``path``'s import statements run, package
    ``__init__`` files of each imported name included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return {
        found
        for name in _imported_names(tree, path)
        for prefix in _with_parents(name)
        if (found := module_file(prefix)) is not None
    }


def closure(script: Path) -> set[Path]:
    """Every file under src/captioning that running ``script`` can import."""
    seen: set[Path] = set()
    todo = [script.resolve()]
    while todo:
        for found in imports_of(todo.pop()) - seen:
            seen.add(found)
            todo.append(found)
    return seen


def covering_deps(files: set[Path]) -> list[Path]:
    """The fewest paths that name exactly ``files``: a folder where all its .py files are in."""
    chosen: set[Path] = set()
    for path in files:
        top = path
        while top.parent != SRC and all(f in files for f in top.parent.rglob("*.py")):
            top = top.parent
        chosen.add(top)
    # a folder chosen for one file covers the others chosen inside it
    return sorted(p for p in chosen if not any(q != p and p.is_relative_to(q) for q in chosen))


def main(argv: list[str]) -> int:
    """Print the deps a stage script needs: the folders and files of its closure."""
    for script in argv:
        for path in covering_deps(closure(Path(script))):
            print(path.relative_to(REPO))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
