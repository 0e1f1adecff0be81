"""Prefect flow `captioning-pipeline`: run the DVC stages in DAG order, one task per stage.

Each task calls `dvc repro --single-item <stage>`, so DVC stays the one truth of what is up to
date: an unchanged stage does no work, and the run leaves dvc.lock as `dvc repro` would.
Deployments, schedules and work pools build on this flow (see README).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

REPO = Path(__file__).resolve().parents[1]
# DAG order of dvc.yaml; GPU-heavy stages carry the `gpu` tag for a concurrency limit.
STAGES = ("fetch", "shard", "vocab", "features", "train", "evaluate", "register")
GPU_STAGES = {"features", "train", "evaluate"}


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message is the stage's own error output."""


def run_stage(stage: str, repo: Path = REPO) -> str:
    """Reproduce one stage with DVC and return its output; raise StageFailed with its stderr."""
    env = {**os.environ, "CAPTIONING_PREFECT_FLOW_RUN_ID": str(flow_run.get_id() or "")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "--single-item", stage],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise StageFailed(f"stage {stage!r} failed:\n{tail}")
    return result.stdout


@flow(name="captioning-pipeline", log_prints=False)
def captioning_pipeline(repo: str = str(REPO)) -> dict[str, str]:
    """Run every stage in order; returns which stages ran and which were up to date."""
    logger = get_run_logger()
    outcome: dict[str, str] = {}
    for stage in STAGES:
        stage_task = task(
            run_stage,
            name=f"dvc-{stage}",
            tags=["gpu"] if stage in GPU_STAGES else [],
            retries=2 if stage == "fetch" else 0,
            retry_delay_seconds=[10, 60] if stage == "fetch" else 0,
        )
        output = stage_task(stage, Path(repo))
        outcome[stage] = "skipped" if "didn't change" in output else "ran"
        logger.info("stage %s: %s", stage, outcome[stage])
    return outcome


if __name__ == "__main__":
    captioning_pipeline()
