"""The `captioning-pipeline` flow on toy DVC repositories, against Prefect's test server."""

from __future__ import annotations

import importlib.util
import shutil

import pytest
import yaml
from toy_dvc import REPO, TOY_DECODERS_DVC, dvc, make_toy_repo, write_cmd

from captioning.orchestration import DvcStageRunner, StageFailed, StageResult


@pytest.fixture
def toy_repo(tmp_path):
    return make_toy_repo(tmp_path / "toy")


@pytest.fixture(scope="module")
def flows():
    from prefect.testing.utilities import prefect_test_harness

    spec = importlib.util.spec_from_file_location("pipeline_flow", REPO / "flows" / "pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with prefect_test_harness(server_startup_timeout=120):
        yield module


def task_runs(flow_run_id) -> dict[str, object]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {run.name: run for run in runs}


def read_flow_run(flow_run_id):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def run_summary(flow_run_id) -> str:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return artifact.data


def test_run_with_params_runs_one_decoder_tags_gpu_and_records_everything(flows, toy_repo):
    state = flows.captioning_pipeline(
        repo=str(toy_repo),
        decoder="x",
        encoder="small_cnn",
        overrides={"train.epochs": 3},
        return_state=True,
    )
    assert state.is_completed(), state.message
    assert state.result() == {
        "fetch": "ran",
        "shard": "ran",
        "features": "ran",
        "train@x": "ran",
        "evaluate@x": "ran",
    }
    params = yaml.safe_load((toy_repo / "params.yaml").read_text())
    assert params["features"]["encoder"] == "small_cnn" and params["train"]["epochs"] == 3
    # dvc.lock agrees with params.yaml and the outputs: nothing of this run is out of date.
    assert "up to date" in dvc(toy_repo, "status", "evaluate@x").lower()

    flow_run_id = state.state_details.flow_run_id
    tags = {name.rsplit("-", 1)[0]: run.tags for name, run in task_runs(flow_run_id).items()}
    assert tags == {
        "dvc-fetch": [],
        "dvc-shard": [],
        "dvc-features": ["gpu"],
        "dvc-train@x": ["gpu"],
        "dvc-evaluate@x": ["gpu"],
    }
    recorded = read_flow_run(flow_run_id).parameters
    assert recorded["overrides"] == {"train.epochs": 3} and recorded["decoder"] == "x"
    summary = run_summary(flow_run_id)
    assert "| `features.encoder` | `'efficientnet_lite0'` | `'small_cnn'` |" in summary
    assert "dvc exp run -S train.epochs=3 -S features.encoder=small_cnn" in summary

    # The same params again: DVC finds the stages up to date and none does any work.
    again = flows.captioning_pipeline(
        repo=str(toy_repo), encoder="small_cnn", overrides={"train.epochs": 3}, targets=["features"]
    )
    assert again == {"fetch": "skipped", "shard": "skipped", "features": "skipped"}


class FetchFailsOnce:
    """The real runner, except that the first `fetch` fails as a dropped download would."""

    def __init__(self) -> None:
        self.real = DvcStageRunner()
        self.calls: list[str] = []

    def __call__(self, stage, root, *, env, log) -> StageResult:
        self.calls.append(stage)
        if stage == "fetch" and self.calls.count("fetch") == 1:
            raise StageFailed(stage, "http://mirror/x.zip: connection reset by peer")
        return self.real(stage, root, env=env, log=log)


def test_a_fetch_that_fails_once_is_retried(flows, toy_repo, monkeypatch):
    runner = FetchFailsOnce()
    monkeypatch.setattr(flows, "stage_runner", runner)
    monkeypatch.setattr(flows, "FETCH_BACKOFF_SECONDS", 0.0)
    state = flows.captioning_pipeline(repo=str(toy_repo), targets=["shard"], return_state=True)
    assert state.is_completed(), state.message
    assert runner.calls == ["fetch", "fetch", "shard"]
    (fetch_run,) = [
        r for n, r in task_runs(state.state_details.flow_run_id).items() if "fetch" in n
    ]
    assert fetch_run.run_count == 2 and fetch_run.state.is_completed()
    assert (toy_repo / "shards.txt").read_text() == "raw"


def test_a_stage_error_is_the_failed_flow_runs_message(flows, tmp_path):
    # The real vocab stage, given params it refuses.
    dag = {
        "stages": {
            "fetch": {"cmd": "python -c \"open('raw.txt', 'w').write('r')\"", "outs": ["raw.txt"]},
            "vocab": {
                "cmd": "python stages/vocab.py --shards raw.txt --out vocab.json",
                "deps": ["raw.txt"],
                "params": ["vocab.min_freq"],
                "outs": ["vocab.json"],
            },
        }
    }
    root = tmp_path / "broken"
    root.mkdir()
    shutil.copytree(REPO / "stages", root / "stages")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["vocab"]["min_freq"] = 0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    make_toy_repo(root, dag)
    # The params file is broken before the run: the flow sets nothing, the stage finds it.
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    state = flows.captioning_pipeline(repo=str(root), return_state=True)
    expected = "stage 'vocab' failed: params.yaml: key 'vocab.min_freq': expected >= 1, found 0"
    assert state.is_failed() and state.message == expected
    assert read_flow_run(state.state_details.flow_run_id).state.message == expected
    with pytest.raises(StageFailed, match="expected >= 1, found 0"):
        state.result()
    assert "| `fetch` | ran |" in run_summary(state.state_details.flow_run_id)


def test_a_bad_override_fails_before_any_stage_runs(flows, toy_repo):
    before = (toy_repo / "params.yaml").read_text()
    state = flows.captioning_pipeline(
        repo=str(toy_repo), overrides={"train.epoch": 3}, return_state=True
    )
    assert state.is_failed() and "unknown key 'train.epoch'" in state.message
    assert (toy_repo / "params.yaml").read_text() == before
    assert not (toy_repo / "raw.txt").exists()


def test_an_unknown_encoder_fails_with_its_one_line_before_any_stage_runs(flows, toy_repo):
    from captioning.config import ENCODER_NAMES

    before = (toy_repo / "params.yaml").read_text()
    state = flows.captioning_pipeline(repo=str(toy_repo), encoder="resnet102", return_state=True)
    expected = (
        f"{toy_repo / 'params.yaml'}: key 'features.encoder': expected one of "
        f"{sorted(ENCODER_NAMES)}, found 'resnet102'"
    )
    assert state.is_failed() and state.message == expected
    assert f"**Failed:** {expected}" in run_summary(state.state_details.flow_run_id)
    assert (toy_repo / "params.yaml").read_text() == before
    assert not (toy_repo / "raw.txt").exists()


def deployment_parameters(name: str) -> dict:
    (deployment,) = [
        d
        for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
        if d["name"] == name
    ]
    return deployment["parameters"]


def test_runs_that_change_train_decoders_run_the_new_decoders_stages(flows, tmp_path):
    root = make_toy_repo(tmp_path / "decoders", TOY_DECODERS_DVC)
    assert yaml.safe_load((root / "params.yaml").read_text())["train"]["decoders"] == [
        "soft_attention"
    ]
    # soft_attention's stages leave the DAG with it; nic's and mrnn's join it.
    state = flows.captioning_pipeline(
        repo=str(root), overrides={"train.decoders": ["nic", "mrnn"]}, return_state=True
    )
    assert state.is_completed(), state.message
    outcome = state.result()
    per_decoder = [
        f"{stage}@{d}" for stage in ("train", "evaluate", "register") for d in ("nic", "mrnn")
    ]
    assert sorted(outcome) == sorted(["features", *per_decoder, "compare"])
    assert set(outcome.values()) == {"ran"}
    stages = list(outcome)
    assert stages.index("train@nic") < stages.index("evaluate@nic") < stages.index("register@nic")
    assert stages[-1] == "compare"
    assert (root / "reports/mrnn/registered.txt").read_text() == "mrnn"
    assert not (root / "reports/soft_attention").exists()
    assert "up to date" in dvc(root, "status").lower()

    # The nightly deployment as prefect.yaml has it: its decoder, no longer in train.decoders,
    # is added, then trained and evaluated (and only it: the others are done and not targets).
    parameters = deployment_parameters("retrain-and-evaluate")
    assert parameters["decoder"] == "soft_attention" and parameters["targets"] == ["evaluate"]
    again = flows.captioning_pipeline(repo=str(root), **parameters)
    assert again == {
        "features": "skipped",
        "train@soft_attention": "ran",
        "evaluate@soft_attention": "ran",
    }
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["train"]["decoders"] == ["nic", "mrnn", "soft_attention"]
    assert (root / "reports/soft_attention/metrics.txt").read_text() == "1"


def test_a_decoder_that_contradicts_the_decoders_override_fails_before_anything(flows, tmp_path):
    root = make_toy_repo(tmp_path / "decoders", TOY_DECODERS_DVC)
    before = (root / "params.yaml").read_text()
    state = flows.captioning_pipeline(
        repo=str(root), decoder="nic", overrides={"train.decoders": ["mrnn"]}, return_state=True
    )
    expected = "parameter decoder='nic' is not in override train.decoders=['mrnn']"
    assert state.is_failed() and state.message == expected
    assert (root / "params.yaml").read_text() == before
    assert not (root / "features.txt").exists()


def test_a_run_of_another_pipelinewrite_cmds_that_pipelines_params(flows, toy_repo):
    # Like the captcha-reader deployment: the target is a dvc.yaml of its own, whose stages read
    # the params.yaml beside it, and whose train stage is no foreach (decoder = the one decoder).
    reader = toy_repo / "reader"
    reader.mkdir()
    dag = {"stages": {"train": {"cmd": write_cmd("model.txt", "${train.decoders[0]}")}}}
    (reader / "dvc.yaml").write_text(yaml.safe_dump(dag))
    shutil.copy(REPO / "pipelines/captcha/params.yaml", reader / "params.yaml")
    before = (toy_repo / "params.yaml").read_text()

    state = flows.captioning_pipeline(
        repo=str(toy_repo), targets=["reader/dvc.yaml"], decoder="nic", return_state=True
    )
    assert state.is_completed(), state.message
    assert state.result() == {"reader/dvc.yaml:train": "ran"}
    assert (reader / "model.txt").read_text() == "nic"
    assert yaml.safe_load((reader / "params.yaml").read_text())["train"]["decoders"] == ["nic"]
    assert (toy_repo / "params.yaml").read_text() == before


def test_the_coco2017_deployment_writes_its_recipe_and_explicit_overrides_win(flows, toy_repo):
    parameters = deployment_parameters("coco2017")
    assert parameters == {"recipe": "recipes/coco2017.yaml"}
    (toy_repo / "recipes").mkdir()
    shutil.copy(REPO / parameters["recipe"], toy_repo / parameters["recipe"])
    state = flows.captioning_pipeline(
        repo=str(toy_repo),
        overrides={"train.epochs": 1, "features.encoder": "small_cnn"},  # the recipe: 20, resnet101
        targets=["features"],
        return_state=True,
        **parameters,
    )
    assert state.is_completed(), state.message
    assert state.result() == {"fetch": "ran", "shard": "ran", "features": "ran"}
    params = yaml.safe_load((toy_repo / "params.yaml").read_text())
    assert params["fetch"]["source"] == "coco2017" and params["vocab"]["min_freq"] == 5
    assert params["train"]["early_stopping"] == {**params["train"]["early_stopping"], "patience": 3}
    assert params["train"]["epochs"] == 1 and params["features"]["encoder"] == "small_cnn"
    summary = run_summary(state.state_details.flow_run_id)
    assert "| `train.epochs` | `9` | `1` |" in summary
    assert "dvc exp run -S fetch.source=coco2017 -S " in summary
    assert "-S train.epochs=1 " in summary and "resnet101" not in summary


def test_a_bad_recipe_fails_the_run_naming_the_recipe_before_anything(flows, toy_repo):
    (toy_repo / "recipes").mkdir()
    (toy_repo / "recipes/bad.yaml").write_text("train.epochs: 3\ntrain.epoch: 4\n")
    before = (toy_repo / "params.yaml").read_text()
    state = flows.captioning_pipeline(
        repo=str(toy_repo), recipe="recipes/bad.yaml", return_state=True
    )
    assert state.is_failed()
    assert state.message.startswith("recipes/bad.yaml: unknown key 'train.epoch'; expected one of")
    assert (toy_repo / "params.yaml").read_text() == before
    assert not (toy_repo / "raw.txt").exists()


def test_every_deployment_passes_parameters_the_flow_takes(flows):
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    schema = parameter_schema(flows.captioning_pipeline.fn).model_dump_for_openapi()
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    assert {d["name"] for d in deployments} >= {"default", "coco2017"}
    for deployment in deployments:
        parameters = deployment["parameters"]
        assert deployment["entrypoint"] == "flows/pipeline.py:captioning_pipeline"
        assert set(parameters) <= set(schema["properties"]), deployment["name"]
        validate(parameters, schema, raise_on_error=True, ignore_required=True)
        if "recipe" in parameters:
            assert (REPO / parameters["recipe"]).is_file(), deployment["name"]
