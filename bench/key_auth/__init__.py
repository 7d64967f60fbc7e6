"""Benchmark of `tenants.services.key_authenticate`: warm and cold latency."""
