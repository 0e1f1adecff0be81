"""Running DVC stages from a scheduler (the Prefect flows in flows/) with DVC as the one truth.

A run's parameters are validated and written into params.yaml first, as ``dvc exp run -S
key=value`` does; then what to run comes from DVC's own DAG as those params make it (stage names
and order, foreach variants included: a run that changes ``train.decoders`` runs the new
decoders' stages); each stage runs as ``dvc repro --single-item <stage>`` (DVC skips it when
nothing changed and updates dvc.lock when it runs). Afterwards params.yaml, dvc.lock and the
outputs agree and ``dvc status`` is clean.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import json
import logging
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml

from captioning.config import ConfigError, Params, from_dict, load_yaml
from captioning.errors import CaptioningError

logger = logging.getLogger(__name__)

# Stages whose base name is here run on the GPU machine under the `gpu` concurrency limit.
GPU_STAGES = frozenset({"features", "train", "evaluate"})
GPU_TAG = "gpu"
# The stage whose foreach variants are decoders (train@soft_attention, ...).
DECODER_STAGE = "train"
FLOW_RUN_ENV = "CAPTIONING_PREFECT_FLOW_RUN_ID"
# Flow parameters that are shorthands for one params.yaml key.
NAMED_PARAMS = {
    "dataset": "fetch.source",
    "encoder": "features.encoder",
    "decoder": "train.decoders",  # the one decoder a DAG without a foreach over them trains
}
# Shorthands whose key holds a list: the named value is its one item.
_LIST_KEYS = frozenset({"train.decoders"})

_STAGE_ERROR = re.compile(r"^\S+ (?:ERROR|CRITICAL) captioning[\w.]*: (?P<message>.+)$")
_DVC_ERROR = re.compile(r"^ERROR: (?P<message>.+)$")


class StageFailed(CaptioningError, RuntimeError):
    """A DVC stage exited non-zero; ``error`` is the stage's own one-line error."""

    def __init__(self, stage: str, error: str) -> None:
        super().__init__(stage, error)  # both in args: the exception pickles (Prefect results)
        self.stage = stage
        self.error = error

    def __str__(self) -> str:
        return f"stage {self.stage!r} failed: {self.error}"


def base_name(stage: str) -> str:
    """``train@soft_attention`` -> ``train``; ``fetch`` -> ``fetch``."""
    return stage.partition("@")[0]


def stage_tags(stage: str) -> list[str]:
    """Prefect tags of a stage's task: ``gpu`` for the GPU-heavy ones."""
    return [GPU_TAG] if base_name(stage) in GPU_STAGES else []


@dataclass(frozen=True)
class RunPlan:
    """The stages of one run in DAG order, and whether ``decoder`` picked foreach variants."""

    stages: list[str]
    decoder_is_variant: bool = False


def plan_stages(root: Path, targets: Sequence[str] = (), decoder: str | None = None) -> RunPlan:
    """The DVC stages to run, upstream first, as ``dvc repro [targets]`` would consider them.

    ``targets`` are DVC targets (``evaluate``, ``train@soft_attention``,
    ``pipelines/captcha/dvc.yaml``; empty: the whole DAG of the root ``dvc.yaml``),
    each with everything upstream of it. If ``train`` is a foreach stage, ``decoder`` keeps only
    that variant of every foreach stage (and drops what depends on the other variants, e.g. a
    comparison of all decoders); otherwise the decoder is a parameter (``train.decoders``).
    The plan follows params.yaml as it is now (foreach over ``${train.decoders}``): write a
    run's params first (``run_params``, ``apply_params``), then plan.
    """
    import networkx as nx
    from dvc.repo.reproduce import plan_repro

    with _dag(root, targets) as (graph, chosen):
        ordered = plan_repro(graph, chosen)
        names = {stage: stage.addressing for stage in graph.nodes}
        variants = _decoder_variants(_same_files(graph, chosen))  # this pipeline's
        if not decoder or not variants:
            return RunPlan([names[stage] for stage in ordered])
        if decoder not in variants:
            raise ConfigError(
                f"dvc.yaml: no stage {DECODER_STAGE}@{decoder}; decoders: {sorted(variants)}"
            )
        others = [s for s, n in names.items() if n.partition("@")[2] in variants - {decoder}]
        dropped = set(others).union(*(nx.ancestors(graph, stage) for stage in others))
        return RunPlan([names[s] for s in ordered if s not in dropped], decoder_is_variant=True)


