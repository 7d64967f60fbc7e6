"""Writes of billing data; each module holds one area (ingestion, rollups, plans, invoices, ...)."""
