-- Each audit row carries the key its Auditor gave the event, unique, so
-- that writing an event again inserts nothing: after a commit whose
-- answer was lost, or a spill file written again whole by the next
-- process after a crash. Rows written before this version, and by
-- replicas of an earlier release during a rolling upgrade, have none
-- (NULL); the index leaves them out.
--
-- SQLite has no ADD COLUMN IF NOT EXISTS; the migration runs in a
-- transaction, so it is applied whole or not at all.

ALTER TABLE {p}audit_events ADD COLUMN event_key BLOB;

CREATE UNIQUE INDEX IF NOT EXISTS {p}audit_events_key_idx ON {p}audit_events (event_key) WHERE event_key IS NOT NULL;