@dataclass(frozen=True)
class Pipeline:
    """What a run's parameters mean for the DAG it targets, read before they are written."""

    params_file: Path  # the params.yaml beside the targets' dvc.yaml: what its stages read
    decoders: frozenset[str]  # of its train@<decoder> stages; empty if train is no foreach


def pipeline_of(root: Path, targets: Sequence[str] = ()) -> Pipeline:
    """The pipeline (one dvc.yaml) of ``targets`` (see plan_stages): its params file, and its
    decoders if ``train`` is a foreach stage, so that a run's ``decoder`` is a variant to pick
    (added to ``train.decoders`` first if it has none) rather than the value of the list."""
    with _dag(root, targets) as (graph, chosen):
        files = {Path(stage.path).resolve() for stage in chosen}
        if len(files) != 1:
            where = sorted(str(f.relative_to(Path(root).resolve())) for f in files)
            raise ConfigError(
                f"targets {list(targets)} are stages of {where}: one pipeline per run"
            )
        (dvc_yaml,) = files
        decoders = _decoder_variants(_same_files(graph, chosen))
        return Pipeline(dvc_yaml.parent / "params.yaml", frozenset(decoders))


@contextlib.contextmanager
def _dag(root: Path, targets: Sequence[str]):
    """DVC's stage graph of the repo at ``root`` and the stages ``targets`` name (see plan_stages)."""
    from dvc.repo import Repo

    # Stage addresses and targets are relative to the cwd: plan from the repo, where they run.
    with contextlib.chdir(root), Repo(".") as repo:
        graph = repo.index.graph  # edges go from a stage to the stages it depends on
        chosen = [stage for target in targets for stage in repo.stage.collect(target)]
        if not chosen:
            # The whole DAG is the captioner's dvc.yaml at the root, not every pipeline of the
            # repository (pipelines/captcha/dvc.yaml is its own DAG: a target of its own).
            main = (Path(root) / "dvc.yaml").resolve()
            chosen = [stage for stage in graph.nodes if Path(stage.path).resolve() == main]
        yield graph, chosen


def _same_files(graph: Any, chosen: Iterable[Any]) -> list[Any]:
    """The stages of the graph in the dvc.yaml files of the ``chosen`` ones."""
    files = {Path(stage.path).resolve() for stage in chosen}
    return [stage for stage in graph.nodes if Path(stage.path).resolve() in files]


def _decoder_variants(stages: Iterable[Any]) -> set[str]:
    """The decoders of the ``train@<decoder>`` foreach variants among ``stages``."""
    names = (stage.addressing for stage in stages)
    return {name.partition("@")[2] for name in names if base_name(name) == DECODER_STAGE} - {""}


def run_params(
    pipeline: Pipeline,
    overrides: Mapping[str, Any] | None = None,
    *,
    recipe: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    encoder: str | None = None,
    decoder: str | None = None,
) -> dict[str, Any]:
    """The keys a run writes into ``pipeline.params_file``: ``recipe`` (``read_recipe``), then
    ``overrides`` and the shorthands, which win over it.

    With a foreach ``train`` stage, ``decoder`` must be in an override of ``train.decoders``;
    without one, a decoder that has no stages yet is added to ``train.decoders`` (the recipe's,
    else the params file's), so that its stages exist once the params are written. Without a
    foreach, ``decoder`` sets ``train.decoders`` to ``[decoder]``.
    """
    recipe = dict(recipe or {})
    variants = pipeline.decoders if decoder else frozenset()
    if not variants:
        named = run_overrides(overrides, dataset=dataset, encoder=encoder, decoder=decoder)
        return {**recipe, **named}
    params = run_overrides(overrides, dataset=dataset, encoder=encoder)
    key = NAMED_PARAMS["decoder"]
    if key in params:
        if decoder not in params[key]:
            raise ConfigError(
                f"parameter decoder={decoder!r} is not in override {key}={params[key]!r}"
            )
        return {**recipe, **params}
    if key in recipe:
        current = recipe[key]
    elif decoder in variants:
        return {**recipe, **params}
    else:
        current = _get_dotted(_read_yaml(pipeline.params_file), key)
    decoders = list(current) if isinstance(current, list) else []
    if decoder not in decoders:
        params[key] = [*decoders, decoder]
    return {**recipe, **params}


