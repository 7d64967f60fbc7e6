"""billing_run over many tenants and a large ledger: `python -m bench.billing`."""
