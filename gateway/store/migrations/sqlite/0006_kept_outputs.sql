-- Provider output files the gateway has no copy of yet (blob IS NULL): the keeper
-- pages through those of the providers whose files are remote, by id.
CREATE INDEX files_to_keep ON files (provider, id) WHERE blob IS NULL AND upstream_id IS NOT NULL;
