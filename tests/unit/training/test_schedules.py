import math

import pytest

from captioning.config import ConfigError, ScheduledSamplingConfig, load_params
from captioning.training.schedules import sampling_probability, truth_probability


def test_none_is_teacher_forcing_at_every_step():
    cfg = ScheduledSamplingConfig()
    assert [sampling_probability(cfg, i) for i in (0, 10, 10**6)] == [0.0, 0.0, 0.0]


def test_linear_decays_by_c_per_step_to_its_floor():
    cfg = ScheduledSamplingConfig(schedule="linear", k=1.0, c=0.01, min_truth_prob=0.25)
    assert truth_probability(cfg, 0) == 1.0
    assert truth_probability(cfg, 30) == pytest.approx(0.7)
    assert truth_probability(cfg, 75) == 0.25 and truth_probability(cfg, 10**6) == 0.25
    assert sampling_probability(cfg, 30) == pytest.approx(0.3)


def test_exponential_is_k_to_the_step():
    cfg = ScheduledSamplingConfig(schedule="exponential", k=0.99)
    assert truth_probability(cfg, 0) == 1.0
    assert truth_probability(cfg, 100) == pytest.approx(0.99**100)
    assert sampling_probability(cfg, 500) == pytest.approx(1 - 0.99**500)


def test_inverse_sigmoid_follows_bengio_and_does_not_overflow():
    cfg = ScheduledSamplingConfig(schedule="inverse_sigmoid", k=50.0, min_truth_prob=0.1)
    for step in (0, 100, 200, 300):
        expected = max(0.1, 50 / (50 + math.exp(step / 50)))
        assert truth_probability(cfg, step) == pytest.approx(expected)
    assert truth_probability(cfg, 10**7) == 0.1  # exp(2e5) would overflow
    values = [truth_probability(cfg, i) for i in range(0, 400, 20)]
    assert values == sorted(values, reverse=True) and values[0] < 1.0


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"schedule": "cosine"}, "'train.scheduled_sampling.schedule'"),
        ({"schedule": "linear", "k": 1.5}, "in \\[0, 1\\] for the linear schedule"),
        ({"schedule": "exponential", "k": 0.0}, "in \\(0, 1\\] for the exponential"),
        ({"schedule": "inverse_sigmoid", "k": 0.5}, ">= 1 for the inverse sigmoid"),
        ({"min_truth_prob": 2}, "'train.scheduled_sampling.min_truth_prob'"),
    ],
)
def test_impossible_schedules_fail_at_load(tmp_path, section, message):
    path = tmp_path / "params.yaml"
    path.write_text(f"train:\n  scheduled_sampling: {section}\n")
    with pytest.raises(ConfigError, match=message):
        load_params(path)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"early_stopping": {"metric": "METEOR"}}, r"one of \[.BLEU-4., .CIDEr., .*found .METEOR."),
        ({"early_stopping": {"every_epochs": 0}}, "'train.early_stopping.every_epochs'"),
        ({"decoders": []}, "non-empty list of distinct"),
        ({"decoders": ["nic", "nic"]}, "non-empty list of distinct"),
        ({"checkpoint_every_steps": -1}, "'train.checkpoint_every_steps'"),
    ],
)
def test_impossible_training_params_fail_at_load(tmp_path, section, message):
    import yaml

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"train": section}))
    with pytest.raises(ConfigError, match=message):
        load_params(path)
