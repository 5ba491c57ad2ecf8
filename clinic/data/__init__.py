"""clinic.data."""
