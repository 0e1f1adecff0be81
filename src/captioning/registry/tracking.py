"""MLflow setup and lineage: where runs are stored and what code and data produced them."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

import yaml

logger = logging.getLogger(__name__)

MISSING = "missing"
UNKNOWN = "unknown"
_FLOW_RUN_ENV_VARS = ("CAPTIONING_PREFECT_FLOW_RUN_ID", "PREFECT__FLOW_RUN_ID")
_default_uri: str | None = None


def pipeline_dir(start: Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: cwd) holding dvc.yaml, else cwd:
    the pipeline whose dvc.lock the lineage tags read."""
    here = Path(start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file():
            return candidate
    return Path.cwd().resolve()


def project_root(start: Path | None = None) -> Path:
    """The DVC repository holding ``start`` (default: cwd): where the project's one MLflow store is.

    The nearest directory at or above ``start`` with a ``.dvc/`` directory, so that every
    pipeline of the repository (pipelines/captcha too) and every command run from a
    subdirectory finds the same store. A path inside a ``.dvc/`` (the workspace of a queued or
    ``--temp`` experiment, ``.dvc/tmp/exps/...``) belongs to the repository around it. Outside
    any DVC repository: the nearest directory holding dvc.yaml, else ``start`` itself.
    """
    here = Path(start or Path.cwd()).resolve()
    if ".dvc" in here.parts:
        return Path(*here.parts[: here.parts.index(".dvc")])
    for candidate in (here, *here.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file():
            return candidate
    return here


def default_tracking_uri(start: Path | None = None) -> str:
    """``sqlite:///<project root>/mlflow.db`` (artifacts beside it, ``artifact_location``)."""
    return f"sqlite:///{project_root(start) / 'mlflow.db'}"


def configure_mlflow(start: Path | None = None) -> str:
    """Point MLflow at ``$MLFLOW_TRACKING_URI``, else at the store of the project holding
    ``start`` (default: cwd; ``default_tracking_uri``); return the URI."""
    import mlflow

    global _default_uri
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # tqdm bars from artifact downloads (log_model re-reads its artifacts) clutter stage logs.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    # mlflow.set_tracking_uri() exports MLFLOW_TRACKING_URI: a value we set ourselves is not
    # the user's choice, so another project later in the same process still gets its own store.
    if not uri or uri == _default_uri:
        uri = _default_uri = default_tracking_uri(start)
    mlflow.set_tracking_uri(uri)
    return uri


def artifact_location(tracking_uri: str) -> str | None:
    """``<db dir>/mlartifacts`` for a local SQLite store; None (the server decides) otherwise.

    Without it MLflow would put artifacts in ``./mlruns`` relative to whatever the cwd is.
    """
    parsed = urlparse(tracking_uri)
    if parsed.scheme != "sqlite" or not parsed.path or ":memory:" in tracking_uri:
        return None
    db_path = Path(tracking_uri[len("sqlite:///") :])
    return (db_path.parent / "mlartifacts").resolve().as_uri()


def get_or_create_experiment(name: str, start: Path | None = None) -> str:
    """The id of experiment ``name``, created with a local artifact location if needed."""
    import mlflow

    uri = configure_mlflow(start)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = artifact_location(uri)
    logger.info("creating MLflow experiment %r (artifacts: %s)", name, location or "server default")
    return client.create_experiment(name, artifact_location=location)


def lineage_tags(root: Path, stages: Sequence[str]) -> dict[str, str]:
    """Tags linking a run to its code (git), data (dvc.lock outs hashes) and Prefect run.

    Keys: ``git.commit``, ``git.dirty`` ("true"/"false"; untracked files do not count, as in
    ``git describe --dirty``; "unknown" outside git), ``dvc.<stage>.outs`` (see ``stage_tag``; a
    12-hex sha256 of the stage's ``path:md5`` outs, or "missing"), ``prefect.flow_run_id``.
    """
    root = Path(root)
    tags = {"git.commit": UNKNOWN, "git.dirty": UNKNOWN}
    commit = _git(root, "rev-parse", "HEAD")
    if commit is not None:
        tags["git.commit"] = commit.strip()
        status = _git(root, "status", "--porcelain", "--untracked-files=no")
        if status is not None:
            tags["git.dirty"] = str(bool(status.strip())).lower()
    lock = _read_lock(root / "dvc.lock")
    for stage in stages:
        tags[stage_tag(stage)] = _outs_hash(lock, stage)
    for var in _FLOW_RUN_ENV_VARS:
        if os.environ.get(var):
            tags["prefect.flow_run_id"] = os.environ[var]
            break
    return tags


def locked_stages(root: Path) -> set[str]:
    """Names of the stages recorded in ``root/dvc.lock`` (empty if there is none)."""
    stages = (_read_lock(Path(root) / "dvc.lock", quiet=True) or {}).get("stages")
    return set(stages) if isinstance(stages, dict) else set()


def stage_tag(stage: str) -> str:
    """``dvc.<stage>.outs``; MLflow refuses '@' in names, so ``train@x`` becomes ``train:x``."""
    return "dvc." + re.sub(r"[^\w\-. :/]", "_", stage.replace("@", ":")) + ".outs"


def _git(root: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("git %s failed: %s", " ".join(args), exc)
        return None
    return result.stdout if result.returncode == 0 else None


def _read_lock(path: Path, quiet: bool = False) -> dict | None:
    log = logger.debug if quiet else logger.warning
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        log("%s not found: data lineage tags will say %r", path, MISSING)
        return None
    except (OSError, yaml.YAMLError) as exc:
        log("%s unreadable (%s): data lineage tags will say %r", path, exc, MISSING)
        return None
    return data if isinstance(data, dict) else None


def _outs_hash(lock: dict | None, stage: str) -> str:
    """A short stable hash of a stage's outputs as recorded in dvc.lock, or "missing"."""
    stages = (lock or {}).get("stages") or {}
    entry = stages.get(stage) if isinstance(stages, dict) else None
    outs = entry.get("outs") if isinstance(entry, dict) else None
    if not outs:
        return MISSING
    lines = sorted(
        f"{out.get('path')}:{out.get('md5') or out.get('etag') or out.get('checksum')}"
        for out in outs
        if isinstance(out, dict)
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]
