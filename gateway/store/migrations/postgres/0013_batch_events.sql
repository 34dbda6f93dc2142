-- What happened to a batch, for operators (the admin API), oldest first by seq.
-- kind status: the batch took the status in status (written with the row change itself).
-- kind attempt: a create at provider, with outcome created, found, failed or unknown
-- and the error in detail.
-- kind routed: the routing rule in detail chose provider.
CREATE TABLE batch_events (
    seq      bigserial PRIMARY KEY,
    batch_id text NOT NULL,
    at       bigint NOT NULL,
    kind     text NOT NULL,
    status   text,
    provider text,
    outcome  text,
    detail   text
);
CREATE INDEX batch_events_batch ON batch_events (batch_id, seq);
