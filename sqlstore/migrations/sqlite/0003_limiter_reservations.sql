-- Reservations of the failed-authentication limiter (see Limiter).
-- Every attempt takes a token when it is reserved, before the secret is
-- verified, and gives it back when the client authenticates.
--   pending           reservations in flight (both kinds of row)
--   pending_addr      of those, the ones that also took a token from the
--                     address's row (rows of a client id only)
--   lease_until       until when pending and pending_addr count; a
--                     replica that dies mid-request leaves counts that
--                     lapse then (unix microseconds)
--   authenticated_at  when the client last authenticated from the
--                     address, 0 for never (rows of a client id only)
--   idle_at           from when the row means no more than no row: its
--                     bucket is full, nothing is in flight and the client
--                     is no longer known; cleanup deletes by it.
-- Rows written by earlier releases are idle once refilled. The index on
-- refilled_at, which cleanups no longer use, is dropped. During a rolling
-- upgrade, replicas of the previous release keep working on the table:
-- they read and write refilled_at only, and their cleanups (slower
-- without the index) delete rows whose bucket has refilled, which only
-- forgets reservations in flight and known clients, so that less is
-- given back, never more. The migration runs in one transaction, so it
-- applies whole or not at all.

ALTER TABLE {p}rate_limits ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;
ALTER TABLE {p}rate_limits ADD COLUMN pending_addr INTEGER NOT NULL DEFAULT 0;
ALTER TABLE {p}rate_limits ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0;
ALTER TABLE {p}rate_limits ADD COLUMN authenticated_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE {p}rate_limits ADD COLUMN idle_at INTEGER NOT NULL DEFAULT 0;

UPDATE {p}rate_limits SET idle_at = refilled_at WHERE idle_at < refilled_at;

CREATE INDEX IF NOT EXISTS {p}rate_limits_idle_idx ON {p}rate_limits (idle_at);

DROP INDEX IF EXISTS {p}rate_limits_refilled_idx;
