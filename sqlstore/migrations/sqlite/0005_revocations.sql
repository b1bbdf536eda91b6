-- Token revocation (see Store.RevokeToken and Store.RevocationsSince).
--   clients.can_introspect     the client may introspect any token (RFC 7662)
--   clients.tokens_revoked_at  the client's watermark as of its last
--                              revocation (unix microseconds), NULL for none
--   revocations                what validators must refuse, one row per
--                              client watermark (kind 'client', id the
--                              client id, at the watermark) and per revoked
--                              token (kind 'token', id its jti, at its
--                              expiry); expires_at is when the row can no
--                              longer revoke a valid token, after which
--                              pruning deletes it through the index on it.
--                              A watermark outlives its client's row.
--   revocation_state           one row (id 1): the store-wide watermark,
--                              NULL for none, and the version, which every
--                              change to the revocations increments in its
--                              own transaction.
-- Replicas of the previous release keep working during a rolling upgrade:
-- they neither read nor write the new columns and tables. The migration
-- runs in one transaction, so it applies whole or not at all.

ALTER TABLE {p}clients ADD COLUMN can_introspect INTEGER NOT NULL DEFAULT 0;
ALTER TABLE {p}clients ADD COLUMN tokens_revoked_at INTEGER;

CREATE TABLE IF NOT EXISTS {p}revocations (
    kind       TEXT NOT NULL,
    id         TEXT NOT NULL,
    at         INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
);

CREATE INDEX IF NOT EXISTS {p}revocations_expires_idx ON {p}revocations (expires_at);

CREATE TABLE IF NOT EXISTS {p}revocation_state (
    id                INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    version           INTEGER NOT NULL,
    tokens_revoked_at INTEGER
);

INSERT INTO {p}revocation_state (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
