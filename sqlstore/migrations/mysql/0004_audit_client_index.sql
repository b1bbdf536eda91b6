-- The index through which Store.Usage and Store.AuditEvents read one
-- client's audit events: (client_id(191), event_time, id) replaces the
-- (client_id(191), event_time) of 0001. InnoDB appends the primary key to
-- every secondary index, but the optimizer does not order by it in an
-- index with a column prefix (MariaDB 10.11 sorts instead), so without id
-- named the newest events of a client, in the order AuditEvents returns
-- them (event_time, then id), would need a sort of all the client's
-- events since the time asked. InnoDB builds the index online: inserts
-- into the table go on meanwhile.
--
-- MySQL has no CREATE INDEX IF NOT EXISTS (MariaDB has) and commits each
-- DDL statement on its own. So each change is made only when it is still
-- to do: run again after a failure, the migration finds the work done and
-- skips it. Migrate runs every statement on one connection, which keeps
-- the session variable.

SET @m2mauth_ddl = (SELECT IF(COUNT(*) = 0,
    'ALTER TABLE {p}audit_events ADD INDEX {p}audit_events_client_time_idx (client_id(191), event_time, id)',
    'DO 0')
    FROM information_schema.statistics
    WHERE table_schema = DATABASE() AND table_name = '{p}audit_events'
      AND index_name = '{p}audit_events_client_time_idx');

PREPARE m2mauth_ddl FROM @m2mauth_ddl;
EXECUTE m2mauth_ddl;
DEALLOCATE PREPARE m2mauth_ddl;

SET @m2mauth_ddl = (SELECT IF(COUNT(*) = 0,
    'DO 0',
    'ALTER TABLE {p}audit_events DROP INDEX {p}audit_events_client_idx')
    FROM information_schema.statistics
    WHERE table_schema = DATABASE() AND table_name = '{p}audit_events'
      AND index_name = '{p}audit_events_client_idx');

PREPARE m2mauth_ddl FROM @m2mauth_ddl;
EXECUTE m2mauth_ddl;
DEALLOCATE PREPARE m2mauth_ddl;
