"""Self-critical training: the leave-one-out baseline, the CIDEr-D reward with the training
split's document frequencies, the gradient's sign, a run that raises the reward, and resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from captioning.config import (
    ConfigError,
    DecoderConfig,
    EarlyStoppingConfig,
    Params,
    ScstConfig,
    TrainConfig,
    load_params,
)
from captioning.errors import CaptioningError
from captioning.features.cache import FeatureCache
from captioning.metrics.fast import ReferenceIndex
from captioning.models import build_decoder
from captioning.training import self_critical
from captioning.training.distributed import DistContext
from captioning.training.loop import train_decoder
from captioning.training.scst_phase import scst_phase
from captioning.training.self_critical import SelfCritical, leave_one_out_baseline
from captioning.training.sources import Batch, CachedFeatures

CPU = torch.device("cpu")
ONE = DistContext(0, 1, CPU)
COLOURS = ("red", "blue", "green", "yellow")
SHAPES = ("circle", "square", "triangle")
SIZES = {"embed_dim": 16, "hidden_dim": 16, "attention_dim": 8, "feature_proj_dim": 16}
XE = TrainConfig(
    model=DecoderConfig(**SIZES, dropout=0.0, feature_dropout=0.0),
    epochs=2,
    batch_size=4,
    warmup_steps=1,
    early_stopping=EarlyStoppingConfig(metric="CIDEr"),
)


def test_the_baseline_is_the_mean_of_the_image_s_other_samples():
    rewards = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    assert leave_one_out_baseline(rewards).tolist() == [[2.5, 2.0, 1.5], [3.0, 3.0, 0.0]]


def captions_of(image: int) -> list[str]:
    colour, shape = COLOURS[image % 4], SHAPES[image % 3]
    return [f"a {colour} {shape}", f"one {colour} {shape} here", f"the {shape} is {colour}"]


def test_the_reward_is_cider_d_with_the_training_split_s_document_frequencies():
    train = [captions_of(i) for i in range(12)]
    objective = SelfCritical.for_cache(train, [{}] * 12, vocab=None, cfg=ScstConfig())
    sampled = {3: "a yellow circle", 5: "a blue triangle here", 7: "yellow"}
    keys = [5, 3, 7, 3]
    rewards = objective.rewards(keys, [sampled[k] for k in keys])
    # What the fast scorer gives each image's caption among all twelve (the split's df) ...
    predictions = {i: sampled.get(i, "a red circle") for i in range(12)}
    _, per_image = ReferenceIndex(dict(enumerate(train))).score(predictions)
    assert rewards == pytest.approx([per_image[k]["CIDEr"] for k in keys], abs=1e-12)
    # ... not among the batch's images alone (other document frequencies).
    batch_only = {k: train[k] for k in (3, 5, 7)}
    _, alone = ReferenceIndex(batch_only).score({k: sampled[k] for k in batch_only})
    assert rewards[1] != pytest.approx(alone[3]["CIDEr"])
    assert rewards[0] > rewards[1] > 0 and rewards[2] < rewards[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """8 training scenes whose captions name their colour and shape; a briefly XE-trained
    soft_attention model (no dropout: the gradient test compares probabilities)."""
    from conftest import feature_workspace

    root = feature_workspace(
        tmp_path_factory.mktemp("scst"), lambda image, i: captions_of(image)[i]
    )
    train_decoder(
        "soft_attention",
        CachedFeatures(root / "features"),
        root / "vocab.json",
        root / "models" / "xe",
        XE,
        seed=7,
        checkpoint_dir=root / "checkpoints" / "xe",
    )
    return root


SCST = ScstConfig(
    decoders=["soft_attention"], epochs=20, lr=0.02, samples_per_image=4, batch_size=4
)


def run_scst(root: Path, name: str, scst: ScstConfig = SCST, train=XE, **kwargs):
    params = Params(train=train, scst=scst)
    phase = scst_phase(
        params, "soft_attention", root / "features", root / "models" / "xe", root / "vocab.json"
    )
    return train_decoder(
        "soft_attention",
        CachedFeatures(root / "features"),
        root / "vocab.json",
        root / "models" / name,
        phase.train,
        seed=7,
        checkpoint_dir=root / "checkpoints" / name,
        objective=phase.objective,
        init_weights=phase.init_weights,
        run_record=phase.record,
        **kwargs,
    )


def test_a_sample_above_its_baseline_becomes_more_likely(workspace, monkeypatch):
    """Rewards 1 for each image's first sample and 0 for the others: one SGD step raises the
    first sample's log-probability (where no other sample of the image is the same caption)."""
    phase = scst_phase(
        Params(train=XE, scst=SCST),
        "soft_attention",
        workspace / "features",
        workspace / "models/xe",
        workspace / "vocab.json",
    )
    objective = phase.objective
    cached = np.asarray(FeatureCache.open(workspace / "features", "train").features[:4])
    decoder = build_decoder(
        "soft_attention",
        phase.train.model,
        vocab_size=len(objective.vocab),
        feature_dim=cached.shape[2],
        num_locations=cached.shape[1],
    )
    decoder.load_state_dict(phase.init_weights)
    decoder.train()  # how the objective samples
    drawn = {}

    def recording(*args, **kwargs):
        drawn["words"], log_probs = self_critical_sampled(*args, **kwargs)
        return drawn["words"], log_probs

    self_critical_sampled = self_critical.sampled_captions
    monkeypatch.setattr(self_critical, "sampled_captions", recording)
    k = SCST.samples_per_image
    monkeypatch.setattr(
        objective, "rewards", lambda keys, captions: np.tile(np.eye(k)[0], len(keys) // k)
    )
    features = torch.tensor(cached, dtype=torch.float32)
    batch = Batch(torch.zeros(1), torch.zeros(1), features, image_rows=torch.arange(4))
    torch.manual_seed(1)
    step = objective(decoder, batch, 0, ONE)
    words = drawn["words"]
    rows = torch.arange(4).repeat_interleave(k)

    def log_probs() -> torch.Tensor:
        start = torch.full((len(words), 1), objective.vocab.start_id)
        captions = torch.cat([start, words], dim=1)
        with torch.no_grad():
            logits = decoder.eval()(features, captions, rows).logits.log_softmax(-1)
        chosen = logits.gather(2, words.unsqueeze(2)).squeeze(2)
        ended = torch.cumsum(words == objective.vocab.end_id, dim=1)
        keep = (ended == 0) | ((ended == 1) & (words == objective.vocab.end_id))
        return (chosen * keep).sum(1)

    before = log_probs()
    decoder.train()
    optimizer = torch.optim.SGD(decoder.parameters(), lr=0.05)
    optimizer.zero_grad()
    step.loss.backward()
    optimizer.step()
    change = (log_probs() - before).reshape(4, k)
    samples = words.reshape(4, k, -1)
    unique = [i for i in range(4) if not any(torch.equal(samples[i, 0], s) for s in samples[i, 1:])]
    assert len(unique) >= 2
    assert (change[unique, 0] > 0).all()
    assert change[:, 0].mean() > change[:, 1:].mean()


def test_self_critical_training_raises_the_mean_reward(workspace):
    result = run_scst(workspace, "raised")
    rewards = [record["reward"] for record in result.history]
    assert np.mean(rewards[-2:]) > rewards[0] + 0.1, rewards
    assert all("CIDEr" in record for record in result.history)
    config = json.loads((workspace / "models" / "raised" / "config.json").read_text())
    assert config["scst"]["samples_per_image"] == 4 and "decoder_sha256" in config["start"]


class Killed(Exception):
    pass


def test_a_killed_run_resumes_mid_epoch_to_the_same_weights(workspace):
    short = dataclasses.replace(SCST, epochs=2)

    def run(name: str, **kwargs):
        train = dataclasses.replace(XE, checkpoint_every_steps=1, log_every_steps=1)
        return run_scst(workspace, name, short, train, **kwargs)

    reference = run("whole")

    def kill_after_step_3(step, report):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        run("resumed", on_step=kill_after_step_3)
    resumed = run("resumed")
    assert resumed.history == reference.history
    a = load_file(str(workspace / "models" / "whole" / "decoder.safetensors"))
    b = load_file(str(workspace / "models" / "resumed" / "decoder.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_scst_settings_fail_at_load(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("scst:\n  decoders: [nic]\n")
    with pytest.raises(ConfigError, match=r"scst.decoders.*train.decoders"):
        load_params(path)
    path.write_text("scst:\n  samples_per_image: 1\n  lr: 0\n")
    with pytest.raises(ConfigError, match=r"scst.samples_per_image.*>= 2") as error:
        load_params(path)
    assert "scst.lr" in str(error.value)


def test_the_stage_logs_reward_and_cider_and_names_the_model(workspace, tmp_path, monkeypatch):
    """scst_tracked (stages/train.py --start): the log CSV and MLflow get the epoch's mean
    reward beside the val CIDEr; the summary names the model <decoder>_scst."""
    import csv

    import mlflow

    from captioning.training.tracked import scst_tracked

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    params = Params(train=XE, scst=dataclasses.replace(SCST, epochs=1))
    out = tmp_path / "out"
    scst_tracked(
        params,
        "soft_attention",
        features_dir=workspace / "features",
        vocab_path=workspace / "vocab.json",
        start_dir=workspace / "models" / "xe",
        model_dir=out / "model",
        log_path=out / "train_log.csv",
        checkpoint_dir=out / "checkpoints",
        summary_path=out / "train_summary.json",
    )
    rows = list(csv.DictReader((out / "train_log.csv").open(encoding="utf-8")))
    assert len(rows) == 1 and float(rows[0]["reward"]) > 0 and "CIDEr" in rows[0]
    assert json.loads((out / "train_summary.json").read_text())["decoder"] == "soft_attention_scst"
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.run_name == "scst-soft_attention"
    assert run.data.metrics["reward"] == pytest.approx(float(rows[0]["reward"]))
    assert run.data.params["scst.samples_per_image"] == "4"


def test_the_phase_refuses_a_decoder_it_is_not_configured_for_or_another_vocabulary(workspace):
    with pytest.raises(
        CaptioningError, match=r"scst.decoders: 'soft_attention' is not one of \[\]"
    ):
        scst_phase(
            Params(train=XE),
            "soft_attention",
            workspace / "features",
            workspace / "models" / "xe",
            workspace / "vocab.json",
        )
    other = workspace / "other_vocab.json"
    other.write_text(
        json.dumps({**json.loads((workspace / "vocab.json").read_text()), "max_length": 3})
    )
    with pytest.raises(CaptioningError, match=r"other_vocab.json: expected the vocabulary of"):
        scst_phase(
            Params(train=XE, scst=SCST),
            "soft_attention",
            workspace / "features",
            workspace / "models" / "xe",
            other,
        )
