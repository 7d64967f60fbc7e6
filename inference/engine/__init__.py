"""Engines behind one interface: `torch` (continuous batching over transformers) and `vllm`."""
