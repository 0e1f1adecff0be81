"""Prefect flow `captioning-pipeline`: the DVC stages in DAG order, one task per stage.

DVC stays the one truth of what is up to date: the run's parameters are written into params.yaml
first, as `dvc exp run -S` would, then the stages and their order come from dvc.yaml as those
parameters make it (a run that changes `train.decoders` runs the new decoders' stages), and each
task runs `dvc repro --single-item <stage>` (an unchanged stage does no work), so that afterwards
dvc.lock matches and `dvc status` is clean. The library part is `captioning.orchestration`;
deployments are in prefect.yaml (see README, "Scheduling with Prefect").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from captioning import runtime

runtime.setup()
logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call otherwise

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from prefect.states import Failed  # noqa: E402
from prefect.tasks import exponential_backoff  # noqa: E402

from captioning import orchestration  # noqa: E402
from captioning.errors import CaptioningError  # noqa: E402
from captioning.orchestration import StageFailed  # noqa: E402, F401  (re-exported for callers)

REPO = Path(__file__).resolve().parents[1]
# Downloads resume, so a retry of `fetch` after a network error costs little: 10, 20, 40 s.
FETCH_RETRIES = 3
FETCH_BACKOFF_SECONDS = 10.0

# What runs a stage; tests put a double here (e.g. a fetch that fails once).
stage_runner: orchestration.StageRunner = orchestration.DvcStageRunner()


@task(cache_policy=NO_CACHE)  # DVC decides what is up to date, not Prefect's cache
def dvc_stage(stage: str, repo: Path) -> str:
    """One DVC stage; "ran" or "skipped" (DVC found nothing changed)."""
    logger = get_run_logger()
    env = {orchestration.FLOW_RUN_ENV: str(flow_run.get_id() or "")}
    result = stage_runner(stage, repo, env=env, log=logger.info)
    return "ran" if result.ran else "skipped"


def stage_task(stage: str):
    """The task of one stage: named after it, `gpu`-tagged, retried with backoff if `fetch`."""
    options: dict[str, Any] = {"name": f"dvc-{stage}", "tags": orchestration.stage_tags(stage)}
    if orchestration.base_name(stage) == "fetch":
        options["retries"] = FETCH_RETRIES
        options["retry_delay_seconds"] = exponential_backoff(FETCH_BACKOFF_SECONDS)
        options["retry_jitter_factor"] = 0.2
    return dvc_stage.with_options(**options)


@flow(name="captioning-pipeline", log_prints=False)
def captioning_pipeline(
    dataset: str | None = None,
    encoder: str | None = None,
    decoder: str | None = None,
    overrides: dict[str, Any] | None = None,
    targets: list[str] | None = None,
    repo: str = str(REPO),
    recipe: str | None = None,
):
    """Run the DVC stages up to ``targets`` (default: all) with these parameters.

    ``recipe``: a recipe file relative to the repo (recipes/coco2017.yaml), its dotted keys
    written first; dataset, encoder and decoder set fetch.source, features.encoder and
    train.decoders (with a foreach train stage, decoder is added to train.decoders if missing
    and picks its variants); ``overrides`` sets any other params.yaml keys, e.g.
    {"train.epochs": 30} or {"train.decoders": ["nic", "soft_attention"]}. Overrides and
    shorthands win over the recipe. Returns each stage's outcome: "ran" or "skipped".
    """
    logger = get_run_logger()
    root = Path(repo)
    params: dict[str, Any] = dict(overrides or {})
    changes: list[orchestration.ParamChange] = []
    outcome: dict[str, str] = {}
    failure = None
    try:
        pipeline = orchestration.pipeline_of(root, targets or ())
        keys = orchestration.read_recipe(root / recipe) if recipe else {}
        params = orchestration.run_params(
            pipeline, overrides, recipe=keys, dataset=dataset, encoder=encoder, decoder=decoder
        )
        if recipe:  # its own errors name the recipe file
            orchestration.check_layers(pipeline.params_file, [(recipe, keys)])
        changes = orchestration.apply_params(pipeline.params_file, params)  # validated first
        # Planned from the params just written: train.decoders decides the foreach stages.
        plan = orchestration.plan_stages(root, targets or (), decoder)
        logger.info("stages: %s", ", ".join(plan.stages))
        for stage in plan.stages:
            outcome[stage] = stage_task(stage)(stage, root)
            logger.info("stage %s: %s", stage, outcome[stage])
    except CaptioningError as exc:  # a refused parameter, or a stage's own one-line error
        failure = exc
        if isinstance(exc, StageFailed):
            outcome[exc.stage] = "failed"
    create_markdown_artifact(
        key="captioning-run",
        markdown=orchestration.summary_markdown(changes, outcome, params, failure),
        description="params written, stage outcomes, the equivalent `dvc exp run`",
    )
    if failure is not None:
        # The flow run's state message is the one-line error, not a generic one or a traceback.
        return Failed(message=str(failure), data=failure)
    return outcome


if __name__ == "__main__":
    runtime.run(captioning_pipeline)  # a failed run: its one-line error, exit 2
