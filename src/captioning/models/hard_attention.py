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
from torch import nn

from captioning.config import DecoderConfig
from captioning.models.base import Decoder, DecoderOutput, State
from captioning.models.layers import (
    AdditiveAttention,
    FeatureStandardiser,
    cell_step,
    make_cell,
    unroll,
)

# Per step: alpha (B, L), log p(s_t) (B,), entropy of alpha (B,)
StepExtra = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class HardAttentionDecoder(Decoder):
    def __init__(
        self, cfg: DecoderConfig, vocab_size: int, feature_dim: int, num_locations: int
    ) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.feature_proj_dim
        self.standardise = FeatureStandardiser(feature_dim)
        self.feature_in = nn.Linear(feature_dim, d)
        self.feature_dropout = nn.Dropout(cfg.feature_dropout)
        self.position = nn.Parameter(torch.zeros(1, num_locations, d))
        nn.init.normal_(self.position, std=0.02)
        self.embedding = nn.Embedding(vocab_size, cfg.embed_dim)
        self.attention = AdditiveAttention(d, cfg.hidden_dim, cfg.attention_dim)
        self.init_h = nn.Linear(d, cfg.hidden_dim)
        if cfg.cell == "lstm":
            self.init_c = nn.Linear(d, cfg.hidden_dim)
        self.f_beta = nn.Linear(cfg.hidden_dim, d)
        self.cell = make_cell(cfg.cell, cfg.embed_dim + d, cfg.hidden_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.hidden_dim, vocab_size)
        # The REINFORCE baseline: saved with the weights, so a resumed run keeps it.
        self.register_buffer("baseline", torch.zeros(()))

    def init_state(self, features: torch.Tensor) -> State:
        feats = torch.relu(self.feature_in(self.standardise(features)))  # (B, L, D)
        feats = self.feature_dropout(feats) + self.position  # (B, L, D)
        mean = feats.mean(dim=1)  # (B, D)
        state = {
            "feats": feats,
            "projected": self.attention.precompute(feats),  # (B, L, A)
            "h": torch.tanh(self.init_h(mean)),  # (B, H)
        }
        if self.cfg.cell == "lstm":
            state["c"] = torch.tanh(self.init_c(mean))  # (B, H)
        return state

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
        context = state["feats"][batch, where]  # (B, D)
        gated = torch.sigmoid(self.f_beta(state["h"])) * context  # (B, D)
        x = torch.cat([embedded, gated.to(embedded.dtype)], dim=-1)  # (B, E + D)
        state = {**state, **cell_step(self.cell, x, state)}
        entropy = -(alpha * log_alpha).sum(dim=-1)  # (B,)
        return self.dropout(state["h"]), state, (alpha, log_alpha[batch, where], entropy)

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
        hidden, state, (alpha, _, _) = self.recur(self.embedding(tokens), state)
        return self.out(hidden), state, alpha  # (B, V)

    def forward(
        self,
        features: torch.Tensor,
        captions: torch.Tensor,
        rows: torch.Tensor | None = None,
        *,
        sample_prob: float = 0.0,
    ) -> DecoderOutput:
        state = self.start(features, rows)
        logits, extras = unroll(self.recur, self.embedding, self.out, captions, state, sample_prob)
        alphas = torch.stack([e[0] for e in extras], dim=1)  # (B, T, L)
        if not self.training:
            return DecoderOutput(logits, alphas, logits.new_zeros(()))
        log_p = torch.stack([e[1] for e in extras], dim=1)  # (B, T) log p(s_t)
        entropy = torch.stack([e[2] for e in extras], dim=1)  # (B, T)
        return DecoderOutput(logits, alphas, self.reinforce(logits, captions, log_p, entropy))

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
