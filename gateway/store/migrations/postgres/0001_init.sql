-- The same schema as sqlite/0001_init.sql in PostgreSQL's types: bigserial keyset
-- cursors, jsonb for the stored objects, boolean flags.
CREATE TABLE files (
    seq          bigserial PRIMARY KEY,
    id           text NOT NULL UNIQUE,
    tenant       text NOT NULL,
    purpose      text NOT NULL,
    filename     text NOT NULL,
    bytes        bigint NOT NULL,
    created_at   bigint NOT NULL,
    expires_at   bigint,
    sha256       text,
    line_count   integer,
    endpoint     text,
    models       jsonb NOT NULL DEFAULT '[]',
    blob         text,
    provider     text,
    upstream_id  text,
    batch_id     text
);
CREATE INDEX files_tenant_seq ON files (tenant, seq);
CREATE UNIQUE INDEX files_upstream ON files (provider, upstream_id) WHERE upstream_id IS NOT NULL;

CREATE TABLE upstream_files (
    file_id      text NOT NULL,
    provider     text NOT NULL,
    upstream_id  text NOT NULL,
    PRIMARY KEY (file_id, provider)
);

CREATE TABLE batches (
    seq           bigserial PRIMARY KEY,
    id            text NOT NULL UNIQUE,
    tenant        text NOT NULL,
    provider      text NOT NULL,
    upstream_id   text,
    input_file_id text NOT NULL,
    status        text NOT NULL,
    pending       boolean NOT NULL,
    output_ttl    bigint,
    created_at    bigint NOT NULL,
    object        jsonb NOT NULL
);
CREATE INDEX batches_tenant_seq ON batches (tenant, seq);
CREATE INDEX batches_active ON batches (status)
    WHERE status NOT IN ('completed', 'failed', 'expired', 'cancelled');
