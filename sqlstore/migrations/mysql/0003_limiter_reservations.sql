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
-- given back, never more.
--
-- MySQL has no ADD COLUMN IF NOT EXISTS (MariaDB has), and commits each
-- DDL statement on its own. So the columns and indexes change in one
-- ALTER TABLE, which applies whole or not at all, and only when the
-- table lacks idle_at: run again after a failure, the migration finds
-- the work done and skips it. Migrate runs every statement on one
-- connection, which keeps the session variable.

SET @m2mauth_ddl = (SELECT IF(COUNT(*) = 0,
    'ALTER TABLE {p}rate_limits
        ADD COLUMN pending          INT NOT NULL DEFAULT 0,
        ADD COLUMN pending_addr     INT NOT NULL DEFAULT 0,
        ADD COLUMN lease_until      BIGINT NOT NULL DEFAULT 0,
        ADD COLUMN authenticated_at BIGINT NOT NULL DEFAULT 0,
        ADD COLUMN idle_at          BIGINT NOT NULL DEFAULT 0,
        ADD INDEX {p}rate_limits_idle_idx (idle_at),
        DROP INDEX {p}rate_limits_refilled_idx',
    'DO 0')
    FROM information_schema.columns
    WHERE table_schema = DATABASE() AND table_name = '{p}rate_limits' AND column_name = 'idle_at');

PREPARE m2mauth_ddl FROM @m2mauth_ddl;
EXECUTE m2mauth_ddl;
DEALLOCATE PREPARE m2mauth_ddl;

UPDATE {p}rate_limits SET idle_at = refilled_at WHERE idle_at < refilled_at;
