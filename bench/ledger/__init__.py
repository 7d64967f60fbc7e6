"""Ledger benchmarks: journal ingestion rate and a month's billing run (`python -m bench.ledger`)."""
