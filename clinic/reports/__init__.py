"""Documents made from predictions: the cohort HTML report, prediction tables and FHIR resources."""
