-- Leases let several pollers share active batches: a poller claims a batch until
-- lease_until and hands it back with its next_poll_at (seconds since the epoch).
ALTER TABLE batches ADD COLUMN lease_owner TEXT;
ALTER TABLE batches ADD COLUMN lease_until REAL;
ALTER TABLE batches ADD COLUMN next_poll_at REAL NOT NULL DEFAULT 0;
CREATE INDEX batches_due ON batches (next_poll_at)
    WHERE status NOT IN ('completed', 'failed', 'expired', 'cancelled');

-- Fixed-window counters (per-key rate limits).
CREATE TABLE rate_windows (
    key          TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    hits         INTEGER NOT NULL,
    PRIMARY KEY (key, window_start)
);
CREATE INDEX rate_windows_start ON rate_windows (window_start);
