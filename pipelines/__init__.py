"""Batch pipelines that compose ``clinic``: thin, typed, on the local engine or on Ray."""
