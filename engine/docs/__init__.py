"""Documents: extraction, chunking, the SQLite index, search and the default embedding model."""
