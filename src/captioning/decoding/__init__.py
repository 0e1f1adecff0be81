"""Searches over a decoder (greedy, sampling, beam) and the bounds on a request."""
