"""Inference-plane benchmarks: `python -m bench.inference` runs all; each module runs alone too."""
