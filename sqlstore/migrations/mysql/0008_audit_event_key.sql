-- Each audit row carries the key its Auditor gave the event, unique, so
-- that writing an event again inserts nothing: after a commit whose
-- answer was lost (a connection or the database failing), a commit still
-- going on when the Auditor stopped waiting for it, or a spill file
-- written again whole by the next process after a crash. Rows written
-- before this version, and by replicas of an earlier release during a
-- rolling upgrade, have none (NULL), which a unique index allows any
-- number of times.
--
-- InnoDB adds the column at the end of the row without copying the
-- table, and builds the index online: inserts go on meanwhile. Each
-- change is made only when it is still to do (see 0004).

SET @m2mauth_ddl = (SELECT IF(COUNT(*) = 0,
    'ALTER TABLE {p}audit_events ADD COLUMN event_key BINARY(16) NULL',
    'DO 0')
    FROM information_schema.columns
    WHERE table_schema = DATABASE() AND table_name = '{p}audit_events'
      AND column_name = 'event_key');

PREPARE m2mauth_ddl FROM @m2mauth_ddl;
EXECUTE m2mauth_ddl;
DEALLOCATE PREPARE m2mauth_ddl;

SET @m2mauth_ddl = (SELECT IF(COUNT(*) = 0,
    'ALTER TABLE {p}audit_events ADD UNIQUE INDEX {p}audit_events_key_idx (event_key)',
    'DO 0')
    FROM information_schema.statistics
    WHERE table_schema = DATABASE() AND table_name = '{p}audit_events'
      AND index_name = '{p}audit_events_key_idx');

PREPARE m2mauth_ddl FROM @m2mauth_ddl;
EXECUTE m2mauth_ddl;
DEALLOCATE PREPARE m2mauth_ddl;
