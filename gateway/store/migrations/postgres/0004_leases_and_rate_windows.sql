-- Leases let several replicas share the polling of active batches: a replica
-- claims a batch until lease_until and hands it back with its next_poll_at.
ALTER TABLE batches ADD COLUMN lease_owner text;
ALTER TABLE batches ADD COLUMN lease_until double precision;
ALTER TABLE batches ADD COLUMN next_poll_at double precision NOT NULL DEFAULT 0;
CREATE INDEX batches_due ON batches (next_poll_at)
    WHERE status NOT IN ('completed', 'failed', 'expired', 'cancelled');

-- Fixed-window counters shared by every replica (per-key rate limits).
CREATE TABLE rate_windows (
    key          text NOT NULL,
    window_start bigint NOT NULL,
    hits         integer NOT NULL,
    PRIMARY KEY (key, window_start)
);
CREATE INDEX rate_windows_start ON rate_windows (window_start);
