"""clinic.train."""
