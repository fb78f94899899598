"""Benchmark scripts; each is run as `python benchmarks/NAME.py` and writes benchmarks/results/."""
