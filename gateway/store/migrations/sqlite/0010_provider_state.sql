-- What an adapter must remember about a batch or file (a provider job name, a custom_id map,
-- the blob keys of the results it wrote), one JSON object per key, so that no adapter keeps
-- files on local disk and any replica can serve any batch. `active`: work a process must
-- carry on (an emulated run), listed again after a restart.
CREATE TABLE provider_state (
    provider   TEXT NOT NULL,
    key        TEXT NOT NULL,
    state      TEXT NOT NULL,
    active     INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL,
    PRIMARY KEY (provider, key)
);
CREATE INDEX provider_state_active ON provider_state (provider) WHERE active = 1;
