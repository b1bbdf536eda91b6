-- Managed signing keys (see Store.AddSigningKey and m2mauth.ManagedKeys).
--   signing_keys  one row per key: kid (primary key), generation (unique:
--                 of replicas racing to publish generation n, one row
--                 wins), algorithm, sealed (the key material encrypted by
--                 a KeySealer, never the key itself), published_at,
--                 active_at and revoked_at (NULL until revoked), in unix
--                 microseconds.
--   key_events    the audit events of a key's life, one row per (kid,
--                 event_type), claimed by the first replica to see each;
--                 deleted with the key.
-- Replicas of the previous release keep working during a rolling upgrade:
-- they neither read nor write the new tables.

CREATE TABLE IF NOT EXISTS {p}signing_keys (
    kid          TEXT NOT NULL PRIMARY KEY,
    generation   INTEGER NOT NULL UNIQUE,
    algorithm    TEXT NOT NULL,
    sealed       BLOB NOT NULL,
    published_at INTEGER NOT NULL,
    active_at    INTEGER NOT NULL,
    revoked_at   INTEGER
);

CREATE TABLE IF NOT EXISTS {p}key_events (
    kid        TEXT NOT NULL,
    event_type TEXT NOT NULL,
    PRIMARY KEY (kid, event_type)
);
