-- A multipart upload's part size, chosen when the upload is created (OFFLOAD_PART_SIZE_MIB is
-- its minimum) and stored so that every later request plans the upload's parts from it: a
-- change of the setting never breaks an upload in flight.
-- Nullable: single uploads have no parts, and multipart uploads created before this migration
-- have no stored size; the API plans those with the rule they were created under (the
-- smallest whole MiB, at least 5 MiB, that needs at most 10,000 parts).
-- A nullable column without a default changes only the catalog (no table rewrite); the CHECK
-- costs one scan of the table under the ALTER's lock. IF NOT EXISTS: a column added by hand
-- before this migration ran is left alone.
ALTER TABLE uploads ADD COLUMN IF NOT EXISTS part_size bigint
    CONSTRAINT uploads_part_size_check
    CHECK (part_size >= 5242880 AND part_size <= 5368709120 AND part_size % 1048576 = 0);
