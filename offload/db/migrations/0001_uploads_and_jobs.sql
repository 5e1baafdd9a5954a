-- Uploads: one row per upload the API handed out URLs for. The row exists before the object.
CREATE TABLE uploads (
    id                  text PRIMARY KEY,
    owner               text NOT NULL,
    bucket              text NOT NULL,
    key                 text NOT NULL UNIQUE,
    filename            text NOT NULL,
    content_type        text,
    size_announced      bigint CHECK (size_announced >= 0),
    size_actual         bigint CHECK (size_actual >= 0),
    etag                text,
    version_id          text,
    multipart_upload_id text,
    state               text NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'uploaded', 'queued', 'rejected', 'aborted')),
    error               text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX uploads_owner_created ON uploads (owner, created_at DESC, id);
CREATE INDEX uploads_state_updated ON uploads (state, updated_at);

-- Jobs: one row per queue job id (deterministic), whatever the number of attempts.
-- No foreign key to uploads: a job may be enqueued for an object before (or without) its
-- upload row, and losing the status of such a job would be worse than a dangling id.
CREATE TABLE jobs (
    id            text PRIMARY KEY,
    name          text NOT NULL,
    queue         text NOT NULL,
    upload_id     text,
    owner         text,
    bucket        text NOT NULL,
    key           text NOT NULL,
    revision      text,
    state         text NOT NULL
                  CHECK (state IN ('queued', 'active', 'retrying', 'completed', 'failed')),
    attempt       integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts  integer,
    progress      jsonb,
    result        jsonb,
    error_message text,
    error_stack   text,
    worker_id     text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_owner_created ON jobs (owner, created_at DESC, id);
CREATE INDEX jobs_upload ON jobs (upload_id);
CREATE INDEX jobs_state_updated ON jobs (state, updated_at);

-- Every state transition, append-only: what happened to a job, attempt by attempt.
CREATE TABLE job_events (
    id        bigserial PRIMARY KEY,
    job_id    text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt   integer NOT NULL,
    state     text NOT NULL,
    worker_id text,
    message   text,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_events_job ON job_events (job_id, id);
