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
    kid          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    generation   BIGINT NOT NULL UNIQUE,
    algorithm    TEXT COLLATE "C" NOT NULL,
    sealed       BYTEA NOT NULL,
    published_at BIGINT NOT NULL,
    active_at    BIGINT NOT NULL,
    revoked_at   BIGINT
);

CREATE TABLE IF NOT EXISTS {p}key_events (
    kid        TEXT COLLATE "C" NOT NULL,
    event_type TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (kid, event_type)
);
