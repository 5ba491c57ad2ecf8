"""The clinician review workflow as services: worklist, case view, reviews, admin views."""
