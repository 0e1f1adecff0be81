"""Training a decoder: one epoch loop over a batch source and an objective (loop.py)."""
