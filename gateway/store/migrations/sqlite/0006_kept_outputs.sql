-- Provider output files the gateway has no copy of yet (blob IS NULL): the keeper
-- pages through them by id.
CREATE INDEX files_to_keep ON files (id) WHERE blob IS NULL AND upstream_id IS NOT NULL;
