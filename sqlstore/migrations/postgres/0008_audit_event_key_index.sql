-- The unique index on the audit events' keys of 0007, which the
-- Auditor's insert names (ON CONFLICT (event_key) ... DO NOTHING). Rows
-- without a key are left out of it.
--
-- The migration runs in a transaction, and CREATE INDEX blocks inserts
-- into the table (not reads) while it reads it, so the Auditor holds
-- events until it is done. On a large audit table, build the index
-- beforehand with
--   ALTER TABLE <prefix>audit_events ADD COLUMN IF NOT EXISTS event_key BYTEA;
--   CREATE UNIQUE INDEX CONCURRENTLY <prefix>audit_events_key_idx
--       ON <prefix>audit_events (event_key) WHERE event_key IS NOT NULL;
-- and check that it is valid: 0007 and this version then find both.

CREATE UNIQUE INDEX IF NOT EXISTS {p}audit_events_key_idx ON {p}audit_events (event_key) WHERE event_key IS NOT NULL;
