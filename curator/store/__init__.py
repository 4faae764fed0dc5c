"""The DuckDB store: schema and migrations, one writer, short transactions, and the SQL of
the layers above (data sets, selections and their pools, the trash, ingested files, the
app's read-only queries in the ``browse_*`` modules: ``browse_overview``,
``browse_versions``, ``browse_selections``, ``browse_scores``, ``browse_masks``, with the
filters they share in ``browse_filters``)."""

from curator.store.datasets import Diff, VersionInfo
from curator.store.db import DB_FILENAME, Store, default_store_path
from curator.store.errors import NotFound, SchemaTooNew, StoreError, StoreLocked

__all__ = ["DB_FILENAME", "Diff", "NotFound", "SchemaTooNew", "Store", "StoreError",
           "StoreLocked", "VersionInfo", "default_store_path"]
