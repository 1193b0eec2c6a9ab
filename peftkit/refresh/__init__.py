"""Refreshing adapters from new rows behind a no-regression gate (issue 33)."""
