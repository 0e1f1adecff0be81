"""The transformer's training step against soft_attention's (the default decoder's), on the CPU.

One teacher-forced step (forward, backward, AdamW) of a batch at the default run's shapes: 64
captions of 14 tokens, 7x7x1280 features (float16, as cached), the shapes vocabulary. Each
decoder at params.yaml's dims (train.model), and the transformer also at each ``--dims`` given
(layers x d_model x ffn_dim); steps interleaved round by round, so a change of load hits them
all; the median per decoder and its ratio to soft_attention's are printed.

    python benchmarks/transformer_step.py [--rounds 8] [--dims 3x256x1024 ...] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from captioning import runtime

runtime.setup()

import torch  # noqa: E402

from captioning.config import TrainConfig, load_section  # noqa: E402
from captioning.data.sources.shapes import VOCABULARY  # noqa: E402
from captioning.data.vocab import SPECIALS  # noqa: E402
from captioning.models import build_decoder  # noqa: E402
from captioning.models.base import Decoder  # noqa: E402
from captioning.training.loop import adamw  # noqa: E402
from machine import machine_line  # noqa: E402

VOCAB = len(SPECIALS) + len(VOCABULARY)


def step(decoder: Decoder, optimizer: torch.optim.Optimizer, features, captions) -> float:
    start = time.perf_counter()
    out = decoder(features, captions)
    loss = torch.nn.functional.cross_entropy(
        out.logits.flatten(0, 1), captions[:, 1:].flatten(), ignore_index=0
    )
    optimizer.zero_grad()
    (loss + out.aux_loss).backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--dims", nargs="*", default=["3x256x1024"], help="layers x d_model x ffn")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()

    cfg = load_section(args.params, "train", TrainConfig)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = {"soft_attention": ("soft_attention", cfg.model)}
    t = cfg.model.transformer
    models[f"transformer {t.layers}x{t.d_model}x{t.ffn_dim}"] = ("transformer", cfg.model)
    for dims in args.dims:
        layers, d_model, ffn = (int(x) for x in dims.split("x"))
        sized = dataclasses.replace(t, layers=layers, d_model=d_model, ffn_dim=ffn)
        model = dataclasses.replace(cfg.model, transformer=sized)
        models[f"transformer {dims}"] = ("transformer", model)

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(64, 49, 1280, generator=generator).relu().half()
    captions = torch.randint(3, VOCAB, (64, 14), generator=generator)
    captions[:, 0] = 1
    runs = {}
    for label, (name, model) in models.items():
        torch.manual_seed(0)
        decoder = build_decoder(name, model, vocab_size=VOCAB, feature_dim=1280, num_locations=49)
        optimizer = adamw([{"params": list(decoder.parameters()), "lr": cfg.lr}], cfg.weight_decay)
        step(decoder, optimizer, features, captions)  # warm-up
        runs[label] = (decoder, optimizer, [])
    for _ in range(args.rounds):
        for decoder, optimizer, times in runs.values():
            times.append(step(decoder, optimizer, features, captions))

    print(f"one training step: 64 captions x 14 tokens, 49x1280 features, vocab {VOCAB}")
    print(machine_line(torch.get_num_threads()))
    base = statistics.median(runs["soft_attention"][2])
    for label, (decoder, _, times) in runs.items():
        params = sum(p.numel() for p in decoder.parameters()) / 1e6
        median = statistics.median(times)
        print(
            f"{label:>28}: {params:5.2f} M parameters, {1000 * median:7.1f} ms/step, "
            f"ratio to soft_attention {median / base:.2f}x"
        )


if __name__ == "__main__":
    main()
