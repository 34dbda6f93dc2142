-- Sharded batches. A client batch whose route shards is a parent row (provider shard)
-- that never reaches a provider itself, and its children are ordinary batch rows (created
-- exactly once, polled, kept and accounted like any other) that point at it, hidden
-- from the tenant lists.
ALTER TABLE batches ADD COLUMN parent_id TEXT;
CREATE INDEX batches_parent ON batches (parent_id) WHERE parent_id IS NOT NULL;

-- The place of each child in its parent. attempt 1: a slice of the parent input, in position
-- order. attempt 2 and later: a heal, re-running the failed lines of the child named in
-- heals (unique, so two processes can never heal one child twice). examined: the child
-- ended and its failed lines were looked at (healed, or left as they are).
CREATE TABLE shards (
    child_id  TEXT PRIMARY KEY,
    parent_id TEXT NOT NULL,
    position  INTEGER NOT NULL,
    attempt   INTEGER NOT NULL,
    heals     TEXT UNIQUE,
    lines     INTEGER NOT NULL,
    examined  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX shards_parent ON shards (parent_id, position, attempt);
