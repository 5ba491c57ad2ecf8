"""clinic.models."""
