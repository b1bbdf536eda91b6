-- Audit events name their client byte for byte, as the clients table
-- does (VARBINARY): a TEXT column under utf8mb4_bin ignores trailing
-- spaces when it compares ('a' = 'a '), so Usage, UsageAll and
-- AuditEvents of client "a" took in the events of client "a ", and an id
-- of spaces was left out of UsageAll as if empty. client_id becomes a
-- BLOB, which keeps the prefix index of 0004. The change copies the
-- table; run again after a failure, it finds the column binary already
-- and skips it (see 0004 for why the change is made this way).

SET @m2mauth_ddl = (SELECT IF(COUNT(*) = 0,
    'DO 0',
    'ALTER TABLE {p}audit_events MODIFY client_id BLOB NOT NULL')
    FROM information_schema.columns
    WHERE table_schema = DATABASE() AND table_name = '{p}audit_events'
      AND column_name = 'client_id' AND data_type <> 'blob');

PREPARE m2mauth_ddl FROM @m2mauth_ddl;
EXECUTE m2mauth_ddl;
DEALLOCATE PREPARE m2mauth_ddl;
