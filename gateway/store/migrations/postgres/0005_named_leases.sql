-- Named leases: the one replica holding "housekeeping" reconciles interrupted
-- creates, delivers webhooks and sweeps expired files, so each runs once.
CREATE TABLE leases (
    name  text PRIMARY KEY,
    owner text NOT NULL,
    until double precision NOT NULL
);
CREATE INDEX batches_provider_due ON batches (provider, next_poll_at)
    WHERE status NOT IN ('completed', 'failed', 'expired', 'cancelled');
