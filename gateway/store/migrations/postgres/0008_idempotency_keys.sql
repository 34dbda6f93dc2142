-- Idempotency-Key answers of POST /v1/batches and POST /v1/files, one row per tenant
-- and key. While the request runs, status is NULL and owner holds the key until
-- locked_until (renewed as it runs, so a dead process frees it). Once answered, the
-- row keeps the request's fingerprint and the answer until pruned (created_at).
CREATE TABLE idempotency_keys (
    tenant       text NOT NULL,
    key          text NOT NULL,
    operation    text NOT NULL,
    owner        text,
    locked_until double precision,
    fingerprint  text,
    status       integer,
    body         bytea,
    created_at   double precision NOT NULL,
    PRIMARY KEY (tenant, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
