"""Batch pipelines that compose ``clinic``: thin, typed, runnable locally (Ray comes later)."""
