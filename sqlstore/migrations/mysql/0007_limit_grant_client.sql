-- limit_grant_client: the Limiter's fast path that grants an attempt of a
-- client known at the address, and the lookup of that client, in one
-- round trip (see Limiter). MySQL and MariaDB have no statement that
-- updates a row and returns rows, so a procedure runs the two: the UPDATE
-- of limitFastGrant, then the kind-3 row counting the rows it changed and
-- the client's rows as Store.Client reads them. Each statement is the
-- Limiter's own text with its parameters named (TestGrantClientProcedure
-- holds them to it): p_now, p_every, p_full (now + burst * every),
-- p_known (the known window), p_lease (now + lease), p_since (now - the
-- known window), p_slack (now + slack), p_burst, p_ip and p_client.
-- A server without the procedure, or whose database user may not execute
-- it, sends the two statements instead. Replicas of the previous release
-- do not call it.

DROP PROCEDURE IF EXISTS {p}limit_grant_client;

CREATE PROCEDURE {p}limit_grant_client(
    IN p_now BIGINT, IN p_every BIGINT, IN p_full BIGINT, IN p_known BIGINT, IN p_lease BIGINT,
    IN p_since BIGINT, IN p_slack BIGINT, IN p_burst BIGINT,
    IN p_ip VARBINARY(64), IN p_client VARBINARY(255))
    MODIFIES SQL DATA
    SQL SECURITY INVOKER
BEGIN
    DECLARE granted BIGINT DEFAULT 0;
    UPDATE {p}rate_limits SET
    idle_at      = GREATEST(LEAST(GREATEST(refilled_at, p_now) + p_every, p_full), authenticated_at + p_known, p_lease),
    pending      = CASE WHEN lease_until <= p_now THEN 0 ELSE pending END + 1,
    pending_addr = CASE WHEN lease_until <= p_now THEN 0 ELSE pending_addr END,
    lease_until  = p_lease,
    refilled_at  = LEAST(GREATEST(refilled_at, p_now) + p_every, p_full)
 WHERE ip = p_ip AND client_id = p_client AND authenticated_at <> 0 AND authenticated_at > p_since
   AND refilled_at <= p_slack AND CASE WHEN lease_until <= p_now THEN 0 ELSE pending END < p_burst;
    SET granted = ROW_COUNT();
    SELECT 3 AS kind, '' AS cid, NULL AS public, NULL AS disabled, NULL AS introspect,
       granted AS n1, NULL AS n2, NULL AS n3, NULL AS n4, NULL AS s1, NULL AS s2
UNION ALL
SELECT 0 AS kind, c.id AS cid, c.public AS public, c.disabled AS disabled, c.can_introspect AS introspect,
       c.token_ttl_ns AS n1, c.created_at AS n2, c.updated_at AS n3, c.tokens_revoked_at AS n4, NULL AS s1, NULL AS s2
  FROM {p}clients c WHERE c.id = p_client
UNION ALL
SELECT 1, s.client_id, NULL, NULL, NULL, s.seq, s.created_at, s.expires_at, NULL, s.secret_id, s.hash
  FROM {p}secrets s WHERE s.client_id = p_client
UNION ALL
SELECT 2, g.client_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, g.audience, g.scopes
  FROM {p}grants g WHERE g.client_id = p_client;
END;
