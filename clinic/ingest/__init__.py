"""Readers and the ingestion engine: files in, validated de-identified rows and blobs out."""
