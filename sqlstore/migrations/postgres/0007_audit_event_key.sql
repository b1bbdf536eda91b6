-- Each audit row carries the key its Auditor gave the event, unique (see
-- 0008), so that writing an event again inserts nothing: after a commit
-- whose answer was lost (a connection or the database failing), a commit
-- still going on when the Auditor stopped waiting for it, or a spill file
-- written again whole by the next process after a crash. Rows written
-- before this version, and by replicas of an earlier release during a
-- rolling upgrade, have none (NULL).
--
-- Adding a column without a default changes only the catalog, but takes
-- a lock that blocks every use of the table until the transaction ends:
-- this version is its own transaction, so that the lock is not held
-- while 0008 builds the index.

ALTER TABLE {p}audit_events ADD COLUMN IF NOT EXISTS event_key BYTEA;
