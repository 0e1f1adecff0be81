"""Decoders by name: each name of ``train.decoders`` resolves through DECODERS."""

from __future__ import annotations

from collections.abc import Callable

from captioning.config import DECODER_NAMES, DecoderConfig, check_registry
from captioning.errors import UnknownNameError
from captioning.models.bahdanau_gru import BahdanauGRUDecoder
from captioning.models.base import Decoder, DecoderOutput, State
from captioning.models.ctc import CTCReader
from captioning.models.hard_attention import HardAttentionDecoder
from captioning.models.mrnn import MultimodalRNNDecoder
from captioning.models.nic import ShowAndTellDecoder
from captioning.models.soft_attention import SoftAttentionDecoder
from captioning.models.transformer import TransformerDecoder

DecoderFactory = Callable[[DecoderConfig, int, int, int], Decoder]

DECODERS: dict[str, DecoderFactory] = {
    "nic": ShowAndTellDecoder,
    "mrnn": MultimodalRNNDecoder,
    "soft_attention": SoftAttentionDecoder,
    "hard_attention": HardAttentionDecoder,
    "bahdanau_gru": BahdanauGRUDecoder,
    "transformer": TransformerDecoder,
    "ctc": CTCReader,
}
check_registry("decoder", DECODERS, DECODER_NAMES, "DECODER_NAMES")

# Decoders whose recurrent cell follows ``train.model.cell`` (lstm | gru).
CELL_CHOICE = frozenset({"soft_attention", "hard_attention", "ctc"})


def build_decoder(
    name: str, cfg: DecoderConfig, *, vocab_size: int, feature_dim: int, num_locations: int
) -> Decoder:
    if name not in DECODERS:
        raise UnknownNameError(f"unknown decoder {name!r}; choose one of {sorted(DECODERS)}")
    return DECODERS[name](cfg, vocab_size, feature_dim, num_locations)


__all__ = ["CELL_CHOICE", "DECODERS", "Decoder", "DecoderOutput", "State", "build_decoder"]
