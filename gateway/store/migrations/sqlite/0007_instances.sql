-- Each gateway process registers itself and keeps a heartbeat: a pending create
-- belongs to the process running it (batches.owner), and only creates whose owner
-- is gone are settled by reconciliation. Pending rows from before this migration
-- have no known owner: 'legacy' names none, so they count as interrupted.
CREATE TABLE instances (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    boot_id      TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started      TEXT NOT NULL,
    heartbeat_at REAL NOT NULL
);
-- NULL: the create was handed to the gateway to settle (the client holds the id).
ALTER TABLE batches ADD COLUMN owner TEXT;
ALTER TABLE batches ADD COLUMN settle_attempts INTEGER NOT NULL DEFAULT 0;
UPDATE batches SET owner = 'legacy' WHERE pending;
