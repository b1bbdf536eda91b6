-- Failed-authentication limits shared by every replica (see Limiter).
-- One row per bucket: (ip, client_id) for a client id from an address,
-- (ip, '') for the address itself. refilled_at is the instant, in unix
-- microseconds, from which the bucket is full again; a row whose
-- refilled_at has passed means no more than no row, and cleanup deletes
-- it through the index on refilled_at. Keys are VARBINARY, compared byte
-- by byte like the client ids of 0001; address keys ("192.0.2.1",
-- "2001:db8::/64") are at most 64 bytes.

CREATE TABLE IF NOT EXISTS {p}rate_limits (
    ip          VARBINARY(64) NOT NULL,
    client_id   VARBINARY(255) NOT NULL,
    refilled_at BIGINT NOT NULL,
    PRIMARY KEY (ip, client_id),
    INDEX {p}rate_limits_refilled_idx (refilled_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
