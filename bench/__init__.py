"""Benchmarks of the gateway against a fast upstream simulator: `python -m bench`."""
