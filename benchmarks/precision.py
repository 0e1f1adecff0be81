"""fp32 vs bf16 (``common.precision``) side by side: features, training and beam search.

In one process, interleaved (each repetition times fp32, then bf16, so both see the same load),
through the library's own paths and ``devices.autocast``:

- features img/s: ``encode_batch`` of the default encoder (efficientnet_lite0, random weights:
  the same arithmetic as the pretrained ones) on a batch of random 224 px images;
- training tokens/s: one optimiser step (forward + backward + AdamW, the loss in fp32, the
  train stage's ``caption_loss`` and ``optimizer_step``) of the soft_attention decoder, at the
  dims of params.yaml (train.model, train.batch_size, 7x7x1280 features, the shapes' words) or,
  with ``--seed-dims``, at the seed's (batch 32, 196x2048 features, vocab 10k, dims 512);
- beam captions/s: ``decoding.search.beam_search`` (k = evaluate.beam_size) over a batch of
  features (a copy of the decoder with peaked next-word distributions, <end> never chosen).

On a CPU without bf16 arithmetic (avx512_bf16, AMX: the machine line says) torch emulates bf16
and bf16 is expected to be slower; a CUDA device is used if there is one.

    python benchmarks/precision.py [--repeats 3] [--seed-dims] [--images 8] [--captions 50]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

from captioning import runtime

runtime.setup()

import torch  # noqa: E402

from captioning.config import load_params  # noqa: E402
from captioning.data.sources.shapes import VOCABULARY  # noqa: E402
from captioning.data.vocab import SPECIALS  # noqa: E402
from captioning.decoding.search import beam_search  # noqa: E402
from captioning.devices import autocast, choose_device, resolve_precision  # noqa: E402
from captioning.features.encoders import get_encoder_spec  # noqa: E402
from captioning.features.encoding import encode_batch, load_encoder  # noqa: E402
from captioning.models import build_decoder  # noqa: E402
from captioning.training.loop import grad_scaler, optimizer_step  # noqa: E402
from captioning.training.objectives import caption_loss  # noqa: E402
from decoder_speed import BATCH, CHANNELS, LOCATIONS, VOCAB, WORDS  # noqa: E402
from decoder_speed import CFG as SEED_DIMS  # noqa: E402
from machine import machine_line  # noqa: E402

PRECISIONS = ("fp32", "bf16")
START, END = 1, 2


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def features_task(device: torch.device, images: int) -> Callable[[str], int]:
    """Encode one batch of random images; returns the images encoded."""
    spec = get_encoder_spec("efficientnet_lite0")
    model = load_encoder(spec, False, device, seed=0)
    batch = torch.rand(images, 3, spec.input_size, spec.input_size)

    def run(precision: str) -> int:
        encode_batch(model, batch, spec, device, precision=precision)
        return images

    return run


def decoder_setup(args, device: torch.device):
    """The decoder, float16 features as the cache gives them, captions, and what they mean."""
    if args.seed_dims:
        cfg, batch, words, vocab = SEED_DIMS, BATCH, WORDS, VOCAB
        locations, channels = LOCATIONS, CHANNELS
        what = f"seed dims: batch {BATCH}, {LOCATIONS}x{CHANNELS} features, vocab {VOCAB}, dims 512"
    else:
        train = load_params(args.params).train
        cfg, batch, words = train.model, train.batch_size, 12
        (locations, channels), vocab = (49, 1280), len(SPECIALS) + len(VOCABULARY)
        what = (
            f"params.yaml dims: batch {batch}, 49x1280 features, vocab {vocab}, "
            f"embed/hidden/attention {cfg.embed_dim}/{cfg.hidden_dim}/{cfg.attention_dim}"
        )
    torch.manual_seed(0)
    decoder = build_decoder(
        "soft_attention", cfg, vocab_size=vocab, feature_dim=channels, num_locations=locations
    ).to(device)
    feats = torch.relu(torch.randn(batch, locations, channels)).half().to(device)
    captions = torch.randint(3, vocab, (batch, words + 1), device=device)
    captions[:, 0] = START
    return decoder, feats, captions, what


def training_task(decoder, feats, captions, device: torch.device) -> Callable[[str], int]:
    """One optimiser step in ``precision``; returns the tokens trained on."""
    params = [p for p in decoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scalers = {p: grad_scaler(device, p) for p in PRECISIONS}
    tokens = captions[:, 1:].numel()

    def run(precision: str) -> int:
        decoder.train()
        with autocast(device, precision):
            loss = caption_loss(decoder, feats, captions)
        optimizer_step(loss, params, optimizer, scheduler, scalers[precision], 5.0)
        return tokens

    return run


def beam_task(decoder, feats, device: torch.device, beam: int, n: int) -> Callable[[str], int]:
    """Beam captions of ``n`` images by a copy of ``decoder`` whose next-word distributions are
    peaked (as a trained model's) and never <end> (every caption runs to full length)."""
    decoder = copy.deepcopy(decoder).eval()
    with torch.no_grad():
        decoder.out.weight.mul_(20.0)
        decoder.out.bias[END] = -1e4
    images = feats[:1].expand(n, -1, -1).clone() if n > len(feats) else feats[:n]
    images = images + 0.1 * torch.rand_like(images)  # distinct images

    @torch.no_grad()
    def run(precision: str) -> int:
        with autocast(device, precision):
            beam_search(
                decoder,
                images,
                start_id=START,
                end_id=END,
                max_length=16,
                beam_size=beam,
            )
        return n

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timings of each")
    parser.add_argument("--seed-dims", action="store_true", help="the seed's decoder dims")
    parser.add_argument("--images", type=int, default=8, help="encoder batch size")
    parser.add_argument("--captions", type=int, default=50, help="images per beam search")
    args = parser.parse_args()
    device = choose_device()
    params = load_params(args.params)
    resolved = resolve_precision(params.common.precision, device)
    for precision in PRECISIONS:
        resolve_precision(precision, device)  # bf16 on a CPU without it: the warning, once

    decoder, feats, captions, what = decoder_setup(args, device)
    tasks = {
        "features img/s": features_task(device, args.images),
        "training tokens/s": training_task(decoder, feats, captions, device),
        "beam captions/s": beam_task(
            decoder, feats, device, params.evaluate.beam_size, args.captions
        ),
    }
    rates: dict[str, dict[str, list[float]]] = {t: {p: [] for p in PRECISIONS} for t in tasks}
    for name, task in tasks.items():
        for precision in PRECISIONS:
            task(precision)  # warm-up (first-call allocations, oneDNN kernel choice)
        for _ in range(args.repeats):
            for precision in PRECISIONS:
                sync(device)
                start = time.perf_counter()
                count = task(precision)
                sync(device)
                rates[name][precision].append(count / (time.perf_counter() - start))

    print(
        f"{device}, common.precision {params.common.precision} resolves to {resolved} here; "
        f"decoder at {what}; median of {args.repeats}, interleaved"
    )
    for name in tasks:
        fp32, bf16 = (statistics.median(rates[name][p]) for p in PRECISIONS)
        print(
            f"{name:18s} fp32 {fp32:9.1f}   bf16 {bf16:9.1f}   ratio bf16/fp32 {bf16 / fp32:.2f}x"
        )
    threads = torch.get_num_threads() if device.type == "cpu" else None
    print(machine_line(threads))


if __name__ == "__main__":
    main()
