"""Ingestion: from an input to a version of a dataset.

- ``schemas``: the common fine-tuning schemas mapped to chat messages (``FieldMap``,
  ``RowError``, the quarantine reason of a bad row);
- ``readers``: input files and Hub datasets as streamed raw rows, and the one row-to-sample
  builder (``sample_from_row``);
- ``ingest``: the ingest itself (``ingest()``): rows staged in the store in batches, the
  version written in one transaction, every row counted (accepted, duplicate, quarantined).

The members sit on different layers (docs/architecture.md): schemas and readers below the
store, ingest above it. This file runs whenever any of them is imported, so it imports
nothing; import from the submodules.
"""
