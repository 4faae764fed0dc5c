"""Input schemas, readers and the ingest into versions."""
