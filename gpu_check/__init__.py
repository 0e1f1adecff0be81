"""``make gpu-check``: the project's CUDA paths checked on a GPU in about five minutes, into one
report (docs/gpu-check.md). Not part of the library: no stage imports it, so it is no DVC
dependency and editing it re-runs nothing."""
