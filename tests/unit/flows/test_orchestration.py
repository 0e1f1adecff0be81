"""captioning.orchestration: the DAG from DVC, params written as `dvc exp run -S` would, errors."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import yaml
from toy_dvc import REPO, TOY_DECODERS_DVC, dvc, make_toy_repo

from captioning import orchestration
from captioning.config import ConfigError
from captioning.orchestration import (
    DvcStageRunner,
    ParamChange,
    StageFailed,
    apply_params,
    plan_stages,
    run_overrides,
    run_params,
    stage_error,
)


@pytest.fixture
def toy_repo(tmp_path):
    return make_toy_repo(tmp_path / "toy")


def test_plan_follows_the_real_dvc_yaml(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        (root / name).write_text((REPO / name).read_text())
    dvc(root, "init", "-q", "--no-scm")
    stages = plan_stages(root).stages
    bases = [stage.split("@")[0] for stage in stages]  # train@soft_attention -> train
    assert bases[0] == "fetch" and set(bases) >= {"fetch", "features", "train", "register"}
    # upstream before downstream, whatever the stage names are
    assert bases.index("fetch") < bases.index("features") < bases.index("train")
    assert bases.index("train") < bases.index("register") < bases.index("compare")


def test_whole_dag_is_the_root_dvc_yaml_and_the_captcha_pipeline_a_target(tmp_path):
    root = tmp_path / "repo"
    (root / "pipelines" / "captcha").mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml", "pipelines/captcha/dvc.yaml"):
        (root / name).write_text((REPO / name).read_text())
    (root / "pipelines/captcha/params.yaml").write_text(
        (REPO / "pipelines/captcha/params.yaml").read_text()
    )
    dvc(root, "init", "-q", "--no-scm")
    whole = plan_stages(root).stages
    assert whole and not any("pipelines/captcha" in stage for stage in whole)
    captcha = plan_stages(root, ["pipelines/captcha/dvc.yaml"]).stages
    assert captcha[0] == "pipelines/captcha/dvc.yaml:fetch"
    assert all(stage.startswith("pipelines/captcha/dvc.yaml:") for stage in captcha)
    assert captcha[-1] == "pipelines/captcha/dvc.yaml:register"
    # A decoder is a foreach variant of the root DAG, a value of train.decoders in the reader's.
    decoders = set(yaml.safe_load((root / "params.yaml").read_text())["train"]["decoders"])
    main = orchestration.Pipeline(root.resolve() / "params.yaml", frozenset(decoders))
    assert orchestration.pipeline_of(root) == orchestration.pipeline_of(root, ["compare"]) == main
    reader = orchestration.pipeline_of(root, ["pipelines/captcha/dvc.yaml"])
    assert reader == orchestration.Pipeline(
        root.resolve() / "pipelines/captcha/params.yaml", frozenset()
    )
    with pytest.raises(ConfigError, match=r"are stages of \['dvc.yaml', 'pipelines/captcha/dvc"):
        orchestration.pipeline_of(root, ["compare", "pipelines/captcha/dvc.yaml:train"])


def test_plan_of_a_target_is_it_and_its_upstream(toy_repo):
    plan = plan_stages(toy_repo, ["evaluate"])
    assert plan.stages == [
        "fetch",
        "shard",
        "features",
        "train@x",
        "train@y",
        "evaluate@x",
        "evaluate@y",
    ]
    assert not plan.decoder_is_variant


def test_decoder_picks_its_foreach_variants_and_drops_what_needs_the_others(toy_repo):
    whole = plan_stages(toy_repo, [], decoder="y")
    assert whole.stages == ["fetch", "shard", "features", "train@y", "evaluate@y"]
    assert whole.decoder_is_variant
    with pytest.raises(ConfigError, match=r"no stage train@z; decoders: \['x', 'y'\]"):
        plan_stages(toy_repo, [], decoder="z")


def test_decoder_without_foreach_is_a_parameter(tmp_path):
    linear = {
        "stages": {"fetch": {"cmd": "echo", "outs": ["a"]}, "train": {"cmd": "echo", "deps": ["a"]}}
    }
    plan = plan_stages(make_toy_repo(tmp_path / "linear", linear), [], decoder="show_tell")
    assert plan == orchestration.RunPlan(["fetch", "train"], decoder_is_variant=False)


def test_run_params_add_a_new_decoder_then_the_plan_has_its_stages(tmp_path):
    root = make_toy_repo(tmp_path / "decoders", TOY_DECODERS_DVC)  # decoders: [soft_attention]
    pipeline = orchestration.pipeline_of(root, ["evaluate"])
    assert run_params(pipeline, {}, decoder="soft_attention") == {}
    params = run_params(pipeline, {"train.epochs": 2}, decoder="nic")
    assert params == {"train.epochs": 2, "train.decoders": ["soft_attention", "nic"]}
    with pytest.raises(ConfigError, match="no stage train@nic"):
        plan_stages(root, ["evaluate"], decoder="nic")  # not before the params are written
    apply_params(root / "params.yaml", params)
    plan = plan_stages(root, ["evaluate"], decoder="nic")
    assert plan == orchestration.RunPlan(["features", "train@nic", "evaluate@nic"], True)

    chosen = {"train.decoders": ["mrnn", "nic"]}
    assert run_params(pipeline, chosen, decoder="mrnn") == chosen
    with pytest.raises(ConfigError, match=r"decoder='hard_attention' is not in override"):
        run_params(pipeline, chosen, decoder="hard_attention")


def test_run_params_take_a_recipe_under_the_overrides_and_shorthands(tmp_path):
    root = make_toy_repo(tmp_path / "decoders", TOY_DECODERS_DVC)  # decoders: [soft_attention]
    pipeline = orchestration.pipeline_of(root, ["evaluate"])
    recipe = {"train.epochs": 20, "fetch.source": "coco2017", "train.decoders": ["nic"]}
    assert run_params(pipeline, {"train.epochs": 1}, recipe=recipe, dataset="flickr8k") == {
        "train.epochs": 1,
        "fetch.source": "flickr8k",
        "train.decoders": ["nic"],
    }
    # A decoder joins the recipe's decoders (the params file's soft_attention is not kept),
    # also one that has stages now.
    for decoder, decoders in [
        ("mrnn", ["nic", "mrnn"]),
        ("soft_attention", ["nic", "soft_attention"]),
    ]:
        params = run_params(pipeline, recipe=recipe, decoder=decoder)
        assert params == {**recipe, "train.decoders": decoders}


def test_run_params_without_foreach_set_the_one_decoder(tmp_path):
    linear = {
        "stages": {"fetch": {"cmd": "echo", "outs": ["a"]}, "train": {"cmd": "echo", "deps": ["a"]}}
    }
    root = make_toy_repo(tmp_path / "linear", linear)
    assert run_params(orchestration.pipeline_of(root), {}, decoder="nic", dataset="captcha") == {
        "fetch.source": "captcha",
        "train.decoders": ["nic"],
    }


def test_gpu_tags_by_base_name():
    assert orchestration.stage_tags("features") == ["gpu"]
    assert orchestration.stage_tags("train@soft_attention") == ["gpu"]
    assert orchestration.stage_tags("evaluate@x") == ["gpu"]
    assert orchestration.stage_tags("fetch") == orchestration.stage_tags("register@x") == []


def test_named_parameters_become_params_keys():
    merged = run_overrides({"train.epochs": 3}, dataset="captcha", encoder=None, decoder="x")
    assert merged == {"train.epochs": 3, "fetch.source": "captcha", "train.decoders": ["x"]}
    assert run_overrides({"train.decoders": ["x"]}, decoder="x") == {"train.decoders": ["x"]}
    with pytest.raises(ConfigError, match=r"decoder='y' contradicts override train.decoders="):
        run_overrides({"train.decoders": ["x"]}, decoder="y")
    with pytest.raises(ConfigError, match="dataset='captcha' contradicts override fetch.source"):
        run_overrides({"fetch.source": "shapes"}, dataset="captcha")


def test_apply_params_writes_values_and_keeps_comments(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    before = yaml.safe_load(params.read_text())
    assert before["train"]["epochs"] != 3 and before["train"]["model"]["hidden_dim"] != 64
    seed = before["common"]["seed"]
    changes = apply_params(
        params, {"train.epochs": 3, "train.model.hidden_dim": 64, "common.seed": seed}
    )
    assert changes == [  # the unchanged seed is not a change
        ParamChange("train.epochs", before["train"]["epochs"], 3),
        ParamChange("train.model.hidden_dim", before["train"]["model"]["hidden_dim"], 64),
    ]
    text = params.read_text()
    assert "# One section per DVC stage" in text and "# doubly stochastic attention" in text
    written = yaml.safe_load(text)
    assert written["train"]["epochs"] == 3 and written["train"]["model"]["hidden_dim"] == 64


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.epoch": 3}, r"unknown key 'train.epoch'"),
        ({"vocab.min_freq": 0}, r"key 'vocab.min_freq': expected >= 1, found 0"),
        ({"train.epochs.x": 1}, r"key 'train.epochs' is a value"),
    ],
)
def test_bad_overrides_fail_before_params_yaml_changes(tmp_path, overrides, message):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    before = params.read_text()
    with pytest.raises(ConfigError, match=message):
        apply_params(params, overrides)
    assert params.read_text() == before


def test_dvc_set_args_reproduce_the_run_with_dvc_alone():
    args = orchestration.dvc_set_args({"train.epochs": 3, "fetch.source": "captcha", "x.on": True})
    assert args == ["-S", "train.epochs=3", "-S", "fetch.source=captcha", "-S", "x.on=true"]


CAPTIONING_ERROR = """\
Running stage 'vocab':
> python stages/vocab.py --shards data/shards --out data/vocab.json
16:40:01 ERROR captioning: params.yaml: key 'vocab.min_freq': expected >= 1, found 0
ERROR: failed to reproduce 'vocab': failed to run: python stages/vocab.py, exited with 2
"""

TRACEBACK = """\
Running stage 'train':
Traceback (most recent call last):
  File "stages/train.py", line 3, in <module>
    main()
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB
ERROR: failed to reproduce 'train': failed to run: python stages/train.py, exited with 1
"""


def test_stage_error_is_the_stages_own_line():
    assert (
        stage_error(CAPTIONING_ERROR) == "params.yaml: key 'vocab.min_freq': expected >= 1, found 0"
    )
    assert (
        stage_error(TRACEBACK)
        == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    )
    dvc_only = "ERROR: Unable to acquire lock. Most likely another DVC process is running"
    assert stage_error("Running stage 'x':\n" + dvc_only) == dvc_only[len("ERROR: ") :]


def test_stage_failed_survives_pickling():
    # Prefect keeps the flow's result (the exception) in its result store.
    again = pickle.loads(pickle.dumps(StageFailed("vocab", "bad")))
    assert (again.stage, again.error, str(again)) == ("vocab", "bad", "stage 'vocab' failed: bad")


def test_dvc_runner_runs_then_skips_and_reports_failures(toy_repo):
    lines: list[str] = []
    runner = DvcStageRunner()
    first = runner(
        "fetch", toy_repo, env={"CAPTIONING_PREFECT_FLOW_RUN_ID": "r1"}, log=lines.append
    )
    assert first.ran and (toy_repo / "raw.txt").read_text() == "raw"
    assert "Running stage 'fetch':" in lines
    assert not runner("fetch", toy_repo, env={}, log=lines.append).ran
    # `shard` was never run, so `--single-item train@x` finds its input missing.
    with pytest.raises(StageFailed, match="stage 'train@x' failed: .*features.txt"):
        runner("train@x", toy_repo, env={}, log=lines.append)


def test_stage_env_puts_this_python_and_the_checkouts_src_first(tmp_path):
    (tmp_path / "src").mkdir()
    env = orchestration.stage_env(tmp_path, {"CAPTIONING_PREFECT_FLOW_RUN_ID": "abc"})
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    assert env["PYTHONPATH"].split(":")[0] == str(tmp_path.resolve() / "src")
    assert env["CAPTIONING_PREFECT_FLOW_RUN_ID"] == "abc"


def test_summary_lists_params_stages_and_the_dvc_command():
    text = orchestration.summary_markdown(
        [ParamChange("train.epochs", 14, 3)],
        {"fetch": "skipped", "train": "failed"},
        {"train.epochs": 3},
        StageFailed("train", "boom"),
    )
    assert "| `train.epochs` | `14` | `3` |" in text and "| `fetch` | skipped |" in text
    assert "**Failed:** stage 'train' failed: boom" in text
    assert "`dvc exp run -S train.epochs=3`" in text
    decoders = orchestration.summary_markdown([], {}, {"train.decoders": ["nic", "mrnn"]})
    assert """`dvc exp run -S 'train.decoders=["nic", "mrnn"]'`""" in decoders