def run_overrides(
    overrides: Mapping[str, Any] | None = None, **named: str | None
) -> dict[str, Any]:
    """Dotted params.yaml keys -> values for a run: ``overrides`` plus the named shorthands.

    ``named`` takes the keys of NAMED_PARAMS (``dataset="captcha"`` -> ``fetch.source``); a
    shorthand that contradicts an explicit override is an error rather than a silent choice.
    """
    merged = dict(overrides or {})
    for name, value in named.items():
        if name not in NAMED_PARAMS:
            raise TypeError(f"unknown shorthand {name!r}; expected one of {sorted(NAMED_PARAMS)}")
        if value is None:
            continue
        key = NAMED_PARAMS[name]
        setting = [value] if key in _LIST_KEYS else value
        if key in merged and merged[key] != setting:
            raise ConfigError(
                f"parameter {name}={value!r} contradicts override {key}={merged[key]!r}"
            )
        merged[key] = setting
    return merged


@dataclass(frozen=True)
class ParamChange:
    key: str
    old: Any
    new: Any


def apply_params(params_path: Path, overrides: Mapping[str, Any]) -> list[ParamChange]:
    """Write ``overrides`` (dotted keys) into params.yaml, keeping its comments; return changes.

    The whole resulting file is validated first, so a typo or a bad value fails here with the
    file, key, expected and found, and never lands in params.yaml.
    """
    params_path = Path(params_path)
    if not overrides:
        return []
    current = _read_yaml(params_path)
    proposed = copy.deepcopy(current)
    changes = []
    for key, value in overrides.items():
        old = _set_dotted(proposed, key, value, params_path)
        if old != value:
            changes.append(ParamChange(key, old, value))
    from_dict(Params, proposed, path=params_path, prefix="")
    if changes:
        from dvc.utils.serialize import modify_yaml  # DVC's round-trip writer, as `-S` uses

        with modify_yaml(params_path) as data:
            for change in changes:
                _set_dotted(data, change.key, change.new, params_path)
        logger.info("%s: %s", params_path, ", ".join(f"{c.key}={c.new!r}" for c in changes))
    return changes


# A dotted params.yaml key below a section, `train.model.hidden_dim` (a whole section would
# replace every key of it that is left out).
_DOTTED_KEY = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")


def read_recipe(path: Path) -> dict[str, Any]:
    """A recipe file (recipes/coco2017.yaml): a YAML mapping of dotted params.yaml keys to values.

    Only its form is checked here (one line naming the file and the key); its keys and values
    are checked against params.yaml by ``check_layers``.
    """
    path = Path(path)
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: recipe file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: byte {exc.start} is not UTF-8; expected a YAML file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot parse"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping of dotted params.yaml keys (train.epochs: 20), "
            f"found {type(raw).__name__}"
        )
    for key in raw:
        if not isinstance(key, str) or not _DOTTED_KEY.fullmatch(key):
            raise ConfigError(
                f"{path}: key {key!r}: expected a dotted params.yaml key like 'train.epochs'"
            )
    return raw


