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
    (2, "scores", """
-- Every score is keyed by (model fingerprint, config hash): a new model or setting never
-- reads another's numbers, and a rerun computes only what is missing.
CREATE TABLE embeddings (
    embedder TEXT NOT NULL,        -- embedder fingerprint (model + pooling + max length)
    sample_id TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,          -- float32 little-endian; read back with numpy.frombuffer
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (embedder, sample_id)
);
-- d(i): the target's distance with no in-context example.
CREATE TABLE losses (
    model TEXT NOT NULL,
    config TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    distance DOUBLE,
    n_tokens INTEGER,
    valid BOOLEAN NOT NULL,
    reason TEXT,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (model, config, sample_id)
);
-- Sparse pairwise utilities UF(target, example) = d(target) - d(target | example).
CREATE TABLE utilities (
    model TEXT NOT NULL,
    config TEXT NOT NULL,
    target_id TEXT NOT NULL,
    example_id TEXT NOT NULL,
    utility DOUBLE,                -- NULL when invalid
    d_target DOUBLE,
    d_given DOUBLE,
    valid BOOLEAN NOT NULL,
    reason TEXT,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (model, config, target_id, example_id)
);
-- Gradient scores per sample; layer '' is the whole scope (DualSFT), others are GAST layers.
CREATE TABLE gradient_scores (
    model TEXT NOT NULL,
    config TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    layer TEXT NOT NULL DEFAULT '',
    score DOUBLE NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (model, config, sample_id, layer)
);
"""),
    (3, "selections", """
CREATE TABLE selections (
    selection_id TEXT PRIMARY KEY,
    dataset TEXT NOT NULL,
    version INTEGER NOT NULL,
    stage TEXT NOT NULL,           -- instruction, task, continual
    method TEXT NOT NULL,          -- delift, embedding, random, rds, dualsft, gast, ...
    function TEXT,                 -- facility_location, flmi, flvmi, flcg, graph_cut, top_k
    budget TEXT NOT NULL,          -- as given: '30%', '100', 'tokens:50000'
    n_pool INTEGER NOT NULL,
    n_selected INTEGER NOT NULL,
    objective DOUBLE,
    model TEXT,                    -- model fingerprint, NULL for model-free methods
    config JSON,
    parent TEXT,                   -- the selection this one is conditioned on (continual)
    target TEXT,                   -- 'dataset:version' of the target set (task stage)
    run_id TEXT,
    seconds DOUBLE,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
-- layer '' holds the subset; GAST adds one member list per layer.
CREATE TABLE selection_members (
    selection_id TEXT NOT NULL,
    layer TEXT NOT NULL DEFAULT '',
    sample_id TEXT NOT NULL,
    rank INTEGER NOT NULL,         -- pick order, from 0
    gain DOUBLE,                   -- marginal gain when picked
    score DOUBLE,                  -- a per-sample score where the method has one
    PRIMARY KEY (selection_id, layer, sample_id)
);
CREATE TABLE masks (
    selection_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    path TEXT NOT NULL,            -- relative to the store's artifacts folder
    sha256 TEXT NOT NULL,
    density DOUBLE NOT NULL,
    n_params BIGINT NOT NULL,
    n_kept BIGINT NOT NULL,
    info JSON,                     -- density per tensor, layer and module kind
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
CREATE TABLE exports (
    export_id TEXT PRIMARY KEY,
    selection_id TEXT NOT NULL,
    format TEXT NOT NULL,
    path TEXT NOT NULL,
    manifest_sha256 TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
"""),
    (4, "schedules", """
CREATE TABLE schedules (
    name TEXT PRIMARY KEY,
    dataset TEXT NOT NULL,
    watch_dir TEXT NOT NULL,
    every_seconds BIGINT,
    cron TEXT,
    recipe JSON,
    paused BOOLEAN NOT NULL DEFAULT false,
    next_run_at TIMESTAMP,
    last_run_id TEXT,
    last_selection_id TEXT,
    lock_owner TEXT,
    lock_expires_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
-- Files already taken from a watched folder, by content, so a renamed copy is not re-ingested.
CREATE TABLE ingested_files (
    dataset TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    path TEXT NOT NULL,
    version INTEGER,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dataset, sha256)
);
"""),
    (5, "schedule state", """
-- Retry bookkeeping and the newest good export of a schedule (runs live in `runs`, kind
-- 'schedule', with the schedule's name in config.schedule).
ALTER TABLE schedules ADD COLUMN failures INTEGER DEFAULT 0;
ALTER TABLE schedules ADD COLUMN last_error TEXT;
ALTER TABLE schedules ADD COLUMN last_export TEXT;
-- Files in a watched folder that could not be ingested, by content: not retried until the
-- file changes; reported in the run that found them.
CREATE TABLE quarantined_files (
    dataset TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    path TEXT NOT NULL,
    reason TEXT NOT NULL,
    schedule TEXT,
    run_id TEXT,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dataset, sha256)
);
-- What a watched file hashed to, so an unchanged file (same size and mtime) is not read
-- again on every run; only a cache: files are still told apart by checksum.
CREATE TABLE watched_files (
    schedule TEXT NOT NULL,
    path TEXT NOT NULL,
    size BIGINT NOT NULL,
    mtime_ns BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (schedule, path)
);
"""),
    (6, "ingest tables without in-memory indexes", """
-- DuckDB keeps a PRIMARY KEY as an ART index held in memory by every insert into the table,
-- so the keys below made an ingest's memory grow with the rows stored (about 200 bytes per
-- key).
-- The same tables without the keys; uniqueness is kept by the only writer, ingest
-- (curator/ingestion/ingest.py): samples and staging rows are inserted only where their
-- id is absent, and a version's members come from its deduplicated staging rows plus parent
-- members not among them, in the transaction that writes the version's row (versions keeps
-- its key).
-- DuckDB cannot drop a constraint, so each table is copied and replaced.
CREATE TABLE samples_v6 (
    sample_id TEXT NOT NULL,
    messages JSON NOT NULL,
    prompt TEXT NOT NULL,
    response TEXT NOT NULL,
    n_chars INTEGER NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
INSERT INTO samples_v6 SELECT sample_id, messages, prompt, response, n_chars, created_at
    FROM samples;
DROP TABLE samples;
ALTER TABLE samples_v6 RENAME TO samples;
CREATE TABLE version_members_v6 (
    dataset TEXT NOT NULL,
    version INTEGER NOT NULL,
    sample_id TEXT NOT NULL,
    metadata JSON,
    source_file TEXT,
    source_line INTEGER
);
INSERT INTO version_members_v6 SELECT dataset, version, sample_id, metadata, source_file,
    source_line FROM version_members;
DROP TABLE version_members;
ALTER TABLE version_members_v6 RENAME TO version_members;
CREATE TABLE ingest_staging_v6 (
    run_id TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    metadata JSON,
    source_file TEXT,
    source_line INTEGER
);
INSERT INTO ingest_staging_v6 SELECT run_id, sample_id, metadata, source_file, source_line
    FROM ingest_staging;
DROP TABLE ingest_staging;
ALTER TABLE ingest_staging_v6 RENAME TO ingest_staging;
"""),
    (7, "trash", """
-- Samples a person set aside while browsing (a wrong answer, a leak): later selections of
-- the dataset leave them out of their pools until they are restored. Per dataset, for all
-- its versions; the samples themselves stay in the store.
CREATE TABLE trash (
    dataset TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    reason TEXT,
    trashed_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dataset, sample_id)
);
"""),
    (8, "selection pools", """
-- The candidates a selection was chosen from (after the trash and, for the continual stage,
-- what the parent had seen), written in the selection's own transaction, so the app, the
-- demo and a re-selection read one definition instead of rebuilding it. No key: like the
-- ingest tables (migration 6), an index would be held in memory by every insert, and rows
-- are written once per selection by the only writer, save_selection.
CREATE TABLE selection_pools (
    selection_id TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    position INTEGER NOT NULL      -- index in the pool the ranker saw
);
"""),
    (9, "runs know their process", """
-- The host and the process start time beside the pid, so the next command on this host can
-- tell a run whose process died (kill -9) from a live one, even after the pid is reused
-- (curator/store/recovery.py).
ALTER TABLE runs ADD COLUMN host TEXT;
ALTER TABLE runs ADD COLUMN proc_start TEXT;
"""),
    (10, "quality prior", """
-- The quality prior's per-row signals (curator/scoring/quality.py): the answer tokens' mean
-- NLL given the prompt (loss) and after an empty user turn (uncond_loss, so IFD =
-- loss / uncond_loss), and the end-of-turn token's NLL after the answer (stop_nll).
CREATE TABLE quality (
    model TEXT NOT NULL,
    config TEXT NOT NULL,
    sample_id TEXT NOT NULL,
    loss DOUBLE,
    uncond_loss DOUBLE,
    stop_nll DOUBLE,
    n_answer INTEGER,
    valid BOOLEAN NOT NULL,
    reason TEXT,
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (model, config, sample_id)
);
"""),
]

LATEST = MIGRATIONS[-1][0]
