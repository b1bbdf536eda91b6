-- Failed-authentication limits shared by every replica (see Limiter).
-- One row per bucket: (ip, client_id) for a client id from an address,
-- (ip, '') for the address itself. refilled_at is the instant, in unix
-- microseconds, from which the bucket is full again; a row whose
-- refilled_at has passed means no more than no row, and cleanup deletes
-- it through the index on refilled_at.

CREATE TABLE IF NOT EXISTS {p}rate_limits (
    ip          TEXT COLLATE "C" NOT NULL,
    client_id   TEXT COLLATE "C" NOT NULL,
    refilled_at BIGINT NOT NULL,
    PRIMARY KEY (ip, client_id)
);

CREATE INDEX IF NOT EXISTS {p}rate_limits_refilled_idx ON {p}rate_limits (refilled_at);
