"""The store: SQL rows for metadata, content-addressed files for blobs."""
