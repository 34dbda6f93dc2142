-- Each gateway process registers itself and keeps a heartbeat: a pending create
-- belongs to the process running it (batches.owner), and only creates whose owner
-- is gone are settled by reconciliation. Pending rows from before this migration
-- have no known owner: 'legacy' names none, so they count as interrupted.
CREATE TABLE instances (
    id           text PRIMARY KEY,
    host         text NOT NULL,
    boot_id      text NOT NULL,
    pid          integer NOT NULL,
    started      text NOT NULL,
    heartbeat_at double precision NOT NULL
);
-- NULL: the create was handed to the gateway to settle (the client holds the id).
ALTER TABLE batches ADD COLUMN owner text;
ALTER TABLE batches ADD COLUMN settle_attempts integer NOT NULL DEFAULT 0;
UPDATE batches SET owner = 'legacy' WHERE pending;
