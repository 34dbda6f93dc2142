CREATE TABLE files (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    tenant       TEXT NOT NULL,
    purpose      TEXT NOT NULL,
    filename     TEXT NOT NULL,
    bytes        INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    sha256       TEXT,
    line_count   INTEGER,
    endpoint     TEXT,
    models       TEXT NOT NULL DEFAULT '[]',
    blob         TEXT,
    provider     TEXT,
    upstream_id  TEXT,
    batch_id     TEXT
);
CREATE INDEX files_tenant_seq ON files (tenant, seq);
CREATE UNIQUE INDEX files_upstream ON files (provider, upstream_id) WHERE upstream_id IS NOT NULL;

CREATE TABLE upstream_files (
    file_id      TEXT NOT NULL,
    provider     TEXT NOT NULL,
    upstream_id  TEXT NOT NULL,
    PRIMARY KEY (file_id, provider)
);

CREATE TABLE batches (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT NOT NULL UNIQUE,
    tenant        TEXT NOT NULL,
    provider      TEXT NOT NULL,
    upstream_id   TEXT,
    input_file_id TEXT NOT NULL,
    status        TEXT NOT NULL,
    pending       INTEGER NOT NULL,
    output_ttl    INTEGER,
    created_at    INTEGER NOT NULL,
    object        TEXT NOT NULL
);
CREATE INDEX batches_tenant_seq ON batches (tenant, seq);
CREATE INDEX batches_active ON batches (status)
    WHERE status NOT IN ('completed', 'failed', 'expired', 'cancelled');
