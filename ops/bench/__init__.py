"""Benchmarks: ``python -m ops.bench.throughput`` (see README.md in this folder)."""
