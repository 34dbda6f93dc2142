-- Idempotency-Key answers of POST /v1/batches and POST /v1/files, one row per tenant
-- and key. While the request runs, status is NULL and owner holds the key until
-- locked_until (renewed as it runs, so a dead process frees it). Once answered, the
-- row keeps the request's fingerprint and the answer until pruned (created_at).
CREATE TABLE idempotency_keys (
    tenant       TEXT NOT NULL,
    key          TEXT NOT NULL,
    operation    TEXT NOT NULL,
    owner        TEXT,
    locked_until REAL,
    fingerprint  TEXT,
    status       INTEGER,
    body         BLOB,
    created_at   REAL NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
