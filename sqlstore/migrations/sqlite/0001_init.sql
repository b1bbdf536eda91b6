-- Clients, their secrets and grants, and the audit trail.
-- Times are unix microseconds (INTEGER); TEXT compares byte by byte (BINARY).

CREATE TABLE IF NOT EXISTS {p}clients (
    id           TEXT NOT NULL PRIMARY KEY,
    public       INTEGER NOT NULL DEFAULT 0,
    disabled     INTEGER NOT NULL DEFAULT 0,
    token_ttl_ns INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS {p}secrets (
    client_id  TEXT NOT NULL REFERENCES {p}clients (id) ON DELETE CASCADE,
    secret_id  TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    hash       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    PRIMARY KEY (client_id, secret_id),
    UNIQUE (client_id, seq)
);

CREATE TABLE IF NOT EXISTS {p}grants (
    client_id TEXT NOT NULL REFERENCES {p}clients (id) ON DELETE CASCADE,
    audience  TEXT NOT NULL,
    scopes    TEXT NOT NULL,
    PRIMARY KEY (client_id, audience)
);

CREATE TABLE IF NOT EXISTS {p}audit_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_time INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    client_id  TEXT NOT NULL,
    remote_ip  TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    audience   TEXT NOT NULL,
    scope      TEXT NOT NULL,
    jti        TEXT NOT NULL,
    secret_id  TEXT NOT NULL,
    error_code TEXT NOT NULL,
    reason     TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS {p}audit_events_time_idx ON {p}audit_events (event_time);

CREATE INDEX IF NOT EXISTS {p}audit_events_client_idx ON {p}audit_events (client_id, event_time);
