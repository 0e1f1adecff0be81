"""The soft-attention decoder's training step at the seed's dims: the library's path vs the
path before the issue-21 changes, and candidate changes.

One optimiser step as the train stage runs it (``caption_loss`` + ``optimizer_step``: forward,
backward, gradient clipping, AdamW from ``training.loop.adamw``) at the seed's dims
(decoder_speed.py: batch 32, 20 predicted tokens, 196x2048 float16 features, vocab 10k, dims 512,
dropout 0). Each variant trains its own copy of the same initial decoder; one repetition times
every variant in turn (interleaved, so all see the same load). Before timing, each variant's
gradient at the initial weights is compared with the library's (reordering alone gives ~1e-4).

Variants:
- ``base``: the library's step (the attention's energies as 2 sigmoid(2x) - 1, fused AdamW);
- ``before``: the step before those two changes (tanh energies, AdamW's per-tensor loop):
  ``base`` / ``before`` is what they bought;
- ``tanh``: only the energies as tanh (torch's float tanh is ~3x slower than sigmoid on AVX2);
- ``adamw_loop`` / ``adamw_foreach``: AdamW's per-tensor loop / multi-tensor implementation;
- ``gates``: teacher forcing's LSTM with the word's share of the input gates (and the
  attention's word query) for all steps in one GEMM, f_beta and the hidden gates in one per step;
- ``compiled``: the attention's scores under ``torch.compile`` (compile time: the first call);
- ``no_mkldnn``: the step under ``torch.backends.mkldnn.flags(enabled=False)``.

    python benchmarks/train_step_variants.py [--repeats 5] [--variants base,before,...]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

from captioning.runtime import setup

setup()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from captioning.models.layers import AdditiveAttention  # noqa: E402
from captioning.models.soft_attention import SoftAttentionDecoder  # noqa: E402
from captioning.training.loop import adamw, grad_scaler, optimizer_step  # noqa: E402
from captioning.training.objectives import caption_loss  # noqa: E402
from decoder_speed import BATCH, CFG, CHANNELS, LOCATIONS, VOCAB, WORDS  # noqa: E402
from machine import machine_line  # noqa: E402


def tanh_precompute(self: AdditiveAttention, features):
    """``AdditiveAttention.precompute`` of the tanh form: W1 f + b1."""
    return self.feature_proj(features)


def tanh_scores(self: AdditiveAttention, projected, hidden, query_extra=None):
    """``AdditiveAttention.scores`` as v.tanh(W1 f + W2 h + extra) + b (the earlier form)."""
    query = self.hidden_proj(hidden)
    if query_extra is not None:
        query = query + query_extra
    query = query.view(projected.size(0), -1, 1, query.size(-1))
    energy = (projected.unsqueeze(1) + query).tanh_()
    return self.score(energy).squeeze(-1)


def gated_recur_caption(self: SoftAttentionDecoder, embedded, state):
    """Teacher forcing's unroll with the LSTM's GEMMs regrouped (the same math): the word's
    share of the input gates and the attention's word query for all steps at once, and f_beta
    with the hidden gates in one GEMM on h per step."""
    cell = self.cell
    width, hidden = embedded.size(-1), cell.hidden_size
    word_gates = F.linear(embedded, cell.weight_ih[:, :width], cell.bias_ih + cell.bias_hh)
    word_query = None if self.word_query is None else self.word_query(embedded)  # (B, T, A)
    context_weight = cell.weight_ih[:, width:]
    h_weight = torch.cat([self.f_beta.weight, cell.weight_hh])
    h_bias = torch.cat([self.f_beta.bias, cell.bias_hh.new_zeros(4 * hidden)])
    sizes = [self.f_beta.out_features, 4 * hidden]
    h, c, feats, projected = state["h"], state["c"], state["feats"], state["projected"]
    outputs, alphas = [], []
    for t in range(embedded.size(1)):
        extra = None if word_query is None else word_query[:, t]
        context, alpha = self.attention(feats, projected, h, extra)
        gate, hidden_gates = F.linear(h, h_weight, h_bias).split(sizes, dim=-1)
        gates = (
            word_gates[:, t]
            + hidden_gates
            + F.linear(torch.sigmoid(gate) * context, context_weight)
        )
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outputs.append(self.dropout(h))
        alphas.append(alpha)
    return torch.stack(outputs, dim=1), alphas


class Variant:
    def __init__(self, name: str, decoder: SoftAttentionDecoder, **impl) -> None:
        self.name, self.decoder = name, copy.deepcopy(decoder)
        self.params = [p for p in self.decoder.parameters() if p.requires_grad]
        groups = [{"params": self.params, "lr": 1e-4}]
        if impl:  # another AdamW implementation than the library's
            self.optimizer = torch.optim.AdamW(groups, weight_decay=0.2, **impl)
        else:
            self.optimizer = adamw(groups, 0.2)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: 1.0)
        self.scaler = grad_scaler(torch.device("cpu"), "fp32")

    def step(self, feats, captions) -> float:
        self.decoder.train()
        with torch.backends.mkldnn.flags(enabled=self.name != "no_mkldnn"):
            loss = caption_loss(self.decoder, feats, captions)
            optimizer_step(loss, self.params, self.optimizer, self.scheduler, self.scaler, 5.0)
        return float(loss.detach())


def gradients(v: Variant, feats, captions) -> dict[str, torch.Tensor]:
    """The loss's gradient at the initial weights (before any step), by parameter name."""
    v.decoder.zero_grad(set_to_none=True)
    caption_loss(v.decoder, feats, captions).backward()
    grads = {k: p.grad.clone() for k, p in v.decoder.named_parameters()}
    v.decoder.zero_grad(set_to_none=True)
    return grads


