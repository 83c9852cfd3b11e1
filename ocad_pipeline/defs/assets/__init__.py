"""Dagster software-defined assets, one module per asset group."""
