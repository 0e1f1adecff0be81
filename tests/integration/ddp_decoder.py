"""The soft-attention decoder for the DDP test, less two things that cannot match on the CPU:
its BatchNorm (the ranks' statistics come from their halves of the batch; SyncBatchNorm needs
CUDA) and the attention score's bias, whose gradient is zero in exact arithmetic (softmax
ignores a shift), so that Adam turns float noise in it into steps of +-lr."""

import contextlib
from collections.abc import Iterator

from torch import nn

from captioning import config
from captioning.models import DECODERS
from captioning.models.soft_attention import SoftAttentionDecoder

NAME = "soft_attention_without_norm"


class SoftAttentionWithoutNorm(SoftAttentionDecoder):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.standardise.norm = nn.Identity()
        self.attention.score = nn.Linear(self.attention.score.in_features, 1, bias=False)


@contextlib.contextmanager
def registered() -> Iterator[str]:
    """The test decoder in DECODERS (and its name among config's DECODER_NAMES, which params
    are checked against) while the block runs: kept out of the other tests' parametrisation
    over every registered decoder."""
    names = config.DECODER_NAMES
    DECODERS[NAME] = SoftAttentionWithoutNorm
    config.DECODER_NAMES = (*names, NAME)
    try:
        yield NAME
    finally:
        DECODERS.pop(NAME, None)
        config.DECODER_NAMES = names
