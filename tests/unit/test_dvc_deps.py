"""Each DVC stage's deps name exactly the project code its script runs.

A module the script imports (see tests/import_closure.py) but no dep covers would leave the
stage's outputs stale after an edit there while `dvc status` says all is up to date; a dep the
script never imports re-runs the stage for nothing.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml
from tests.import_closure import REPO, SRC, closure, covering_deps

PIPELINES = [REPO / "dvc.yaml", REPO / "pipelines" / "captcha" / "dvc.yaml"]


def _stages(dvc_yaml: Path) -> list[tuple[str, Path, list[Path]]]:
    """(name, stage script, declared deps) of every stage, paths made absolute."""
    found = []
    for name, stage in yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))["stages"].items():
        body = stage.get("do", stage)  # a foreach stage's template
        scripts = [w for w in shlex.split(body["cmd"]) if w.endswith(".py")]
        assert len(scripts) == 1, f"{dvc_yaml}: stage {name} runs {scripts}, expected one script"
        script = (dvc_yaml.parent / scripts[0]).resolve()
        deps = [(dvc_yaml.parent / d).resolve() for d in body.get("deps", [])]
        found.append((name, script, deps))
    return found


STAGES = [
    pytest.param(path, name, script, deps, id=f"{path.parent.name}:{name}")
    for path in PIPELINES
    for name, script, deps in _stages(path)
]


def _covered(file: Path, deps: list[Path]) -> bool:
    return any(file == d or file.is_relative_to(d) for d in deps)


@pytest.mark.parametrize(("dvc_yaml", "stage", "script", "deps"), STAGES)
def test_deps_cover_every_module_the_stage_imports(dvc_yaml, stage, script, deps):
    assert script in deps, f"{dvc_yaml}: stage {stage} does not depend on its script {script.name}"
    missing = sorted(str(f.relative_to(REPO)) for f in closure(script) if not _covered(f, deps))
    assert not missing, (
        f"{dvc_yaml.relative_to(REPO)}: stage {stage} imports modules its deps miss: {missing}; "
        f"`python tests/import_closure.py {script.relative_to(REPO)}` prints the deps it needs"
    )


@pytest.mark.parametrize(("dvc_yaml", "stage", "script", "deps"), STAGES)
def test_deps_name_no_code_the_stage_does_not_import(dvc_yaml, stage, script, deps):
    runs = closure(script)
    unused = []
    for dep in (d for d in deps if d.is_relative_to(SRC)):
        files = set(dep.rglob("*.py")) if dep.is_dir() else {dep}
        if not files <= runs:
            unused.append(f"{dep.relative_to(REPO)}: {sorted(f.name for f in files - runs)}")
    assert not unused, (
        f"{dvc_yaml.relative_to(REPO)}: stage {stage} depends on code it never imports: {unused}"
    )


def test_closure_follows_package_inits_and_lazy_imports_but_not_type_checking(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from captioning.comparison import Comparison\n"
        "def main():\n"
        "    from captioning.data import layout\n",
        encoding="utf-8",
    )
    files = {str(f.relative_to(SRC)) for f in closure(script)}
    assert "captioning/data/layout.py" in files  # `from package import module`, in a function
    assert {"captioning/__init__.py", "captioning/data/__init__.py"} <= files
    assert "captioning/comparison.py" not in files


def test_covering_deps_names_a_folder_only_when_all_of_it_runs():
    data = SRC / "captioning" / "data"
    some = {data / "__init__.py", data / "layout.py"}
    assert covering_deps(some) == sorted(some)
    everything = set(data.rglob("*.py"))
    assert covering_deps(everything) == [data]
