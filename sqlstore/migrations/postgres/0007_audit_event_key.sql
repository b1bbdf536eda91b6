-- Each audit row carries the key its Auditor gave the event, unique, so
-- that writing an event again inserts nothing: after a commit whose
-- answer was lost (a connection or the database failing), a commit still
-- going on when the Auditor stopped waiting for it, or a spill file
-- written again whole by the next process after a crash. Rows written
-- before this version, and by replicas of an earlier release during a
-- rolling upgrade, have none (NULL); the index leaves them out.
--
-- Adding the column changes only the catalog. The migration runs in a
-- transaction, and CREATE INDEX blocks inserts into the table while it
-- reads it (it finds no key to index), so the Auditor holds events
-- until it is done. On a large audit table, build the index beforehand
-- with
--   ALTER TABLE <prefix>audit_events ADD COLUMN IF NOT EXISTS event_key BYTEA;
--   CREATE UNIQUE INDEX CONCURRENTLY <prefix>audit_events_key_idx
--       ON <prefix>audit_events (event_key) WHERE event_key IS NOT NULL;
-- and check that it is valid: this migration then finds both.

ALTER TABLE {p}audit_events ADD COLUMN IF NOT EXISTS event_key BYTEA;

CREATE UNIQUE INDEX IF NOT EXISTS {p}audit_events_key_idx ON {p}audit_events (event_key) WHERE event_key IS NOT NULL;
