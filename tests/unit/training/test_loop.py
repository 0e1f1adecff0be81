"""Training on a tiny real feature cache: outputs, reload, validation and early stopping, and
resume after a kill between or inside epochs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from captioning.config import (
    DecoderConfig,
    EarlyStoppingConfig,
    ScheduledSamplingConfig,
    TrainConfig,
)
from captioning.models.saved import load_decoder
from captioning.training import validation
from captioning.training.loop import train_decoder
from captioning.training.sources import CachedFeatures

CFG = TrainConfig(
    model=DecoderConfig(embed_dim=16, hidden_dim=16, attention_dim=8, feature_proj_dim=16),
    epochs=3,
    batch_size=4,
    seq_per_image=2,
    warmup_steps=1,
    # CIDEr: make_layout's scenes have no objects (params.yaml's object_accuracy needs them)
    early_stopping=EarlyStoppingConfig(metric="CIDEr"),
)
# 8 images, 2 per batch: 4 steps per epoch. The model's own words are fed more and more often,
# so resuming must restore the RNG that draws them; a checkpoint every 3 steps, on_step after
# every step.
SAMPLED = dataclasses.replace(
    CFG,
    scheduled_sampling=ScheduledSamplingConfig(schedule="linear", k=1.0, c=0.05),
    checkpoint_every_steps=3,
    log_every_steps=1,
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from conftest import feature_workspace

    return feature_workspace(tmp_path_factory.mktemp("train"))


class Killed(Exception):
    pass


def train(root: Path, name: str, cfg: TrainConfig = CFG, decoder="soft_attention", **kwargs):
    return train_decoder(
        decoder,
        CachedFeatures(root / "features"),
        root / "vocab.json",
        root / "models" / name,
        cfg,
        seed=7,
        checkpoint_dir=root / "checkpoints" / name,
        **kwargs,
    )


def test_training_writes_a_model_that_loads_back(workspace):
    result = train(workspace, "plain")
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert all(r["val_loss"] > 0 for r in result.history)
    model_dir = workspace / "models" / "plain"
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "config.json",
        "decoder.safetensors",
        "vocab.json",
    ]
    decoder, vocab, config = load_decoder(model_dir)
    assert config["decoder"] == "soft_attention" and len(vocab) == config["vocab_size"]
    assert not (workspace / "checkpoints" / "plain" / "last.pt").exists()  # removed when done


def weights(root: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(root / "models" / name / "decoder.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=0, atol=0, msg=key)


def test_history_has_sampling_probability_and_validation_scores(workspace):
    result = train(workspace, "plain")
    for record in result.history:
        assert record["sample_prob"] == 0.0  # no schedule: teacher forcing
        assert {"BLEU-1", "BLEU-4", "CIDEr"} <= record.keys()
        assert 0.0 <= record["BLEU-4"] <= 1.0 and record["CIDEr"] >= 0.0
    ciders = [r["CIDEr"] for r in result.history]
    assert result.best == {
        "metric": "CIDEr",
        "value": max(ciders),
        "epoch": 1 + ciders.index(max(ciders)),
    }
    config = json.loads((workspace / "models" / "plain" / "config.json").read_text())
    assert config["training"]["best_epoch"] == result.best["epoch"]
    assert "decoders" not in config["train"]  # the DAG's list is not part of a model


@pytest.fixture(scope="module")
def reference(workspace):
    """An uninterrupted run with scheduled sampling and step checkpoints; its step reports."""
    steps: list[tuple[int, dict]] = []
    result = train(workspace, "reference", SAMPLED, on_step=lambda i, r: steps.append((i, r)))
    return result, steps


def test_scheduled_sampling_follows_the_schedule_per_step(reference):
    result, steps = reference
    assert [i for i, _ in steps] == list(range(1, 13))
    for i, report in steps:
        assert report["sample_prob"] == pytest.approx(0.05 * (i - 1))  # 1 - (1 - c * step)
    per_epoch = [r["sample_prob"] for r in result.history]
    assert per_epoch == pytest.approx([0.075, 0.275, 0.475])  # the epochs' means


def test_killed_run_resumes_to_the_same_weights(workspace, reference):
    def kill_after_first_epoch(epoch, record):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train(workspace, "resumed", SAMPLED, on_epoch=kill_after_first_epoch)
    assert (workspace / "checkpoints" / "resumed" / "last.pt").exists()
    assert not (workspace / "models" / "resumed").exists()  # nothing half-written
    result = train(workspace, "resumed", SAMPLED)
    assert result.history == reference[0].history
    assert_same_weights(weights(workspace, "reference"), weights(workspace, "resumed"))
    assert not (workspace / "checkpoints" / "resumed" / "last.pt").exists()  # removed when done


def test_run_killed_mid_epoch_resumes_from_its_step_checkpoint_to_the_same_weights(
    workspace, reference
):
    """Killed after step 7 (inside epoch 2); the last checkpoint is step 6's: the resumed run
    redoes step 7 on the same batch with the same sampled words and dropout."""

    def kill_after_step_7(step, report):
        if step == 7:
            raise Killed

    with pytest.raises(Killed):
        train(workspace, "mid_epoch", SAMPLED, on_step=kill_after_step_7)
    saved = torch.load(
        workspace / "checkpoints" / "mid_epoch" / "last.pt", map_location="cpu", weights_only=True
    )
    loop = json.loads(saved["loop"])
    assert (loop["step"], loop["epoch"], loop["position"]) == (6, 1, 2)
    resumed_steps: list[int] = []
    result = train(workspace, "mid_epoch", SAMPLED, on_step=lambda i, r: resumed_steps.append(i))
    assert resumed_steps == list(range(7, 13))
    assert result.history == reference[0].history  # same losses, scores, sampling probabilities
    assert_same_weights(weights(workspace, "reference"), weights(workspace, "mid_epoch"))


def test_early_stopping_keeps_the_best_epoch(workspace, monkeypatch):
    """Scripted validation CIDEr 0.5, 0.9, 0.3, 0.2, ...: with patience 2 the run stops after
    epoch 4, and the saved model is epoch 2's weights."""
    cfg = dataclasses.replace(
        CFG, epochs=6, early_stopping=EarlyStoppingConfig(metric="CIDEr", patience=2)
    )
    real_scores = validation.Validator.scores

    def scripted(script):
        def scores(self, decoder, features):
            real = real_scores(self, decoder, features)  # decoding still runs
            return {**real, "CIDEr": next(script)}

        return scores

    monkeypatch.setattr(validation.Validator, "scores", scripted(iter([0.5, 0.9, 0.3, 0.2])))
    result = train(workspace, "early", cfg)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert result.stopped_early and result.best == {"metric": "CIDEr", "value": 0.9, "epoch": 2}

    # The same run killed after epoch 2: its checkpoint holds epoch 2's weights.
    def kill_after_second_epoch(epoch, record):
        if epoch == 2:
            raise Killed

    monkeypatch.setattr(validation.Validator, "scores", scripted(iter([0.5, 0.9])))
    with pytest.raises(Killed):
        train(workspace, "early_ref", cfg, on_epoch=kill_after_second_epoch)
    saved = torch.load(
        workspace / "checkpoints" / "early_ref" / "last.pt", map_location="cpu", weights_only=True
    )
    epoch_2 = {k: v for k, v in saved["model"].items()}
    assert_same_weights(epoch_2, weights(workspace, "early"))
    assert_same_weights(epoch_2, saved["best"]["weights"])


