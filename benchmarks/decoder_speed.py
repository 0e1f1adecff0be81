"""Training tokens/s of the soft-attention decoder: ours vs a per-step tutorial loop.

The straightforward loop is how the common tutorials write Show-Attend-Tell (sgrvinod's PyTorch
tutorial, TensorFlow's image-captioning tutorial): every time step attends over the raw
features, projecting them again (here: the decoder's input projection 2048 -> 512 and the
attention's projection), embeds that step's words, and runs the output layer on that step
alone. A second naive row recomputes only the attention's projection per step (the input
projection once, as the TF tutorial's CNN_Encoder), to show where the time goes.
Ours (``SoftAttentionDecoder.forward``) projects the features once per batch, embeds every word
at once and runs the output layer once over all steps. All use the SAME weights (the naive
loops read the decoder's parameters) and compute the same loss, checked to 1e-5; dropout is 0
so that all see the same numbers. Forward + backward, the process set up as the train stage's.

    python benchmarks/decoder_speed.py [--iterations 3] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

from captioning.runtime import setup

setup()  # OMP_WAIT_POLICY=PASSIVE and the malloc setting, before torch starts its threads

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from captioning.config import DecoderConfig  # noqa: E402
from captioning.models.soft_attention import SoftAttentionDecoder  # noqa: E402
from machine import device_line, machine_line, synchronize  # noqa: E402

# How close the three losses must be: on CUDA, reductions sum in another order than the CPU's.
TOLERANCE = {"cpu": 1e-5, "cuda": 1e-4}

# The seed's sizes (Show-Attend-Tell on ResNet-101 14x14x2048 features).
BATCH, WORDS, LOCATIONS, CHANNELS, VOCAB = 32, 20, 196, 2048, 10_000
CFG = DecoderConfig(
    embed_dim=512,
    hidden_dim=512,
    attention_dim=512,
    feature_proj_dim=512,
    dropout=0.0,
    feature_dropout=0.0,
)


def ours_loss(decoder: SoftAttentionDecoder, features, captions) -> torch.Tensor:
    out = decoder(features, captions)
    ce = F.cross_entropy(out.logits.reshape(-1, VOCAB), captions[:, 1:].reshape(-1), ignore_index=0)
    return ce + out.aux_loss


def naive_loss(
    m: SoftAttentionDecoder, features, captions, *, input_per_step: bool = True
) -> torch.Tensor:
    """The tutorial loop, with the decoder's own weights."""
    normed = m.standardise(features)  # once

    def project_input() -> torch.Tensor:
        return torch.relu(m.feature_in(normed)) + m.position  # (B, L, D)

    feats = project_input()
    mean = feats.mean(dim=1)
    h, c = torch.tanh(m.init_h(mean)), torch.tanh(m.init_c(mean))
    att = m.attention
    total, alphas = 0.0, []
    for t in range(captions.size(1) - 1):
        # Attention over the raw features, their projections recomputed at every step.
        if input_per_step:
            feats = project_input()
        word = F.embedding(captions[:, t], m.embedding.weight)  # this step's words only
        att1 = F.linear(feats, att.feature_proj.weight, att.feature_proj.bias)  # (B, L, A)
        att2 = F.linear(h, att.hidden_proj.weight, att.hidden_proj.bias)  # (B, A)
        if m.word_query is not None:  # train.model.attend_with_word: the query sees the word
            att2 = att2 + F.linear(word, m.word_query.weight)
        energy = F.linear(torch.tanh(att1 + att2.unsqueeze(1)), att.score.weight, att.score.bias)
        alpha = torch.softmax(energy.squeeze(-1), dim=-1)  # (B, L)
        context = (feats * alpha.unsqueeze(-1)).sum(dim=1)  # (B, D)
        gate = torch.sigmoid(F.linear(h, m.f_beta.weight, m.f_beta.bias))
        h, c = m.cell(torch.cat([word, gate * context], dim=-1), (h, c))
        logits = F.linear(h, m.out.weight, m.out.bias)  # (B, V), the output layer per step
        total = total + F.cross_entropy(logits, captions[:, t + 1], ignore_index=0, reduction="sum")
        alphas.append(alpha)
    tokens = (captions[:, 1:] != 0).sum()
    mask = (captions[:, 1:] != 0).unsqueeze(-1).float()
    coverage = (torch.stack(alphas, dim=1) * mask).sum(dim=1)
    return total / tokens + m.cfg.alpha_c * ((1.0 - coverage) ** 2).mean()


def naive_attention_only_loss(m: SoftAttentionDecoder, features, captions) -> torch.Tensor:
    return naive_loss(m, features, captions, input_per_step=False)


def timed(fn, decoder, features, captions) -> tuple[float, float]:
    decoder.zero_grad(set_to_none=True)
    synchronize(features.device)
    start = time.perf_counter()
    loss = fn(decoder, features, captions)
    loss.backward()
    synchronize(features.device)
    return time.perf_counter() - start, float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=3, help="timed batches per variant")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    decoder = SoftAttentionDecoder(CFG, VOCAB, CHANNELS, LOCATIONS).train().to(device)
    features = torch.relu(torch.randn(BATCH, LOCATIONS, CHANNELS)).half()  # float16 cache
    captions = torch.randint(3, VOCAB, (BATCH, WORDS + 1))  # <start> + 20 predicted tokens
    captions[:, 0] = 1
    features, captions = features.to(device), captions.to(device)
    tokens = BATCH * WORDS

    variants = {"ours": ours_loss, "naive": naive_loss, "naive_att": naive_attention_only_loss}
    losses = {k: timed(fn, decoder, features, captions)[1] for k, fn in variants.items()}  # warm-up
    for loss in losses.values():
        assert abs(loss - losses["ours"]) <= TOLERANCE[device.type], f"losses differ: {losses}"
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.iterations):  # interleaved, so all see the same machine load
        for name, fn in variants.items():
            times[name].append(timed(fn, decoder, features, captions)[0])
    rate = {k: tokens / statistics.median(v) for k, v in times.items()}
    print(
        f"batch {BATCH} x {WORDS} tokens, {LOCATIONS}x{CHANNELS} features, vocab {VOCAB}, "
        f"dims 512, {torch.get_num_threads()} threads, median of {args.iterations}; losses "
        + ", ".join(f"{k} {v:.6f}" for k, v in losses.items())
    )
    print(f"tutorial loop, every projection per step:   {rate['naive']:6.0f} tokens/s")
    print(f"tutorial loop, attention projection only:   {rate['naive_att']:6.0f} tokens/s")
    print(f"ours (batched):                             {rate['ours']:6.0f} tokens/s")
    print(machine_line(torch.get_num_threads()))
    print(device_line(device))
    print(f"ratio ours / tutorial loop: {rate['ours'] / rate['naive']:.2f}x")
    print(f"ratio ours / attention-projection-only loop: {rate['ours'] / rate['naive_att']:.2f}x")


if __name__ == "__main__":
    main()
