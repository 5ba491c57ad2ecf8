"""clinic.benchmarks."""
