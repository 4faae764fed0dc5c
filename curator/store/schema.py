"""Store schema as ordered migrations. A new table or column is a new migration at the end;
applied migrations are never edited (stores in the field already ran them)."""

from __future__ import annotations

# (number, name, SQL). Numbers are applied in order and recorded in schema_version.
MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "foundation", """
CREATE TABLE datasets (
    name TEXT PRIMARY KEY,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
CREATE TABLE versions (
    dataset TEXT NOT NULL,
    version INTEGER NOT NULL,
    parent INTEGER,
    mode TEXT NOT NULL,            -- 'snapshot' or 'append'
    source TEXT NOT NULL,
    message TEXT,
    n_read INTEGER NOT NULL,       -- rows read from the input
    n_accepted INTEGER NOT NULL,   -- distinct usable rows in the input
    n_duplicates INTEGER NOT NULL, -- rows repeating an earlier row of the same input
    n_quarantined INTEGER NOT NULL,
    n_added INTEGER NOT NULL,      -- members not in the parent version
    n_removed INTEGER NOT NULL,    -- parent members not in this version
    n_unchanged INTEGER NOT NULL,
    n_members INTEGER NOT NULL,
    run_id TEXT,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dataset, version)
);
-- Content-addressed: one row per distinct conversation, shared by versions and datasets.
CREATE TABLE samples (
    sample_id TEXT PRIMARY KEY,
    messages JSON NOT NULL,
    prompt TEXT NOT NULL,
    response TEXT NOT NULL,
    n_chars INTEGER NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
-- Metadata lives on membership: the same sample may carry other metadata in another source.
CREATE TABLE version_members (
    dataset TEXT NOT NULL,
    version INTEGER NOT NULL,
    sample_id TEXT NOT NULL,
    metadata JSON,
    source_file TEXT,
    source_line INTEGER,
    PRIMARY KEY (dataset, version, sample_id)
);
-- Rows of an ingest that has not finished yet; moved into version_members at the end.
CREATE TABLE ingest_staging (
    run_id TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    metadata JSON,
    source_file TEXT,
    source_line INTEGER,
    PRIMARY KEY (run_id, sample_id)
);
CREATE TABLE quarantine (
    run_id TEXT NOT NULL,
    dataset TEXT NOT NULL,
    version INTEGER,               -- NULL until the ingest that found it finishes
    source_file TEXT,
    line INTEGER,
    reason TEXT NOT NULL,
    raw TEXT
);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    dataset TEXT,
    status TEXT NOT NULL,          -- running, done, failed
    done BIGINT NOT NULL DEFAULT 0,
    total BIGINT,
    config JSON,
    result JSON,
    error TEXT,
    pid INTEGER,
    started_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    updated_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    finished_at TIMESTAMP
);
CREATE TABLE models (
    fingerprint TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    info JSON,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
"""),
]

LATEST = MIGRATIONS[-1][0]
