CREATE INDEX files_expires ON files (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX batches_input_file ON batches (input_file_id);
CREATE INDEX batches_tenant_active ON batches (tenant)
    WHERE status NOT IN ('completed', 'failed', 'expired', 'cancelled')
