"""Audited predictions: calibrated findings, uncertainty, contributions, explanations, lineage."""
