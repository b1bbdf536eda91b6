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
-- they neither read nor write the new columns and tables.
--
-- MySQL has no ADD COLUMN IF NOT EXISTS (MariaDB has), and commits each
-- DDL statement on its own. So the columns are added by one ALTER TABLE,
-- which applies whole or not at all, only when the table lacks them, and
-- every other statement may run again: after a failure, the migration
-- finds the work done and skips it. Migrate runs every statement on one
-- connection, which keeps the session variable.

SET @m2mauth_ddl = (SELECT IF(COUNT(*) = 0,
    'ALTER TABLE {p}clients
        ADD COLUMN can_introspect    BOOLEAN NOT NULL DEFAULT FALSE,
        ADD COLUMN tokens_revoked_at BIGINT NULL',
    'DO 0')
    FROM information_schema.columns
    WHERE table_schema = DATABASE() AND table_name = '{p}clients' AND column_name = 'tokens_revoked_at');

PREPARE m2mauth_ddl FROM @m2mauth_ddl;
EXECUTE m2mauth_ddl;
DEALLOCATE PREPARE m2mauth_ddl;

CREATE TABLE IF NOT EXISTS {p}revocations (
    kind       VARBINARY(8) NOT NULL,
    id         VARBINARY(255) NOT NULL,
    at         BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (kind, id),
    INDEX {p}revocations_expires_idx (expires_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS {p}revocation_state (
    id                SMALLINT NOT NULL,
    version           BIGINT NOT NULL,
    tokens_revoked_at BIGINT NULL,
    PRIMARY KEY (id),
    CHECK (id = 1)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

INSERT INTO {p}revocation_state (id, version) VALUES (1, 0) ON DUPLICATE KEY UPDATE id = id;
