"""clinic.evaluation."""
