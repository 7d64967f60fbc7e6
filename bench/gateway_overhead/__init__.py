"""Gateway overhead benchmark: `python -m bench.gateway_overhead` (see RESULTS.md)."""
