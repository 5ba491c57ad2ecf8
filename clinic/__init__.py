"""clinic: a multimodal diagnostics platform (X-ray, ECG, clinical record, report)."""

__version__ = "0.1.0"