def test_the_objective_is_the_callers(workspace):
    """Another objective plugs into the same loop (here: teacher forcing's loss, doubled)."""
    from captioning.training.objectives import StepLoss, TeacherForcing

    one_epoch = dataclasses.replace(CFG, epochs=1, log_every_steps=1)
    teacher = TeacherForcing(one_epoch.scheduled_sampling)

    def doubled(model, batch, step, ctx):
        loss = teacher(model, batch, step, ctx)
        return StepLoss(2 * loss.loss, loss.captions, loss.sample_prob)

    plain, twice = [], []
    train(workspace, "teacher", one_epoch, on_step=lambda i, r: plain.append(r["loss"]))
    train(
        workspace,
        "doubled",
        one_epoch,
        objective=doubled,
        on_step=lambda i, r: twice.append(r["loss"]),
    )
    assert twice[0] == pytest.approx(2 * plain[0])  # the same first step, from the same weights


def test_checkpoint_and_log_intervals_are_execution_settings(workspace):
    # In config.EXECUTION_SETTINGS (not DVC params): the model is the same, weights and vocab
    # byte for byte, with a resume checkpoint after every step and the loss logged every step.
    busy = dataclasses.replace(CFG, checkpoint_every_steps=1, log_every_steps=1)
    assert CFG.checkpoint_every_steps > 12  # the plain run writes no step checkpoint
    models = workspace / "models"
    train(workspace, "plain_again")
    train(workspace, "busy", busy)
    for name in ("decoder.safetensors", "vocab.json"):
        assert (models / "busy" / name).read_bytes() == (models / "plain_again" / name).read_bytes()
    plain, other = (
        json.loads((models / n / "config.json").read_text()) for n in ("plain_again", "busy")
    )
    for config in (plain, other):
        del config["training"]["train_seconds"]  # a wall time: the one field two runs differ in
    assert plain == other


