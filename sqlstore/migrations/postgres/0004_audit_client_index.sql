-- The index through which Store.Usage and Store.AuditEvents read one
-- client's audit events: (client_id, event_time, id) replaces the
-- (client_id, event_time) of 0001, so that the newest events of a client
-- come straight off the index, in the order AuditEvents returns them
-- (event_time, then id), without a sort.
--
-- The migration runs in a transaction, and CREATE INDEX blocks inserts
-- into the table while it builds, so the Auditor holds events (and a
-- token handler with RequireAudit refuses requests) until it is done. On
-- a large audit table, build the index beforehand with
--   CREATE INDEX CONCURRENTLY <prefix>audit_events_client_time_idx
--       ON <prefix>audit_events (client_id, event_time, id);
-- and check that it is valid: this migration then finds it and only drops
-- the index it replaces.

CREATE INDEX IF NOT EXISTS {p}audit_events_client_time_idx ON {p}audit_events (client_id, event_time, id);

DROP INDEX IF EXISTS {p}audit_events_client_idx;
