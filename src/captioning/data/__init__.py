"""Datasets: sources, downloads, the internal layout, WebDataset shards, the vocabulary."""