def parse_set(assignments: Iterable[str], source: str = "--set") -> dict[str, Any]:
    """``["train.epochs=1", "train.decoders=[nic]"]`` -> dotted keys and values, each value
    read as YAML (as ``dvc exp run -S`` reads it): ``1`` an int, ``false`` a bool."""
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not _DOTTED_KEY.fullmatch(key):
            raise ConfigError(f"{source} {assignment!r}: expected KEY=VALUE, e.g. train.epochs=1")
        try:
            overrides[key] = load_yaml(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or "cannot parse"
            raise ConfigError(
                f"{source} {assignment!r}: value is not valid YAML: {problem}"
            ) from None
    return overrides


def check_layers(params_path: Path, layers: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """params.yaml, then with each layer of overrides added in turn, must validate.

    A layer is (its source, its dotted keys): a recipe file, ``--set``. Each error names the
    source that brought it (``recipes/coco2017.yaml: unknown key 'train.epoch'``), not the
    params.yaml the keys would be written to; params.yaml itself is checked first.
    """
    params_path = Path(params_path)
    if not params_path.is_file():
        raise ConfigError(f"{params_path}: params file not found")
    proposed = _read_yaml(params_path)
    from_dict(Params, proposed, path=params_path, prefix="")
    for source, overrides in layers:
        for key, value in overrides.items():
            _set_dotted(proposed, key, copy.deepcopy(value), Path(source))
        from_dict(Params, proposed, path=source, prefix="")


def apply_recipe(
    params_path: Path,
    recipe_path: Path,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[ParamChange]]:
    """Write a recipe, and ``overrides`` (``--set``, winning over it), into params.yaml.

    Checked first, layer by layer (``check_layers``): nothing is written unless all of it is
    valid. Returns every key set (for ``dvc_set_args``) and the changes made.
    """
    recipe = read_recipe(recipe_path)
    overrides = dict(overrides or {})
    check_layers(params_path, [(str(recipe_path), recipe), ("--set", overrides)])
    keys = {**recipe, **overrides}
    return keys, apply_params(params_path, keys)


def _read_yaml(path: Path) -> dict:
    return load_yaml(Path(path).read_text(encoding="utf-8")) or {}


def _get_dotted(data: Mapping, key: str) -> Any:
    """``a.b.c`` of nested dicts, or None where a level is missing."""
    node: Any = data
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _set_dotted(data: dict, key: str, value: Any, path: Path) -> Any:
    """Set ``a.b.c`` in nested dicts (creating missing levels); return the old value or None."""
    *parents, leaf = key.split(".")
    node = data
    for i, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            where = ".".join(parents[: i + 1])
            raise ConfigError(f"{path}: key {where!r} is a value, cannot set {key!r} below it")
    old = node.get(leaf)
    node[leaf] = value
    return old


def dvc_set_args(overrides: Mapping[str, Any]) -> list[str]:
    """The ``dvc exp run`` arguments setting the same params: ``["-S", "train.epochs=1", ...]``."""
    args: list[str] = []
    for key, value in overrides.items():
        text = value if isinstance(value, str) else json.dumps(value)
        args += ["-S", f"{key}={text}"]
    return args


def stage_error(output: str) -> str:
    """The stage's own one-line error from its output (DVC's, or the traceback's last line)."""
    lines = [line.rstrip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if match := _STAGE_ERROR.match(line):
            return match["message"]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    if starts:
        for line in lines[starts[-1] + 1 :]:
            if not line[0].isspace():
                return line
    for line in reversed(lines):
        if match := _DVC_ERROR.match(line):
            return match["message"]
    return " | ".join(lines[-3:]) or "no output"


@dataclass(frozen=True)
class StageResult:
    stage: str
    ran: bool  # False: DVC found it up to date and did nothing
    output: str


class StageRunner(Protocol):
    def __call__(
        self, stage: str, root: Path, *, env: Mapping[str, str], log: Callable[[str], None]
    ) -> StageResult: ...


class DvcStageRunner:
    """Runs ``dvc repro --single-item <stage>``, streaming its output lines to ``log``."""

    def __init__(self, tail_lines: int = 400) -> None:
        self.tail_lines = tail_lines

    def __call__(
        self, stage: str, root: Path, *, env: Mapping[str, str], log: Callable[[str], None]
    ) -> StageResult:
        root = Path(root)
        command = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
        tail: collections.deque[str] = collections.deque(maxlen=self.tail_lines)
        with subprocess.Popen(
            command,
            cwd=root,
            env=stage_env(root, env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                tail.append(line.rstrip("\n"))
                log(tail[-1])
        output = "\n".join(tail)
        if process.returncode != 0:
            raise StageFailed(stage, stage_error(output))
        return StageResult(stage, ran=not _was_skipped(stage, output), output=output)


def stage_env(root: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a stage: ours, ``extra``, this Python's bin first and the repo's src.

    The stages' ``python`` must be this interpreter, and they must import the checkout's
    ``src/`` (the code dvc.yaml hashes as their deps), not another install of the package.
    """
    env = {**os.environ, **extra, "DVC_NO_ANALYTICS": "1"}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    src = Path(root).resolve() / "src"
    if src.is_dir():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    return env


def _was_skipped(stage: str, output: str) -> bool:
    return f"Stage '{stage}' didn't change, skipping" in output and "Running stage" not in output


def summary_markdown(
    changes: Iterable[ParamChange],
    outcome: Mapping[str, str],
    overrides: Mapping[str, Any],
    failure: CaptioningError | None = None,
) -> str:
    """A run's record: the params it set, what each stage did, the equivalent DVC command."""
    lines = ["# captioning pipeline run", "", "## Parameters written to params.yaml", ""]
    changes = list(changes)
    if changes:
        lines += ["| key | before | now |", "|---|---|---|"]
        lines += [f"| `{c.key}` | `{c.old!r}` | `{c.new!r}` |" for c in changes]
    else:
        lines.append("none (params.yaml as it was)")
    lines += ["", "## Stages", "", "| stage | outcome |", "|---|---|"]
    lines += [f"| `{stage}` | {result} |" for stage, result in outcome.items()]
    if failure is not None:
        lines += ["", f"**Failed:** {failure}"]
    command = shlex.join(["dvc", "exp", "run", *dvc_set_args(overrides)])  # pasteable as is
    lines += ["", f"Same with DVC alone: `{command}`"]
    return "\n".join(lines) + "\n"
