"""Show, Attend and Tell with stochastic hard attention (Xu et al. 2015, section 4.1).

At every step the decoder looks at ONE location s_t drawn from the attention distribution
alpha_t; the context is that location's feature. Sampling is not differentiable, so the
location policy is trained with REINFORCE: the reward is the caption's log-likelihood
log p(y | s, a) under the sampled locations, minus a moving-average baseline (buffer
``baseline``, b <- d b + (1 - d) mean reward, Xu et al.'s d = 0.9), and an entropy bonus
keeps the policy exploring. The word predictions learn from the ordinary cross-entropy of the
training loop; the policy gradient travels in ``aux_loss``, so the loop needs no special case.

Decoding (``step``, and ``forward`` in eval mode) attends to the most likely location (the
argmax of alpha) instead of sampling: the decoder was trained on single-location contexts, so
the expectation (a soft-attention context) would be an input it never saw, and a caption must
not depend on the random state. ``alphas`` are the distributions alpha_t, for the heat maps.
"""

from __future__ import annotations

import torch

from captioning.config import DecoderConfig
from captioning.models.base import DecoderOutput, State
from captioning.models.show_attend_tell import ShowAttendTellDecoder

# Per step: alpha (B, L), log p(s_t) (B,), entropy of alpha (B,)
StepExtra = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class HardAttentionDecoder(ShowAttendTellDecoder):
    def __init__(
        self, cfg: DecoderConfig, vocab_size: int, feature_dim: int, num_locations: int
    ) -> None:
        super().__init__(cfg, vocab_size, feature_dim, num_locations)
        # The REINFORCE baseline: saved with the weights, so a resumed run keeps it.
        self.register_buffer("baseline", torch.zeros(()))

    def recur(self, embedded: torch.Tensor, state: State) -> tuple[torch.Tensor, State, StepExtra]:
        log_alpha = torch.log_softmax(
            self.attention.scores(state["projected"], state["h"]).squeeze(1).float(), dim=-1
        )  # (B, L): one query row per image
        alpha = log_alpha.exp()
        if self.training:
            where = torch.multinomial(alpha.detach(), 1).squeeze(1)  # (B,) sampled s_t
        else:
            where = alpha.argmax(dim=-1)  # (B,) the most likely location
        batch = torch.arange(where.size(0), device=where.device)
        hidden, state = self.read(embedded, state["feats"][batch, where], state)  # context (B, D)
        entropy = -(alpha * log_alpha).sum(dim=-1)  # (B,)
        return hidden, state, (alpha, log_alpha[batch, where], entropy)

    @staticmethod
    def attention_of(extra: StepExtra) -> torch.Tensor:
        return extra[0]

    def aux_loss(
        self, out: DecoderOutput, captions: torch.Tensor, extras: list[StepExtra]
    ) -> torch.Tensor:
        if not self.training:
            return out.aux_loss  # 0
        log_p = torch.stack([e[1] for e in extras], dim=1)  # (B, T) log p(s_t)
        entropy = torch.stack([e[2] for e in extras], dim=1)  # (B, T)
        return self.reinforce(out.logits, captions, log_p, entropy)

    def reinforce(
        self,
        logits: torch.Tensor,
        captions: torch.Tensor,
        log_p: torch.Tensor,
        entropy: torch.Tensor,
    ) -> torch.Tensor:
        """The policy-gradient surrogate for the locations, and one update of the baseline.

        Scaled like the loop's cross-entropy (a mean over real tokens), so reinforce_weight and
        entropy_weight are Xu et al.'s lambda_r and lambda_e. Its value is centred to zero
        (x - x.detach()): it carries no meaning, and the logged loss stays the cross-entropy.
        """
        targets = captions[:, 1:]  # (B, T)
        mask = (targets != 0).float()
        with torch.no_grad():
            token_log_p = torch.log_softmax(logits.float(), dim=-1)
            token_log_p = token_log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
            reward = (token_log_p * mask).sum(dim=1)  # (B,) log p(y | s, a)
            advantage = reward - self.baseline
            decay = self.cfg.baseline_decay
            self.baseline.mul_(decay).add_((1.0 - decay) * reward.mean())
        policy = (advantage * (log_p * mask).sum(dim=1)).sum()
        bonus = (entropy * mask).sum()
        tokens = mask.sum().clamp(min=1.0)
        surrogate = -(self.cfg.reinforce_weight * policy + self.cfg.entropy_weight * bonus) / tokens
        return surrogate - surrogate.detach()
