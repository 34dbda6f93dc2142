-- Usage and cost, counted exactly once per batch. accounted_at is set in the transaction
-- that writes the batch's usage rows, and only where it is still NULL: whichever process
-- (a retrieve, the poller, another replica) gets there first writes them, the others write
-- nothing. Batches that ended before this migration are taken as accounted (0).
ALTER TABLE batches ADD COLUMN accounted_at double precision;
UPDATE batches SET accounted_at = 0 WHERE status IN ('completed', 'failed', 'expired', 'cancelled');
CREATE INDEX batches_to_account ON batches (seq)
    WHERE accounted_at IS NULL AND status IN ('completed', 'failed', 'expired', 'cancelled');

-- One row per batch and model. price is the price used (JSON), so a later price change
-- never rewrites history, and cost_usd is NULL when the model's price is not known.
CREATE TABLE usage_rows (
    batch_id          text NOT NULL,
    model             text NOT NULL,
    tenant            text NOT NULL,
    provider          text NOT NULL,
    endpoint          text NOT NULL,
    accounted_at      bigint NOT NULL,
    lines_succeeded   bigint NOT NULL,
    lines_failed      bigint NOT NULL,
    prompt_tokens     bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    total_tokens      bigint NOT NULL,
    cached_tokens     bigint NOT NULL,
    reasoning_tokens  bigint NOT NULL,
    cost_usd          double precision,
    price             text,
    PRIMARY KEY (batch_id, model)
);
CREATE INDEX usage_rows_time ON usage_rows (accounted_at);
CREATE INDEX usage_rows_tenant_time ON usage_rows (tenant, accounted_at);

-- Spend a running batch is estimated to commit (from its input), counted against its key's
-- budget until its real usage is written (the estimate is deleted in that transaction).
CREATE TABLE usage_estimates (
    batch_id   text PRIMARY KEY,
    tenant     text NOT NULL,
    cost_usd   double precision NOT NULL,
    created_at double precision NOT NULL
);
CREATE INDEX usage_estimates_tenant ON usage_estimates (tenant);
