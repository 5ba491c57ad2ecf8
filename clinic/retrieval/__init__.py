"""Similar-case retrieval: embeddings per case and modality, indexes, and the search service."""
