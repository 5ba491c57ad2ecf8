"""Errors of the training layer, importable without torch (the CLI catches them)."""

from __future__ import annotations


class ModelNotFoundError(LookupError):
    """No model of that name under the models folder."""
