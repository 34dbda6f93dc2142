ALTER TABLE batches ADD COLUMN webhook text;

CREATE TABLE webhook_deliveries (
    id              bigserial PRIMARY KEY,
    batch_id        text NOT NULL,
    webhook         text NOT NULL,
    event           text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at double precision NOT NULL,
    state           text NOT NULL DEFAULT 'pending',
    last_error      text
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