# Ways a tensor is read back to the host: on a GPU each waits for the queued work to finish.
HOST_READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__")


@pytest.fixture
def host_reads(monkeypatch):
    """Every host read of a tensor by this thread outside torch.optim (AdamW reads its CPU step
    counters, which live on the host even when training on a GPU), as (method, file:line)."""
    import sys
    import threading

    reads: list[tuple[str, str]] = []
    main = threading.main_thread()

    def counting(name):
        real = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if threading.current_thread() is main and "torch/optim/" not in caller:
                reads.append((name, f"{caller}:{sys._getframe(1).f_lineno}"))
            return real(self, *args, **kwargs)

        return read

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    return reads


@pytest.mark.parametrize("decoder", ["soft_attention", "hard_attention"])
def test_a_step_reads_nothing_back_from_the_device_until_it_is_logged(
    workspace, host_reads, decoder
):
    """Between one step's start and the next's (the same epoch: validation reads, as it must),
    nothing is read back unless the step is logged; a logged step reads its loss."""
    from captioning.training.objectives import TeacherForcing

    teacher = TeacherForcing(SAMPLED.scheduled_sampling)
    starts: list[int] = []  # len(host_reads) at each step's start

    def marking(model, batch, step, ctx):
        starts.append(len(host_reads))
        return teacher(model, batch, step, ctx)

    # 8 steps, 4 per epoch; logged at step 6; no step checkpoint (it reads the loss).
    quiet = dataclasses.replace(
        SAMPLED, epochs=2, log_every_steps=6, checkpoint_every_steps=0, checkpoint_every_minutes=0.0
    )
    logged: list[int] = []
    on_step = lambda i, r: logged.append(i)  # noqa: E731
    train(workspace, f"quiet_{decoder}", quiet, decoder, objective=marking, on_step=on_step)
    assert logged == [6]
    within_epochs = [(k, k + 1) for k in range(7) if (k + 1) % 4]  # steps k+1 -> k+2, 0-based
    reads = {k + 1: host_reads[starts[k] : starts[n]] for k, n in within_epochs}
    assert reads.pop(6), "step 6 was logged: its loss was read (the counter sees reads)"
    assert reads == dict.fromkeys(reads, [])


@pytest.mark.parametrize(
    "minutes, saved_at",
    [
        (1.0, [(3, 3), (4, 0), (7, 3), (8, 0)]),  # 75 s after the last save
        (0.0, [(4, 0), (8, 0)]),  # off: after every epoch only
    ],
)
def test_step_checkpoints_by_wall_clock_time(workspace, monkeypatch, minutes, saved_at):
    """Steps of 25 s on a fake clock, checkpoints every ``minutes`` and none by step count:
    (step, batches into the epoch) of each save."""
    from captioning.training import loop
    from captioning.training.objectives import TeacherForcing

    now = [0.0]
    monkeypatch.setattr(loop, "clock", lambda: now[0])
    teacher = TeacherForcing(CFG.scheduled_sampling)

    def slow(model, batch, step, ctx):
        now[0] += 25.0
        return teacher(model, batch, step, ctx)

    saved: list[tuple[int, int]] = []
    real_save = loop.save_checkpoint

    def recording(path, run_config, parts, state, ctx):
        saved.append((state.step, state.position))
        real_save(path, run_config, parts, state, ctx)

    monkeypatch.setattr(loop, "save_checkpoint", recording)
    cfg = dataclasses.replace(
        CFG, epochs=2, checkpoint_every_steps=0, checkpoint_every_minutes=minutes
    )
    train(workspace, f"clock_{minutes}", cfg, objective=slow)
    assert saved == saved_at
