-- Clients, their secrets and grants, and the audit trail.
-- Times are unix microseconds (BIGINT). Ids and audiences are VARBINARY so
-- that they compare byte by byte: case-sensitive, and without the PAD SPACE
-- rule of utf8mb4_bin that would make 'a' and 'a ' the same id.

CREATE TABLE IF NOT EXISTS {p}clients (
    id           VARBINARY(255) NOT NULL,
    public       BOOLEAN NOT NULL DEFAULT FALSE,
    disabled     BOOLEAN NOT NULL DEFAULT FALSE,
    token_ttl_ns BIGINT NOT NULL DEFAULT 0,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS {p}secrets (
    client_id  VARBINARY(255) NOT NULL,
    secret_id  VARBINARY(255) NOT NULL,
    seq        BIGINT NOT NULL,
    hash       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NULL,
    PRIMARY KEY (client_id, secret_id),
    UNIQUE (client_id, seq),
    FOREIGN KEY (client_id) REFERENCES {p}clients (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS {p}grants (
    client_id VARBINARY(255) NOT NULL,
    audience  VARBINARY(255) NOT NULL,
    scopes    TEXT NOT NULL,
    PRIMARY KEY (client_id, audience),
    FOREIGN KEY (client_id) REFERENCES {p}clients (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS {p}audit_events (
    id         BIGINT NOT NULL AUTO_INCREMENT,
    event_time BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    client_id  TEXT NOT NULL,
    remote_ip  TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    audience   TEXT NOT NULL,
    scope      TEXT NOT NULL,
    jti        TEXT NOT NULL,
    secret_id  TEXT NOT NULL,
    error_code TEXT NOT NULL,
    reason     TEXT NOT NULL,
    PRIMARY KEY (id),
    INDEX {p}audit_events_time_idx (event_time),
    INDEX {p}audit_events_client_idx (client_id(191), event_time)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
