-- Copies left at providers that the gateway no longer needs, to be deleted there (with
-- retries): inputs of ended batches, outputs the gateway holds, files clients deleted.
CREATE TABLE provider_deletions (
    provider        text NOT NULL,
    upstream_id     text NOT NULL,
    what            text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at double precision NOT NULL,
    last_error      text,
    PRIMARY KEY (provider, upstream_id)
);
CREATE INDEX provider_deletions_due ON provider_deletions (next_attempt_at);
-- A provider output file whose provider copy was queued for deletion (the gateway's copy stays).
ALTER TABLE files ADD COLUMN upstream_released boolean NOT NULL DEFAULT false;
