"""Feature-cache storage: a .npy memmap with a Parquet index vs a Parquet fixed-shape tensor column.

Same float16 features (N, locations, channels) both ways. Measures writing (in shard-sized
blocks), size on disk, reading a whole split into RAM (what training does), random batches (what
a memmap-backed loader or evaluation of a subset does) and the time to the first row. Prints
the numbers and the ratios.

    python benchmarks/cache_formats.py [--npy data/features/train.npy] [--rows 2000]

Without --npy (or if the file is missing) it uses synthetic ReLU-like features (85% zeros, as
EfficientNet-Lite0's are on the shapes data).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from machine import machine_line

BLOCK = 1000  # rows per shard, as the shard stage writes
GROUP = 100  # Parquet row-group size: smaller groups make random reads cheaper
BATCH = 64


def features(npy: Path | None, rows: int) -> np.ndarray:
    if npy is not None and npy.is_file():
        source = np.load(npy, mmap_mode="r")
        return np.ascontiguousarray(source[:rows])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, 49, 1280), dtype=np.float32) * 2 - 2.1
    return np.clip(x, 0, 6).astype(np.float16)


def timed(fn: Callable[[], object], repeat: int = 3) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def write_npy(x: np.ndarray, path: Path) -> None:
    array = np.lib.format.open_memmap(path, mode="w+", dtype=x.dtype, shape=x.shape)
    for start in range(0, len(x), BLOCK):
        array[start : start + BLOCK] = x[start : start + BLOCK]
        array.flush()
    del array


def write_parquet(x: np.ndarray, path: Path, compression: str) -> None:
    kind = pa.fixed_shape_tensor(pa.float16(), x.shape[1:])
    schema = pa.schema([("features", kind)])
    # Dictionary encoding of 62,720-value rows only costs time (3x slower writes).
    with pq.ParquetWriter(path, schema, compression=compression, use_dictionary=False) as w:
        for start in range(0, len(x), BLOCK):
            block = pa.FixedShapeTensorArray.from_numpy_ndarray(x[start : start + BLOCK])
            w.write_table(pa.table({"features": block}), row_group_size=GROUP)


def read_parquet(path: Path) -> np.ndarray:
    return pq.read_table(path).column("features").combine_chunks().to_numpy_ndarray()


def random_npy(path: Path, batches: list[np.ndarray]) -> None:
    array = np.load(path, mmap_mode="r")
    for rows in batches:
        np.asarray(array[np.sort(rows)])


def random_parquet(path: Path, batches: list[np.ndarray]) -> None:
    file = pq.ParquetFile(path)
    for rows in batches:
        rows = np.sort(rows)
        groups = sorted(set((rows // GROUP).tolist()))
        table = file.read_row_groups(groups, columns=["features"])
        offsets = {g: i * GROUP for i, g in enumerate(groups)}
        local = [offsets[r // GROUP] + r % GROUP for r in rows]
        table.column("features").take(local).combine_chunks().to_numpy_ndarray()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--npy", type=Path, default=Path("data/features/train.npy"))
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()
    x = features(args.npy, args.rows)
    rng = np.random.default_rng(0)
    batches = [
        rng.choice(len(x), size=min(BATCH, len(x)), replace=False) for _ in range(args.batches)
    ]
    print(
        f"{len(x)} rows of {x.shape[1:]} float16 ({x.nbytes / 1e6:.0f} MB), zeros {np.mean(x == 0):.0%}"
    )
    with tempfile.TemporaryDirectory(prefix="cache-formats-") as tmp:
        npy = Path(tmp) / "f.npy"
        results = {}
        t_write, _ = timed(lambda: write_npy(x, npy), 1)
        t_full, loaded = timed(lambda: np.load(npy, mmap_mode="r").copy())
        assert np.array_equal(loaded, x)
        t_rand, _ = timed(lambda: random_npy(npy, batches), 1)
        t_open, _ = timed(lambda: np.asarray(np.load(npy, mmap_mode="r")[0]))
        results["npy memmap"] = (t_write, npy.stat().st_size, t_full, t_rand, t_open)
        for compression in ("none", "zstd"):
            path = Path(tmp) / f"f-{compression}.parquet"
            t_write, _ = timed(lambda p=path, c=compression: write_parquet(x, p, c), 1)
            t_full, loaded = timed(lambda p=path: read_parquet(p), 2)
            assert np.array_equal(loaded, x)
            t_rand, _ = timed(lambda p=path: random_parquet(p, batches), 1)
            t_open, _ = timed(
                lambda p=path: pq.ParquetFile(p).read_row_group(0).column(0)[0].to_numpy()
            )
            results[f"parquet tensor ({compression})"] = (
                t_write,
                path.stat().st_size,
                t_full,
                t_rand,
                t_open,
            )
    print(
        f"{'format':26s} {'write s':>8s} {'MB':>7s} {'load all s':>10s} "
        f"{'random batch ms':>15s} {'first row ms':>12s}"
    )
    for name, (w, size, full, rand, first) in results.items():
        print(
            f"{name:26s} {w:8.2f} {size / 1e6:7.0f} {full:10.3f} "
            f"{rand / len(batches) * 1e3:15.2f} {first * 1e3:12.2f}"
        )
    base = results["npy memmap"]
    print(machine_line())
    for name, (w, size, full, rand, first) in results.items():
        if name == "npy memmap":
            continue
        print(
            f"{name} / npy: write {w / base[0]:.1f}x, size {size / base[1]:.2f}x, "
            f"load all {full / base[2]:.1f}x, random batch {rand / base[3]:.1f}x, "
            f"first row {first / base[4]:.1f}x"
        )


if __name__ == "__main__":
    main()
