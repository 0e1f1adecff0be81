"""The paired bootstrap of the promotion gate, on synthetic per-image scores."""

from __future__ import annotations

import numpy as np
import pytest

from captioning.registry.gate import paired_bootstrap

N = 300
OPTS = {"resamples": 2000, "confidence": 0.95, "seed": 0}


def champion_scores(seed: int = 1) -> np.ndarray:
    # CIDEr-D-like: many images near 0, a long tail up to ~8.
    return np.random.default_rng(seed).gamma(1.5, 1.2, size=N)


def test_clearly_better_set_passes():
    base = champion_scores()
    better = base + np.random.default_rng(2).normal(0.4, 0.5, size=N)
    result = paired_bootstrap(better, base, **OPTS)
    assert result.passed
    assert 0.3 < result.mean_diff < 0.5
    assert 0 < result.ci_low < result.mean_diff < result.ci_high
    assert result.p_value < 0.01
    assert result.win_fraction > 0.7
    assert result.n_better + result.n_tied + result.n_worse == result.n_images == N


def test_tie_is_refused():
    base = champion_scores()
    result = paired_bootstrap(base.copy(), base, **OPTS)
    assert not result.passed
    assert result.mean_diff == result.ci_low == result.ci_high == 0.0
    assert result.n_tied == N and result.win_fraction == 0.0
    assert result.p_value == 1.0


def test_noise_around_a_tie_is_refused():
    """Same model quality, different per-image noise: the interval straddles zero."""
    base = champion_scores()
    noisy = base + np.random.default_rng(3).normal(0.0, 0.8, size=N)
    noisy -= noisy.mean() - base.mean()  # exactly equal means
    result = paired_bootstrap(noisy, base, **OPTS)
    assert not result.passed
    assert result.ci_low < 0 < result.ci_high
    assert result.p_value > 0.2


def test_worse_set_is_refused():
    base = champion_scores()
    worse = base - np.abs(np.random.default_rng(4).normal(0.3, 0.2, size=N))
    result = paired_bootstrap(worse, base, **OPTS)
    assert not result.passed
    assert result.ci_high < 0
    assert result.p_value == 1.0  # no resample shows a gain
    assert "refused" in result.summary() and f"{result.mean_diff:+.4f}" in result.summary()


def test_min_gain_raises_the_bar():
    base = champion_scores()
    better = base + np.random.default_rng(5).normal(0.2, 0.3, size=N)
    assert paired_bootstrap(better, base, **OPTS).passed
    demanding = paired_bootstrap(better, base, **OPTS, min_gain=0.5)
    assert not demanding.passed and demanding.min_gain == 0.5


def test_a_few_big_wins_on_a_small_set_are_not_enough():
    """A higher mean driven by 2 images out of 20 is within the resampling noise."""
    base = np.ones(20)
    lucky = base.copy()
    lucky[:2] += 3.0
    lucky[2:8] -= 0.5
    result = paired_bootstrap(lucky, base, **OPTS)
    assert result.mean_diff > 0
    assert not result.passed


def test_seeded_and_order_free():
    base = champion_scores()
    other = base + np.random.default_rng(6).normal(0.1, 0.5, size=N)
    first = paired_bootstrap(other, base, **OPTS)
    assert paired_bootstrap(other, base, **OPTS) == first
    assert paired_bootstrap(other, base, **{**OPTS, "seed": 1}) != first
    # Resampling is over image pairs: a permutation of the images changes only the draws.
    perm = np.random.default_rng(7).permutation(N)
    shuffled = paired_bootstrap(other[perm], base[perm], **OPTS)
    assert shuffled.mean_diff == pytest.approx(first.mean_diff)
    assert shuffled.ci_low == pytest.approx(first.ci_low, abs=0.03)


def test_blocks_give_the_same_interval_as_one_draw(monkeypatch: pytest.MonkeyPatch):
    """Drawing resamples in blocks (memory bound) does not change the numbers."""
    import captioning.registry.gate as gate

    base = champion_scores()
    other = base + np.random.default_rng(8).normal(0.1, 0.5, size=N)
    whole = paired_bootstrap(other, base, **OPTS)
    monkeypatch.setattr(gate, "_MAX_BLOCK_ELEMENTS", N * 7)
    blocked = paired_bootstrap(other, base, **OPTS)
    assert blocked == whole


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "match"),
    [
        ([1.0, 2.0], [1.0], {}, "one length"),
        ([], [], {}, "no images"),
        ([1.0, float("nan")], [1.0, 2.0], {}, "finite"),
        ([1.0], [1.0], {"resamples": 0}, "resamples"),
        ([1.0], [1.0], {"confidence": 1.0}, "confidence"),
    ],
)
def test_bad_input(a, b, kwargs, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap(np.array(a), np.array(b), **{**OPTS, **kwargs})


@pytest.mark.parametrize(
    ("gate", "key", "expected"),
    [
        ("confidence: 1.0", "register.gate.confidence", "in [0.5, 1)"),
        ("resamples: 10", "register.gate.resamples", ">= 100"),
        ("min_gain: -0.1", "register.gate.min_gain", ">= 0"),
        ("min_gian: 0.1", "register.gate.min_gian", "unknown key"),
    ],
)
def test_gate_params_are_checked_at_load(tmp_path, gate, key, expected):
    from captioning.config import ConfigError, load_params

    params = tmp_path / "params.yaml"
    params.write_text(f"register:\n  gate:\n    {gate}\n")
    with pytest.raises(ConfigError) as info:
        load_params(params)
    message = str(info.value)
    assert str(params) in message and key in message and expected in message


def test_repo_params_load_with_the_gate_section():
    from pathlib import Path

    from captioning.config import load_params

    cfg = load_params(Path(__file__).resolve().parents[3] / "params.yaml").register
    assert (cfg.decoding, cfg.promote_metric, cfg.auto_promote) == ("beam", "CIDEr", True)
    assert cfg.gate.resamples >= 1000 and 0.5 <= cfg.gate.confidence < 1
