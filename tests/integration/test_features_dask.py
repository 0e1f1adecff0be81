"""Feature extraction fanned out on a 2-worker local Dask cluster through Prefect: the same
cache as the single-process path, and a lost worker's shard is redone."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from prefect.testing.utilities import prefect_test_harness
from tests.unit.features.test_cache import _cfg, write_shards

from captioning.features.cache import extract_features
from captioning.features.distributed import dask_shard_runner, encode_one_shard

# The workers are other processes: send this module's crashing shard function by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

LAYOUT = {"train": [4, 3, 2], "val": [2]}


@pytest.fixture(scope="module", autouse=True)
def prefect_api():
    with prefect_test_harness(server_startup_timeout=60):
        yield


def crash_worker_once(work_dir, split_shards, shard, cfg, seed, precision, device):
    """Kill the worker process the first time it is given train shard 1 (a lost node)."""
    marker = Path(work_dir).parent / f"crashed-{shard.name}"
    if shard.name == "train-000001.tar" and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return encode_one_shard(work_dir, split_shards, shard, cfg, seed, precision, device)


def assert_same_cache(a: Path, b: Path) -> None:
    for split in LAYOUT:
        np.testing.assert_array_equal(np.load(a / f"{split}.npy"), np.load(b / f"{split}.npy"))
        assert pq.read_table(a / f"{split}.parquet").equals(pq.read_table(b / f"{split}.parquet"))
    assert (a / "meta.json").read_text() == (b / "meta.json").read_text()


@pytest.fixture(scope="module")
def single_process_cache(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dask-features")
    write_shards(root / "shards", LAYOUT)
    # Dask workers run their encoder on one thread (OMP_NUM_THREADS=1); float reductions split
    # over another thread count differ in the last bit, so the reference uses one thread too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        extract_features(root / "shards", root / "local", _cfg(), seed=0)
    finally:
        torch.set_num_threads(threads)
    return root / "shards", root / "local"


def test_two_dask_workers_build_the_same_cache(single_process_cache, tmp_path):
    shards, local = single_process_cache
    runner = dask_shard_runner(_cfg(), 0, precision="fp32", n_workers=2)
    summary = extract_features(shards, tmp_path / "dask", _cfg(), seed=0, run_shards=runner)
    assert summary["encoded"] == sum(map(sum, LAYOUT.values()))
    assert_same_cache(local, tmp_path / "dask")


def test_a_lost_worker_s_shard_is_redone(single_process_cache, tmp_path):
    shards, local = single_process_cache
    runner = dask_shard_runner(_cfg(), 0, precision="fp32", n_workers=2, shard_fn=crash_worker_once)
    extract_features(shards, tmp_path / "dask", _cfg(), seed=0, run_shards=runner)
    assert (tmp_path / "crashed-train-000001.tar").is_file()  # the worker did die
    assert_same_cache(local, tmp_path / "dask")