def build(name: str, decoder: SoftAttentionDecoder) -> Variant:
    impl = {
        "before": {"fused": False, "foreach": False},
        "adamw_loop": {"fused": False, "foreach": False},
        "adamw_foreach": {"fused": False, "foreach": True},
    }
    v = Variant(name, decoder, **impl.get(name, {}))
    att = v.decoder.attention
    if name in ("tanh", "before"):
        att.precompute = tanh_precompute.__get__(att)
        att.scores = tanh_scores.__get__(att)
    if name == "gates":
        v.decoder.recur_caption = gated_recur_caption.__get__(v.decoder)
    if name == "compiled":
        att.scores = torch.compile(AdditiveAttention.scores.__get__(att), dynamic=False)
    return v


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", default="base,before,tanh,adamw_loop,gates")
    args = parser.parse_args()
    names = args.variants.split(",")
    torch.manual_seed(0)
    decoder = SoftAttentionDecoder(CFG, VOCAB, CHANNELS, LOCATIONS)
    feats = torch.relu(torch.randn(BATCH, LOCATIONS, CHANNELS)).half()
    captions = torch.randint(3, VOCAB, (BATCH, WORDS + 1))
    captions[:, 0] = 1
    tokens = BATCH * WORDS
    variants = [build(n, decoder) for n in ["base", *[n for n in names if n != "base"]]]
    reference = gradients(variants[0], feats, captions)
    for v in variants:  # the first step: warm-up (compile), and the exactness check
        start = time.perf_counter()
        grads = gradients(v, feats, captions)
        first_call = time.perf_counter() - start
        # score.bias's gradient is 0 in exact arithmetic (softmax is shift-invariant): rounding
        diffs = {
            k: (g - reference[k]).abs().max().item() / reference[k].abs().max().item()
            for k, g in grads.items()
            if not k.endswith("score.bias")
        }
        worst = max(diffs, key=diffs.get)
        start = time.perf_counter()
        loss = v.step(feats, captions)
        print(
            f"{v.name:14s} first call {first_call:6.1f} s, step {time.perf_counter() - start:5.2f} s, "
            f"loss {loss:.7f}, "
            f"gradient vs base: max |dg| / max |g| {diffs[worst]:.1e} ({worst})"
        )
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for _ in range(args.repeats):
        for v in variants:
            start = time.perf_counter()
            v.step(feats, captions)
            times[v.name].append(time.perf_counter() - start)
    base = tokens / statistics.median(times["base"])
    print(
        f"batch {BATCH} x {WORDS} tokens, {LOCATIONS}x{CHANNELS} features, vocab {VOCAB}, dims 512,"
        f" {torch.get_num_threads()} threads, median of {args.repeats} interleaved steps"
    )
    for v in variants:
        rate = tokens / statistics.median(times[v.name])
        print(f"{v.name:14s} {rate:6.0f} tokens/s  {rate / base:5.2f}x base")
    if "before" in times:
        before = tokens / statistics.median(times["before"])
        print(f"the library's step / the step before issue 21: {base / before:.2f}x")
    print(machine_line(torch.get_num_threads()))


if __name__ == "__main__":
    main()
