"""What a training step minimises: an objective turns the decoder and a batch into a loss.

Today's is teacher forcing (the masked next-token cross-entropy, the decoder fed the true
words or, under scheduled sampling, sometimes its own) plus the decoder's regulariser (the
doubly stochastic attention penalty; hard attention's REINFORCE surrogate). A CTC head (the
decoder's ``kind`` "ctc") minimises the CTC loss instead (``objective_for`` picks). The
sequence-level one (self-critical training: sample captions, reward them with CIDEr-D) is
another class with the same call, ``training.self_critical.SelfCritical``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from captioning.config import ScheduledSamplingConfig
from captioning.data.vocab import END, PAD, SPECIALS
from captioning.models import Decoder
from captioning.training.distributed import DistContext
from captioning.training.schedules import sampling_probability

if TYPE_CHECKING:
    from captioning.training.sources import Batch

PAD_ID = SPECIALS.index(PAD)
END_ID = SPECIALS.index(END)


def masked_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy of next-token logits (M, T, V) against targets (M, T) over real tokens
    only (padding masked): their mean, or their sum (``reduction="sum"``). In float32 whatever
    autocast computed the logits in."""
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        targets.reshape(-1),
        ignore_index=PAD_ID,
        reduction=reduction,
    )


def caption_loss(
    decoder: Decoder,
    features: torch.Tensor,
    captions: torch.Tensor,
    rows: torch.Tensor | None = None,
    *,
    sample_prob: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy over real tokens plus the decoder's regulariser; ``sample_prob`` > 0
    feeds the decoder's own samples (scheduled sampling)."""
    output = decoder(features, captions, rows, sample_prob=sample_prob)
    return masked_cross_entropy(output.logits, captions[:, 1:]) + output.aux_loss


def ctc_loss_sum(logits: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
    """The CTC loss of frame logits (M, W, V) against captions (M, T) (<start> word <end> pad),
    summed over the captions; in float32, <pad> the blank. A word longer than its frames (with
    the blanks its repeats need) has no path: zero_infinity drops it rather than return inf."""
    targets = captions[:, 1:]  # the letters from position 0, then <end> and <pad>
    letters = (targets != PAD_ID) & (targets != END_ID)
    log_probs = torch.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (W, M, V)
    frames = torch.full((logits.size(0),), logits.size(1), dtype=torch.long, device=logits.device)
    # Padded targets and lengths on the device: selecting the letters (a boolean index) or
    # moving the lengths to the host would make every step wait for the GPU.
    return nn.functional.ctc_loss(
        log_probs,
        targets,
        frames,
        letters.sum(dim=1),
        blank=PAD_ID,
        reduction="sum",
        zero_infinity=True,
    )


def loss_sum(decoder: Decoder, logits: torch.Tensor, captions: torch.Tensor) -> tuple:
    """The validation loss of ``decoder``'s output on ``captions``, summed, and what it is a sum
    over: tokens for a sequence decoder's cross-entropy, captions for a CTC head."""
    if decoder.kind == "ctc":
        return ctc_loss_sum(logits, captions), captions.size(0)
    targets = captions[:, 1:]
    return masked_cross_entropy(logits, targets, reduction="sum"), int((targets != PAD_ID).sum())


@dataclass(frozen=True)
class StepLoss:
    loss: torch.Tensor  # what the optimiser step back-propagates
    captions: int  # the batch's captions (this rank's): the loss's weight in the epoch's mean
    sample_prob: float = 0.0  # the scheduled-sampling probability the step ran at
    # What else the step measured (self-critical training: the samples' mean reward): the
    # epoch's record and the step log get each one's mean over the steps.
    stats: dict[str, float] = field(default_factory=dict)


class Objective(Protocol):
    def __call__(self, model: nn.Module, batch: Batch, step: int, ctx: DistContext) -> StepLoss: ...


@dataclass(frozen=True)
class TeacherForcing:
    """Masked cross-entropy with scheduled sampling at the run's optimiser ``step``."""

    schedule: ScheduledSamplingConfig

    def __call__(self, model: nn.Module, batch: Batch, step: int, ctx: DistContext) -> StepLoss:
        sample_prob = sampling_probability(self.schedule, step)
        features, captions, rows = batch.features(), batch.captions, batch.rows
        if ctx.enabled:
            loss = _rank_share_loss(model, features, captions, rows, ctx, sample_prob)
        else:
            loss = caption_loss(model, features, captions, rows, sample_prob=sample_prob)
        return StepLoss(loss, captions.size(0), sample_prob)


@dataclass(frozen=True)
class CTCLoss:
    """A CTC head's objective: the CTC loss per caption (its mean over the batch)."""

    def __call__(self, model: nn.Module, batch: Batch, step: int, ctx: DistContext) -> StepLoss:
        captions = batch.captions
        logits = model(batch.features(), captions, batch.rows).logits
        loss = ctc_loss_sum(logits, captions)
        if ctx.enabled:  # this rank's share of the global batch, times world (DDP averages)
            count = torch.full((), captions.size(0), device=captions.device, dtype=torch.float)
            return StepLoss(ctx.world * loss / ctx.total(count), captions.size(0))
        return StepLoss(loss / captions.size(0), captions.size(0))


def objective_for(decoder: Decoder, schedule: ScheduledSamplingConfig) -> Objective:
    """The decoder kind's objective: teacher forcing for a sequence decoder, CTC for a CTC head."""
    return CTCLoss() if decoder.kind == "ctc" else TeacherForcing(schedule)


def _rank_share_loss(
    model: nn.Module,
    features: torch.Tensor,
    captions: torch.Tensor,
    rows: torch.Tensor,
    ctx: DistContext,
    sample_prob: float,
) -> torch.Tensor:
    """This rank's share of the global batch's ``caption_loss``, times ``world`` (DDP averages
    the gradients): summed over the ranks it is the single-process loss of the whole batch. The
    regulariser is a mean over captions in every decoder, so it is weighted by the rank's share
    of the captions. (Logged per rank it is close to the batch's mean loss: the shares are
    about 1/world each.)"""
    output = model(features, captions, rows, sample_prob=sample_prob)
    targets = captions[:, 1:]
    ce_sum = masked_cross_entropy(output.logits, targets, reduction="sum")
    # The global batch's tokens and captions: one all-reduce, kept on the device (no host sync).
    # (torch.full, not torch.tensor: a copy from the host would wait for the GPU.)
    count = torch.full((), captions.size(0), device=captions.device)
    mine = torch.stack([(targets != PAD_ID).sum(), count]).float()
    tokens, total_captions = ctx.total(mine).unbind()
    share = captions.size(0) / total_captions
    return ctx.world * (ce_sum / tokens.clamp(min=1.0) + output.aux_loss * share)
