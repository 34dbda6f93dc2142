-- Named leases: the one replica holding "housekeeping" reconciles interrupted
-- creates, delivers webhooks and sweeps expired files, so each runs once.
CREATE TABLE leases (
    name  TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until REAL NOT NULL
);
CREATE INDEX batches_provider_due ON batches (provider, next_poll_at)
    WHERE status NOT IN ('completed', 'failed', 'expired', 'cancelled');
