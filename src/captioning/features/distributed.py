"""Feature extraction fanned out over shards on a Dask cluster, through Prefect's DaskTaskRunner.

The cache is the one ``extract_features`` builds (same work directory, fingerprint, memory-mapped
split arrays, per-shard index files, resume and final assembly); only the encoding of the
pending shards moves: each shard is one Prefect task, run by a Dask worker that loads the
encoder once per process and writes the shard's rows straight into the split's memory-mapped
array in the shared work directory, then its index file (the shard's "done" mark). Dask reruns
the tasks of a worker that is lost; a rerun shard is written again from its first row, and a
shard already marked done is not encoded twice. The work directory must be on storage every
worker sees (a local disk for a LocalCluster; a shared filesystem for a multi-node cluster).

Why Dask (prefect-dask) and not Ray (prefect-ray): the work is embarrassingly parallel tasks
over files, Dask's LocalCluster runs the same code on one machine as on a cluster
(dask-jobqueue for Slurm/PBS, dask-kubernetes), its wheels are small and pure Python, and it
installs from PyPI on these machines; Ray's object store and actors buy nothing here.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from captioning.config import FeaturesConfig
from captioning.devices import choose_device
from captioning.features.cache import _SplitWriter
from captioning.features.encoders import get_encoder_spec
from captioning.features.encoding import encode_pixels, load_encoder
from captioning.features.loader import Shard, extraction_loader

log = logging.getLogger(__name__)

ShardFunction = Callable[[str, Sequence[Shard], Shard, FeaturesConfig, "int | None", str, str], int]


def worker_device(setting: str = "auto") -> torch.device:
    """This Dask worker's device for ``common.device`` ``setting``: with ``auto`` or ``cuda``
    on a machine with several GPUs, LocalCluster worker ``i`` (workers are named 0..n-1) takes
    ``cuda:i mod count``, so ``features.dask_workers`` set to the GPU count puts one worker on
    each; ``cuda:N`` puts every worker on that GPU. A worker with another name (a cluster
    started by hand) takes ``cuda:0`` of what it sees: start each with its own
    CUDA_VISIBLE_DEVICES."""
    device = choose_device(setting)
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    if count < 2 or device.index is not None:
        return device
    from distributed import get_worker

    name = get_worker().name
    if not isinstance(name, int):
        log.warning(
            "Dask worker %r: not a LocalCluster index, using cuda:0 of %d GPUs", name, count
        )
        name = 0
    device = torch.device("cuda", name % count)
    torch.cuda.set_device(device)  # autocast's bf16 check and cuDNN follow the current device
    return device


@functools.lru_cache(maxsize=2)
def _worker_encoder(
    name: str, pretrained: bool, weights_path: str | None, seed: int | None, device: torch.device
) -> torch.nn.Module:
    """One encoder per worker process, kept for every shard the worker is given."""
    spec = get_encoder_spec(name)
    return load_encoder(spec, pretrained, device, weights_path=weights_path, seed=seed)


def encode_one_shard(
    work_dir: str,
    split_shards: Sequence[Shard],
    shard: Shard,
    cfg: FeaturesConfig,
    seed: int | None,
    precision: str,
    device_setting: str = "auto",
) -> int:
    """Encode ``shard`` into the cache being built in ``work_dir``; returns the images encoded
    (0 if the shard was already done). ``split_shards`` are all the shards of its split (they
    fix the split array's shape and this shard's rows). ``precision`` is the one the cache
    records, resolved by the process that builds it (this worker computes in it too), on the
    device ``device_setting`` (``common.device``) gives this worker (``worker_device``)."""
    spec = get_encoder_spec(cfg.encoder)
    writer = _SplitWriter(Path(work_dir), shard.split, split_shards, spec)
    if writer.is_done(shard):
        return 0
    device = worker_device(device_setting)
    model = _worker_encoder(cfg.encoder, cfg.pretrained, cfg.weights_path, seed, device)
    # The worker decodes its JPEGs itself: a Dask worker process is daemonic and may not start
    # DataLoader workers (docs/scaling.md); more Dask workers than GPUs decode in parallel.
    loader = extraction_loader(
        [shard], spec, batch_size=cfg.batch_size, num_workers=0, device=device
    )
    done = False
    for pixels, infos in loader:
        feats = encode_pixels(model, pixels, spec, device, precision=precision)
        done = writer.add(shard, infos, feats)
    if not done:
        raise RuntimeError(f"{shard.url}: read fewer samples than its {len(shard.keys)} keys")
    return len(shard.keys)


def dask_shard_runner(
    cfg: FeaturesConfig,
    seed: int | None,
    *,
    precision: str,
    device: str = "auto",
    address: str = "",
    n_workers: int = 2,
    retries: int = 2,
    shard_fn: ShardFunction = encode_one_shard,
) -> Callable[[Sequence[Shard], dict[str, list[Shard]], Path], int]:
    """A ``run_shards`` for ``extract_features``: one Prefect task per shard on Dask.

    ``precision``: resolved (the cache's); ``device``: ``common.device``, resolved by each
    worker (``worker_device``). ``address`` of a running Dask scheduler (e.g.
    ``tcp://10.0.0.5:8786``), or "" for a LocalCluster of ``n_workers`` single-threaded worker
    processes started for the run.
    """
    from prefect import flow, task
    from prefect_dask import DaskTaskRunner

    if address:
        runner = DaskTaskRunner(address=address)
    else:
        runner = DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                "n_workers": n_workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
                "host": "127.0.0.1",
            },
        )
    encode = task(
        shard_fn,
        name="encode-shard",
        retries=retries,
        retry_delay_seconds=5,
        task_run_name="encode-{shard.name}",
    )

    @flow(name="features-distributed", task_runner=runner, validate_parameters=False)
    def fan_out(pending: list[Shard], plans: dict[str, list[Shard]], work: str) -> int:
        futures = [
            encode.submit(work, plans[s.split], s, cfg, seed, precision, device) for s in pending
        ]
        return sum(future.result() for future in futures)

    def run_shards(pending: Sequence[Shard], plans: dict[str, list[Shard]], work: Path) -> int:
        log.info("features: %d shards on %s", len(pending), address or f"{n_workers} local workers")
        return fan_out(list(pending), plans, str(work))

    return run_shards
