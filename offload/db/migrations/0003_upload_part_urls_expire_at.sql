-- When the last part URLs handed out for a multipart upload expire (the latest of every
-- signing: creation, each POST /uploads/{id}/parts, pushed forward by a complete as well). The
-- reconciler aborts a pending multipart upload only once this lies OFFLOAD_EXPIRED_UPLOAD_GRACE_S
-- in the past: a client resuming with fresh URLs, or completing, moves it forward and keeps its
-- upload.
-- Nullable, no default: single uploads have no part URLs, and multipart uploads created before
-- this migration have no record of their last signing; the reconciler leaves those to the
-- bucket's lifecycle rule (storage.abortIncompleteMultipartAfterDays). Catalog-only change (no
-- table rewrite, no scan). IF NOT EXISTS: safe to run twice.
ALTER TABLE uploads ADD COLUMN IF NOT EXISTS part_urls_expire_at timestamptz;
