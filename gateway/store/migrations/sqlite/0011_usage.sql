-- Usage and cost, counted exactly once per batch. accounted_at is set in the transaction
-- that writes the batch's usage rows, and only where it is still NULL: whichever process
-- (a retrieve, the poller, another replica) gets there first writes them, the others write
-- nothing. Batches that ended before this migration are taken as accounted (0).
ALTER TABLE batches ADD COLUMN accounted_at REAL;
UPDATE batches SET accounted_at = 0 WHERE status IN ('completed', 'failed', 'expired', 'cancelled');
CREATE INDEX batches_to_account ON batches (seq)
    WHERE accounted_at IS NULL AND status IN ('completed', 'failed', 'expired', 'cancelled');

-- One row per batch and model. price is the price used (JSON), so a later price change
-- never rewrites history, and cost_usd is NULL when the model's price is not known.
CREATE TABLE usage_rows (
    batch_id          TEXT NOT NULL,
    model             TEXT NOT NULL,
    tenant            TEXT NOT NULL,
    provider          TEXT NOT NULL,
    endpoint          TEXT NOT NULL,
    accounted_at      INTEGER NOT NULL,
    lines_succeeded   INTEGER NOT NULL,
    lines_failed      INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    total_tokens      INTEGER NOT NULL,
    cached_tokens     INTEGER NOT NULL,
    reasoning_tokens  INTEGER NOT NULL,
    cost_usd          REAL,
    price             TEXT,
    PRIMARY KEY (batch_id, model)
);
CREATE INDEX usage_rows_time ON usage_rows (accounted_at);
CREATE INDEX usage_rows_tenant_time ON usage_rows (tenant, accounted_at);

-- Spend a running batch is estimated to commit (from its input), counted against its key's
-- budget until its real usage is written (the estimate is deleted in that transaction).
CREATE TABLE usage_estimates (
    batch_id   TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    cost_usd   REAL NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX usage_estimates_tenant ON usage_estimates (tenant);
