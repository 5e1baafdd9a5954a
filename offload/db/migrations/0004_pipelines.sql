-- Pipelines (issue 14): an upload runs a flow of steps and ends in a final state of its own.
--
-- uploads.state gains the two final states of a processed upload: 'processed' (every step and
-- the finalize step succeeded; result_key names its result.json) and 'failed' (a step failed
-- for good: failed_step names it, error holds its reason). Widening a CHECK: every existing
-- row satisfies the new one; the ADD scans the table once under the ALTER's lock.
ALTER TABLE uploads DROP CONSTRAINT IF EXISTS uploads_state_check;
ALTER TABLE uploads ADD CONSTRAINT uploads_state_check
    CHECK (state IN ('pending', 'uploaded', 'queued', 'rejected', 'aborted',
                     'processed', 'failed'));
-- The caller's tier (Cognito group) when the upload was created: the enqueue path only sees
-- the object's key, and an upload keeps the priority it was granted. NULL for rows from before
-- this migration (treated as 'standard').
ALTER TABLE uploads ADD COLUMN IF NOT EXISTS tier text;
-- The content type sniffed from the object's first bytes by the enqueue path: which pipeline
-- the upload runs is decided by this, never by what the client announced.
ALTER TABLE uploads ADD COLUMN IF NOT EXISTS detected_type text;
ALTER TABLE uploads ADD COLUMN IF NOT EXISTS failed_step text;
ALTER TABLE uploads ADD COLUMN IF NOT EXISTS result_key text;
ALTER TABLE uploads ADD COLUMN IF NOT EXISTS finished_at timestamptz;
-- The uploads a retention sweep may delete: final ones, oldest first.
CREATE INDEX IF NOT EXISTS uploads_final_finished ON uploads (finished_at)
    WHERE state IN ('processed', 'failed', 'rejected', 'aborted');

-- A step's flow parent (the finalize job of its upload's pipeline); NULL for a parent, for
-- jobs from before this migration and for jobs outside pipelines.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS parent_id text;
CREATE INDEX IF NOT EXISTS jobs_parent ON jobs (parent_id) WHERE parent_id IS NOT NULL;
