import time

import pytest

from captioning.config import ConfigError, TrainConfig, from_dict
from captioning.training.loop import out_of_time


def test_no_budget_never_stops():
    assert not out_of_time(time.monotonic() - 10**6, 10**6, 0.0)


def test_stops_when_another_epoch_would_end_past_the_budget():
    now = time.monotonic()
    # 9 minutes spent, epochs of 2 minutes: a 10-minute budget has no room, 12 has.
    assert out_of_time(now - 9 * 60, 2 * 60, 10.0)
    assert not out_of_time(now - 9 * 60, 2 * 60, 12.0)


def test_budget_is_checked_at_load():
    with pytest.raises(ConfigError, match=r"train\.max_minutes.*>= 0"):
        from_dict(TrainConfig, {"max_minutes": -1}, path="params.yaml", prefix="train.")
