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
-- they neither read nor write the new tables. Kids are VARBINARY, compared
-- byte by byte, as client ids are. Each statement may run again after a
-- failure.

CREATE TABLE IF NOT EXISTS {p}signing_keys (
    kid          VARBINARY(255) NOT NULL,
    generation   BIGINT NOT NULL,
    algorithm    VARBINARY(32) NOT NULL,
    sealed       LONGBLOB NOT NULL,
    published_at BIGINT NOT NULL,
    active_at    BIGINT NOT NULL,
    revoked_at   BIGINT NULL,
    PRIMARY KEY (kid),
    UNIQUE KEY {p}signing_keys_generation_key (generation)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS {p}key_events (
    kid        VARBINARY(255) NOT NULL,
    event_type VARBINARY(64) NOT NULL,
    PRIMARY KEY (kid, event_type)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
