from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from PIL import Image

from captioning.config import FeaturesConfig
from captioning.data.images import ImageDecodeError, load_rgb
from captioning.features import cache as cache_module
from captioning.features.cache import (
    FeatureCache,
    FeatureCacheError,
    extract_features,
    scan_shard,
)
from captioning.features.encoders import get_encoder_spec

SPEC = get_encoder_spec("efficientnet_lite0")
SEED = 0
# train: two shards (4 + 3 images), val: one shard (2 images)
LAYOUT = {"train": [4, 3], "val": [2]}


def _jpeg(rng: np.random.Generator, size: tuple[int, int]) -> bytes:
    pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_shards(
    shard_dir: Path, layout: dict[str, list[int]], seed: int = 0, corrupt: str | None = None
) -> dict[str, list[dict]]:
    """Write WebDataset shards + manifest; returns the samples of each split in order."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    manifest: dict = {"splits": {}}
    samples: dict[str, list[dict]] = {}
    image_id = 100
    for split, counts in layout.items():
        names = []
        samples[split] = []
        for shard_no, count in enumerate(counts):
            name = f"{split}-{shard_no:06d}.tar"
            names.append(name)
            with wds.TarWriter(str(shard_dir / name), encoder=False) as sink:
                for _ in range(count):
                    image_id += 7
                    key = f"{image_id:012d}"
                    record = {
                        "image_id": image_id,
                        "file_name": f"{key}.jpg",
                        "split": split,
                        "captions": [f"caption {image_id} a", f"caption {image_id} b"],
                    }
                    if image_id % 2:
                        record["objects"] = [{"shape": "circle", "colour": "red"}]
                    size = (int(rng.integers(40, 260)), int(rng.integers(40, 260)))
                    jpg = b"not a jpeg" if key == corrupt else _jpeg(rng, size)
                    sink.write(
                        {"__key__": key, "jpg": jpg, "json": json.dumps(record).encode("utf-8")}
                    )
                    samples[split].append({"key": key, "jpg": jpg, **record})
        manifest["splits"][split] = {"shards": names, "count": sum(counts)}
    (shard_dir / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return samples


def _cfg(**kw) -> FeaturesConfig:
    base = {"pretrained": False, "batch_size": 4, "num_workers": 0}
    return FeaturesConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("features")
    samples = write_shards(root / "shards", LAYOUT)
    torch.manual_seed(SEED)
    summary = extract_features(root / "shards", root / "cache", _cfg(), torch.device("cpu"))
    return {"root": root, "samples": samples, "summary": summary, "cache": root / "cache"}


def test_summary_and_files(built: dict) -> None:
    summary = built["summary"]
    assert summary["count"] == 9
    assert summary["splits"]["train"]["count"] == 7
    assert summary["splits"]["val"]["count"] == 2
    names = sorted(p.name for p in built["cache"].iterdir())
    assert names == ["meta.json", "train.npy", "train.parquet", "val.npy", "val.parquet"]
    meta = json.loads((built["cache"] / "meta.json").read_text())
    assert meta["encoder"] == "efficientnet_lite0"
    assert (meta["input_size"], meta["grid"], meta["channels"]) == (224, 7, 1280)
    assert meta["pretrained"] is False
    assert meta["dtype"] == "float16"
    assert meta["splits"] == {"train": 7, "val": 2}
    # no temporary siblings left behind
    assert sorted(p.name for p in built["root"].iterdir()) == ["cache", "shards"]


def test_arrays_and_index_rows(built: dict) -> None:
    for split, expected in built["samples"].items():
        cache = FeatureCache.open(built["cache"], split, expect_encoder="efficientnet_lite0")
        assert len(cache) == len(expected)
        assert cache.features.shape == (len(expected), 49, 1280)
        assert cache.features.dtype == np.float16
        assert isinstance(cache.features, np.memmap)
        assert cache.image_ids == [s["image_id"] for s in expected]
        assert cache.keys == [s["key"] for s in expected]
        assert cache.file_names == [s["file_name"] for s in expected]
        assert cache.captions == [s["captions"] for s in expected]
        for row, sample in enumerate(expected):
            extra = {
                k: v
                for k, v in sample.items()
                if k not in {"key", "jpg", "image_id", "file_name", "captions"}
            }
            assert cache.row_meta[row] == extra
            assert cache.row_of(sample["image_id"]) == row
        table = pq.read_table(built["cache"] / f"{split}.parquet")
        assert table.column_names == ["row", "image_id", "key", "file_name", "captions", "meta"]
        assert table.column("row").to_pylist() == list(range(len(expected)))
        captions_type = table.schema.field("captions").type
        assert pa.types.is_list(captions_type) and pa.types.is_string(captions_type.value_type)
        assert table.schema.field("image_id").type == pa.int64()
        assert table.schema.field("row").type == pa.int64()


def test_cached_features_equal_a_direct_forward_pass(built: dict) -> None:
    torch.manual_seed(SEED)
    model = SPEC.build(False)
    for split, expected in built["samples"].items():
        x = torch.stack([SPEC.preprocess(load_rgb(s["jpg"])) for s in expected])
        with torch.no_grad():
            fmap = model(x)
        reference = fmap.permute(0, 2, 3, 1).reshape(len(expected), 49, 1280).numpy()
        cached = FeatureCache.open(built["cache"], split).load_in_memory()
        assert isinstance(cached, np.ndarray) and not isinstance(cached, np.memmap)
        assert np.abs(reference).mean() > 0.1  # not a trivially-zero comparison
        np.testing.assert_allclose(cached.astype(np.float32), reference, rtol=1e-3, atol=1e-4)
        # location order is row-major: location (i, j) is fmap[:, :, i, j]
        np.testing.assert_allclose(
            cached[:, 1 * 7 + 3].astype(np.float32), fmap[:, :, 1, 3].numpy(), rtol=1e-3, atol=1e-4
        )


def test_load_in_memory_as_tensor(built: dict) -> None:
    cache = FeatureCache.open(built["cache"], "val")
    tensor = cache.load_in_memory(as_tensor=True)
    assert isinstance(tensor, torch.Tensor)
    assert tensor.dtype == torch.float16 and tensor.shape == (2, 49, 1280)
    np.testing.assert_array_equal(tensor.numpy(), cache[0:2])


def test_rows_do_not_depend_on_worker_count(built: dict, tmp_path: Path) -> None:
    torch.manual_seed(SEED)
    cfg = _cfg(num_workers=2, batch_size=3)
    extract_features(built["root"] / "shards", tmp_path / "cache", cfg, torch.device("cpu"))
    for split in LAYOUT:
        a = FeatureCache.open(built["cache"], split)
        b = FeatureCache.open(tmp_path / "cache", split)
        assert a.index.equals(b.index)
        np.testing.assert_allclose(
            a.features.astype(np.float32), b.features.astype(np.float32), rtol=2e-3, atol=1e-3
        )


def test_worker_count_is_an_execution_setting(built: dict, tmp_path: Path) -> None:
    # features.num_workers is in config.EXECUTION_SETTINGS: not a DVC param, because the
    # cache is the same bytes with any number of decoding workers (the default encoder here).
    torch.manual_seed(SEED)
    cfg = _cfg(num_workers=2)
    assert cfg.batch_size == _cfg().batch_size and _cfg().num_workers == 0
    extract_features(built["root"] / "shards", tmp_path / "cache", cfg, torch.device("cpu"))
    assert _files(tmp_path / "cache") == _files(built["cache"])


def test_encoder_mismatch_is_refused(built: dict, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    for path in built["cache"].iterdir():
        (cache_dir / path.name).write_bytes(path.read_bytes())
    meta = json.loads((cache_dir / "meta.json").read_text())
    meta["encoder"] = "resnet101"
    (cache_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FeatureCacheError) as excinfo:
        FeatureCache.open(cache_dir, "train", expect_encoder="efficientnet_lite0")
    message = str(excinfo.value)
    assert str(cache_dir / "meta.json") in message
    assert "'resnet101'" in message and "'efficientnet_lite0'" in message

    meta["encoder"], meta["input_size"] = "efficientnet_lite0", 320
    (cache_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FeatureCacheError, match=r"input_size=320.*expected 224"):
        FeatureCache.open(cache_dir, "train", expect_encoder="efficientnet_lite0")
    with pytest.raises(FeatureCacheError, match=r"input_size=320.*expected 224"):
        FeatureCache.open(cache_dir, "train", expect_input_size=224)


def test_open_reports_missing_and_inconsistent_caches(built: dict, tmp_path: Path) -> None:
    with pytest.raises(FeatureCacheError, match="meta.json missing"):
        FeatureCache.open(tmp_path / "nowhere", "train")
    with pytest.raises(FeatureCacheError, match=r"no split 'test'"):
        FeatureCache.open(built["cache"], "test")
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    for path in built["cache"].iterdir():
        (cache_dir / path.name).write_bytes(path.read_bytes())
    meta = json.loads((cache_dir / "meta.json").read_text())
    meta["splits"]["train"] = 8
    (cache_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FeatureCacheError, match="train.npy"):
        FeatureCache.open(cache_dir, "train")
    with pytest.raises(KeyError, match="image_id 5"):
        FeatureCache.open(built["cache"], "val").row_of(5)


def test_failed_run_leaves_the_previous_cache(tmp_path: Path) -> None:
    samples = write_shards(tmp_path / "good", {"val": [2]})
    torch.manual_seed(SEED)
    extract_features(tmp_path / "good", tmp_path / "cache", _cfg(), torch.device("cpu"))
    before = (tmp_path / "cache" / "val.npy").read_bytes()

    bad_key = samples["val"][1]["key"]
    write_shards(tmp_path / "bad", {"val": [2]}, corrupt=bad_key)
    with pytest.raises(ImageDecodeError, match=bad_key):
        extract_features(tmp_path / "bad", tmp_path / "cache", _cfg(), torch.device("cpu"))
    assert (tmp_path / "cache" / "val.npy").read_bytes() == before
    # The unfinished work is kept for a resume, beside the untouched cache.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cache.partial", "bad", "cache", "good"]
    assert (tmp_path / ".cache.partial" / "fingerprint.json").is_file()


def test_manifest_count_must_match_the_shards(tmp_path: Path) -> None:
    write_shards(tmp_path / "shards", {"val": [2]})
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    manifest["splits"]["val"]["count"] = 5
    (tmp_path / "shards" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FeatureCacheError, match="manifest says 5 samples, the shards hold 2"):
        extract_features(tmp_path / "shards", tmp_path / "cache", _cfg(), torch.device("cpu"))
    assert not (tmp_path / "cache").exists()


def test_scan_shard_lists_keys_in_order(tmp_path: Path) -> None:
    samples = write_shards(tmp_path, {"train": [3]})
    assert scan_shard(tmp_path / "train-000000.tar") == tuple(s["key"] for s in samples["train"])


def test_unknown_encoder_in_config(tmp_path: Path) -> None:
    # The config refuses it when it is built (params.yaml: when any stage loads it).
    with pytest.raises(ValueError, match=r"key 'encoder': expected one of \[.*found 'nope'"):
        _cfg(encoder="nope")


class Killed(Exception):
    pass


def _kill_after(count: int):
    done: list[str] = []

    def on_shard(shard) -> None:
        done.append(shard.name)
        if len(done) == count:
            raise Killed(shard.name)

    return on_shard


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def test_killed_run_resumes_to_the_same_bytes(tmp_path: Path) -> None:
    write_shards(tmp_path / "shards", {"train": [3, 2, 3], "val": [2]})
    cfg = _cfg(encoder="small_cnn", batch_size=2)
    cpu = torch.device("cpu")
    extract_features(tmp_path / "shards", tmp_path / "whole", cfg, cpu, seed=SEED)

    with pytest.raises(Killed):
        extract_features(
            tmp_path / "shards", tmp_path / "cache", cfg, cpu, seed=SEED, on_shard=_kill_after(2)
        )
    work = tmp_path / ".cache.partial"
    assert not (tmp_path / "cache").exists()
    assert sorted(p.name for p in (work / "train").iterdir()) == [
        "train-000000.tar.parquet",
        "train-000001.tar.parquet",
    ]
    # Resumed with another worker count: the remaining shards only, same bytes.
    summary = extract_features(
        tmp_path / "shards",
        tmp_path / "cache",
        _cfg(encoder="small_cnn", batch_size=2, num_workers=1),
        cpu,
        seed=SEED,
    )
    assert summary["splits"]["train"]["resumed_shards"] == 2
    assert summary["encoded"] == 3 + 2
    assert not work.exists()
    assert _files(tmp_path / "cache") == _files(tmp_path / "whole")


def test_unfinished_cache_of_another_encoder_is_discarded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_shards(tmp_path / "shards", {"train": [2, 2]})
    cpu = torch.device("cpu")
    with pytest.raises(Killed):
        extract_features(
            tmp_path / "shards",
            tmp_path / "cache",
            _cfg(encoder="small_cnn"),
            cpu,
            seed=SEED,
            on_shard=_kill_after(1),
        )
    with caplog.at_level("INFO", logger="captioning.features.cache"):
        summary = extract_features(tmp_path / "shards", tmp_path / "cache", _cfg(), cpu, seed=SEED)
    assert summary["splits"]["train"]["resumed_shards"] == 0 and summary["encoded"] == 4
    assert "encoder 'small_cnn' -> 'efficientnet_lite0'" in caplog.text
    assert "input_size" not in caplog.text  # both take 224 px
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    assert meta["encoder"] == "efficientnet_lite0" and meta["channels"] == 1280


def test_the_parent_of_the_dask_workers_holds_no_encoder_on_a_gpu(monkeypatch, tmp_path):
    """With the Dask engine the workers encode; the process building the cache only needs the
    encoder's identity, so it builds it on the CPU even when the cache's device is a GPU."""
    write_shards(tmp_path / "shards", {"train": [2]})
    built_on = []
    real = cache_module.load_encoder

    def load_encoder(spec, pretrained, device, **kwargs):
        built_on.append(device)
        return real(spec, pretrained, device, **kwargs)

    def run_shards(pending, plans, work):
        raise StopIteration  # the workers' part is not under test

    monkeypatch.setattr(cache_module, "load_encoder", load_encoder)
    cfg = FeaturesConfig(encoder="small_cnn", pretrained=False, num_workers=0)
    gpu = torch.device("cuda", 0)
    with pytest.raises(StopIteration):
        extract_features(
            tmp_path / "shards", tmp_path / "out", cfg, gpu, precision="fp32", run_shards=run_shards
        )
    assert built_on == [torch.device("cpu")]
