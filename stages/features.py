"""DVC stage `features`: cache encoder feature maps (float16) per split."""

import argparse

from captioning import runtime

runtime.setup()

from captioning.config import load_params  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--shards", required=True)
    parser.add_argument("--out", required=True, help="feature cache directory")
    args = parser.parse_args()
    params = load_params(args.params)
    if params.features.num_workers > 0 and params.features.engine == "local":
        # The decoding workers' process imports torch & co. while this one does the same.
        runtime.start_forkserver(["captioning.features.loader"])
    from captioning.devices import choose_device, resolve_precision
    from captioning.features.cache import extract_features

    cfg, seed = params.features, params.common.seed
    device = choose_device(params.common.device)
    precision = resolve_precision(params.common.precision, device)
    run_shards = None
    if cfg.engine == "dask":
        from captioning.features.distributed import dask_shard_runner

        run_shards = dask_shard_runner(
            cfg,
            seed,
            precision=precision,
            device=params.common.device,
            address=cfg.dask_address,
            n_workers=cfg.dask_workers,
        )
    # The seed only matters for pretrained: false (random weights, rebuilt from it at predict).
    extract_features(
        args.shards, args.out, cfg, device, seed=seed, precision=precision, run_shards=run_shards
    )


if __name__ == "__main__":
    runtime.run(main)
