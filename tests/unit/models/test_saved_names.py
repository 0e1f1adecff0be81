"""State-dict keys stay those of saved models when a layer moves (layers.keep_saved_names):
soft_attention's feature standardiser became the shared FeatureStandardiser."""

import dataclasses

import torch
from torch import nn

from captioning.config import DecoderConfig
from captioning.models import build_decoder
from captioning.models.layers import keep_saved_names

SMALL = DecoderConfig(embed_dim=16, hidden_dim=24, attention_dim=12, feature_proj_dim=20)


def soft_attention(**changes):
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, **changes)
    return build_decoder("soft_attention", cfg, vocab_size=11, feature_dim=32, num_locations=9)


def test_soft_attention_saves_its_standardiser_under_the_old_name():
    keys = list(soft_attention().state_dict())
    assert [k for k in keys if "norm" in k] == [
        "feature_norm.running_mean",
        "feature_norm.running_var",
        "feature_norm.num_batches_tracked",
    ]
    assert keys.index("feature_norm.running_mean") == keys.index("position") + 1  # same place


def test_a_state_dict_with_the_old_names_loads_strictly_into_the_standardiser():
    decoder = soft_attention()
    state = decoder.state_dict()
    state["feature_norm.running_mean"] = torch.arange(32.0)
    decoder.load_state_dict(state)  # strict: any unknown or missing key raises
    assert torch.equal(decoder.standardise.norm.running_mean, torch.arange(32.0))


def test_hard_attention_keeps_its_own_names_and_has_no_word_query():
    torch.manual_seed(0)
    cfg = dataclasses.replace(SMALL, attend_with_word=True)
    hard = build_decoder("hard_attention", cfg, vocab_size=11, feature_dim=32, num_locations=9)
    keys = hard.state_dict()
    assert "standardise.norm.running_mean" in keys and "feature_norm.running_mean" not in keys
    assert not any(k.startswith("word_query") for k in keys)


def test_renames_apply_under_a_parent_module_only_to_the_given_prefix():
    child = nn.Module()
    child.inner = nn.Linear(2, 3)
    child.other = nn.Linear(3, 1)
    keep_saved_names(child, {"inner.": "old."})
    parent = nn.Sequential(nn.Linear(2, 2), child)
    keys = list(parent.state_dict())
    assert keys == [
        "0.weight",
        "0.bias",
        "1.old.weight",
        "1.old.bias",
        "1.other.weight",
        "1.other.bias",
    ]
    state = {k: torch.zeros_like(v) for k, v in parent.state_dict().items()}
    parent.load_state_dict(state)
    assert not child.inner.weight.detach().any()
