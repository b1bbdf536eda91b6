-- The clients' stamp (see Store.Client).
--   client_stamp  one row (id 1): stamp, a random number that every
--                 change to a row of clients, secrets or grants replaces
--                 in the same transaction, through the triggers below,
--                 whoever makes it: a Store of this release or an earlier
--                 one, another process, an operator's SQL. Store.Client
--                 keeps the clients it read with the stamp they were read
--                 under, and answers from memory while the stamp is the
--                 same. A random stamp, not a counter: a file restored
--                 from a backup cannot show a running server a stamp it
--                 saw with other clients, as a counter could.
-- A later migration that rebuilds clients, secrets or grants (SQLite's way
-- to change a column) drops the table's triggers with it and must create
-- them again: TestClientStampTriggers checks that they are there.
-- Replicas of the previous release keep working during a rolling upgrade:
-- they do not read the new table, and their changes fire the triggers too.

CREATE TABLE IF NOT EXISTS {p}client_stamp (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    stamp INTEGER NOT NULL
);

INSERT OR IGNORE INTO {p}client_stamp (id, stamp) VALUES (1, random());

CREATE TRIGGER IF NOT EXISTS {p}clients_stamp_insert AFTER INSERT ON {p}clients
BEGIN UPDATE {p}client_stamp SET stamp = random() WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS {p}clients_stamp_update AFTER UPDATE ON {p}clients
BEGIN UPDATE {p}client_stamp SET stamp = random() WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS {p}clients_stamp_delete AFTER DELETE ON {p}clients
BEGIN UPDATE {p}client_stamp SET stamp = random() WHERE id = 1; END;

CREATE TRIGGER IF NOT EXISTS {p}secrets_stamp_insert AFTER INSERT ON {p}secrets
BEGIN UPDATE {p}client_stamp SET stamp = random() WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS {p}secrets_stamp_update AFTER UPDATE ON {p}secrets
BEGIN UPDATE {p}client_stamp SET stamp = random() WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS {p}secrets_stamp_delete AFTER DELETE ON {p}secrets
BEGIN UPDATE {p}client_stamp SET stamp = random() WHERE id = 1; END;

CREATE TRIGGER IF NOT EXISTS {p}grants_stamp_insert AFTER INSERT ON {p}grants
BEGIN UPDATE {p}client_stamp SET stamp = random() WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS {p}grants_stamp_update AFTER UPDATE ON {p}grants
BEGIN UPDATE {p}client_stamp SET stamp = random() WHERE id = 1; END;
CREATE TRIGGER IF NOT EXISTS {p}grants_stamp_delete AFTER DELETE ON {p}grants
BEGIN UPDATE {p}client_stamp SET stamp = random() WHERE id = 1; END;
