-- Each audit row carries the key its Auditor gave the event, unique, so
-- that writing an event again inserts nothing: after a commit whose
-- answer was lost (a connection or the database failing), a commit still
-- going on when the Auditor stopped waiting for it, or a spill file
-- written again whole by the next process after a crash. Rows written
-- before this version, and by replicas of an earlier release during a
-- rolling upgrade, have none (NULL), which a unique index allows any
-- number of times.
--
-- The column and its index come in one statement, so that no insert
-- sees the one without the other (a key written twice meanwhile would
-- make the index impossible to build). InnoDB builds them online,
-- rebuilding the table: inserts go on meanwhile, those of this release
-- failing (and held by the Auditor) until it is done. Each change is
-- made only when it is still to do (see 0004); a column found without
-- its index (a schema changed by hand) has its duplicate keys removed,
-- the first row of each kept, before the index is built.

SET @m2mauth_ddl = (SELECT IF(COUNT(*) = 0,
    'ALTER TABLE {p}audit_events ADD COLUMN event_key BINARY(16) NULL, ADD UNIQUE INDEX {p}audit_events_key_idx (event_key)',
    'DO 0')
    FROM information_schema.columns
    WHERE table_schema = DATABASE() AND table_name = '{p}audit_events'
      AND column_name = 'event_key');

PREPARE m2mauth_ddl FROM @m2mauth_ddl;
EXECUTE m2mauth_ddl;
DEALLOCATE PREPARE m2mauth_ddl;

SET @m2mauth_ddl = (SELECT IF(COUNT(*) = 0,
    'DELETE a FROM {p}audit_events a JOIN (SELECT event_key, MIN(id) AS id FROM {p}audit_events WHERE event_key IS NOT NULL GROUP BY event_key HAVING COUNT(*) > 1) d ON a.event_key = d.event_key AND a.id > d.id',
    'DO 0')
    FROM information_schema.statistics
    WHERE table_schema = DATABASE() AND table_name = '{p}audit_events'
      AND index_name = '{p}audit_events_key_idx');

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
