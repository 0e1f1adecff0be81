"""EfficientNet-Lite0 forward on the CPU: plain PyTorch vs the pipeline's settings.

The pipeline runs the encoder channels_last and keeps freed large buffers in the heap
(captioning.runtime.keep_large_allocations). Each variant runs in its own process, because the
malloc setting is process-wide. Prints images/s for both and the ratio.

    python benchmarks/encoder_cpu_settings.py [--batch 32] [--batches 6]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from machine import machine_line

CHILD = """
import json, sys, time
tuned = sys.argv[1] == "tuned"
batch, batches = int(sys.argv[2]), int(sys.argv[3])
if tuned:
    from captioning.runtime import keep_large_allocations
    keep_large_allocations()
import torch
from captioning.features.encoders import get_encoder_spec
torch.manual_seed(0)
model = get_encoder_spec("efficientnet_lite0").build(True).eval()
x = torch.randn(batch, 3, 224, 224)
if tuned:
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
with torch.inference_mode():
    model(x)
    start = time.perf_counter()
    for _ in range(batches):
        model(x)
print(json.dumps({"images_per_s": batch * batches / (time.perf_counter() - start)}))
"""


def measure(variant: str, batch: int, batches: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, variant, str(batch), str(batches)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=6)
    args = parser.parse_args()
    plain = measure("plain", args.batch, args.batches)
    tuned = measure("tuned", args.batch, args.batches)
    print(f"plain (NCHW, default malloc):            {plain:6.1f} images/s")
    print(f"pipeline (channels_last, kept buffers):  {tuned:6.1f} images/s")
    print(machine_line())
    print(f"ratio: {tuned / plain:.2f}x")


if __name__ == "__main__":
    main()
