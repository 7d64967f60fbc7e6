"""Benchmarks: each subpackage runs with `python -m bench.<name>` and writes its RESULTS.md."""
