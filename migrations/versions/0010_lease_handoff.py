"""Direct lease hand-off (issue 11, aim 4): a release grants the lease to the head of the FIFO queue in
its own transaction, so a contended turnover costs one durable commit instead of two.

``eventstore_lease_release`` replaces the one-statement release of 0009 (eventstore/postgres/lease_sql.py
kept the SQL): under the resource's advisory lock (so a waiter that queues in the same instant is seen:
its queueing transaction holds the same lock, and every statement of this function reads a fresh
snapshot) it deletes the holder row, and when the resource is then free and the oldest live waiter waits
for an exclusive lease, is active and asked with a TTL (``lease_waiters.ttl_seconds``, new here), it
grants that waiter (a killed waiter is passed over, FIFO holds among the rest): its queue row goes, a new
fencing token is drawn from ``fencing_tokens``, a holder row is written with ``handoff = true`` (granted
to a waiter that has not yet seen it), and the ``LeaseReleased`` and ``LeaseGranted`` are chained by ONE
insert at the end (the chain's head is still the last lock taken). The notification then carries the
grant (resource, agent, token, expiry, waited), so the waiter needs no transaction of its own. Otherwise
it wakes the head as 0009 did.

A waiter that missed the notification finds its holder row with ``handoff = true`` on its next poll and
takes it (clearing the flag); a waiter that gives up first finds the same row when it leaves the queue
and releases it (handing it on). A waiter that died keeps the lease until the TTL it asked for runs out,
like any holder that dies right after its grant; a kill revokes it like any other lease.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        r"""
ALTER TABLE lease_waiters ADD COLUMN ttl_seconds double precision CHECK (ttl_seconds > 0);
ALTER TABLE lease_holders ADD COLUMN handoff boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN lease_waiters.ttl_seconds IS 'the TTL the waiter asked for; a release hands the lease off with it';
COMMENT ON COLUMN lease_holders.handoff IS
    'granted by a release to the head of the queue; cleared when the waiter polls it';

-- Returns one row (the seconds held) when it released a live, non-re-entered hold; no row and no change
-- otherwise (re-entered, expired, not held: the caller's full step decides).
CREATE FUNCTION eventstore_lease_release(r text, a text, t bigint, ns int, k int, stale float8)
RETURNS TABLE (out_held float8) LANGUAGE plpgsql AS $$
DECLARE
    held float8;
    head record;
    tok bigint;
    exp timestamptz;
    waited float8;
BEGIN
    PERFORM pg_advisory_xact_lock(ns, k);
    DELETE FROM lease_holders h
    WHERE h.resource = r AND h.agent_id = a AND h.token = t AND h.hold_count = 1
      AND h.expires_at > clock_timestamp()
    RETURNING extract(epoch FROM clock_timestamp() - h.granted_at)::float8 INTO held;
    IF NOT FOUND THEN RETURN; END IF;
    -- The oldest live waiter whose agent is active (a killed one is passed over; the kill removes it), if
    -- it waits for an exclusive lease with a known TTL and nobody else holds the resource (shared holders).
    FOR head IN SELECT q.agent_id, q.mode, q.enqueued_at, q.ttl_seconds
                FROM lease_waiters q
                WHERE q.resource = r AND q.heartbeat_at >= clock_timestamp() - make_interval(secs => stale)
                ORDER BY q.seq LOOP
        EXIT WHEN head.mode <> 'exclusive' OR head.ttl_seconds IS NULL
                  OR EXISTS (SELECT 1 FROM lease_holders h WHERE h.resource = r);
        -- Only now, about to grant, is the waiter's agent row locked (a kill waits for this transaction
        -- and then revokes the grant).
        PERFORM 1 FROM agents g WHERE g.agent_id = head.agent_id AND g.status = 'active' FOR SHARE;
        IF FOUND THEN
            DELETE FROM lease_waiters q WHERE q.resource = r AND q.agent_id = head.agent_id;
            waited := extract(epoch FROM clock_timestamp() - head.enqueued_at);
            INSERT INTO resources AS s (resource, fence_token) VALUES (r, nextval('fencing_tokens'))
            ON CONFLICT (resource) DO UPDATE SET fence_token = GREATEST(s.fence_token, EXCLUDED.fence_token)
            RETURNING s.fence_token INTO tok;
            INSERT INTO lease_holders AS h (resource, agent_id, mode, token, ttl_seconds, granted_at, expires_at,
                                            handoff)
            VALUES (r, head.agent_id, 'exclusive', tok, head.ttl_seconds, clock_timestamp(),
                    clock_timestamp() + make_interval(secs => head.ttl_seconds), true)
            RETURNING h.expires_at INTO exp;
            INSERT INTO lock_events (event_id, stream, type, schema_version, payload, agent_id, lease_resource,
                                     fencing_token)
            VALUES (gen_random_uuid(), 'lease-' || r, 'LeaseReleased', 1,
                    jsonb_build_object('agent_id', a, 'held_seconds', held, 'resource', r, 'token', t)::text,
                    a, r, t),
                   (gen_random_uuid(), 'lease-' || r, 'LeaseGranted', 1,
                    jsonb_build_object('agent_id', head.agent_id, 'mode', 'exclusive', 'resource', r,
                                       'token', tok, 'ttl_seconds', head.ttl_seconds,
                                       'waited_seconds', waited)::text,
                    head.agent_id, r, tok);
            PERFORM pg_notify('eventstore_leases', r || chr(31) || head.agent_id || chr(31) || tok::text
                              || chr(31) || extract(epoch FROM exp)::text || chr(31) || waited::text);
            RETURN QUERY SELECT held;
            RETURN;
        END IF;
    END LOOP;
    INSERT INTO lock_events (event_id, stream, type, schema_version, payload, agent_id, lease_resource,
                             fencing_token)
    VALUES (gen_random_uuid(), 'lease-' || r, 'LeaseReleased', 1,
            jsonb_build_object('agent_id', a, 'held_seconds', held, 'resource', r, 'token', t)::text,
            a, r, t);
    -- No hand-off: wake the head as 0009 did (only the head when it waits for an exclusive lease).
    PERFORM pg_notify('eventstore_leases',
                      CASE WHEN w.mode = 'exclusive' THEN w.resource || chr(31) || w.agent_id ELSE w.resource END)
    FROM (SELECT q.resource, q.mode, q.agent_id FROM lease_waiters q WHERE q.resource = r ORDER BY q.seq LIMIT 1) w;
    RETURN QUERY SELECT held;
END $$;
-- A first request that must wait, queued in one call (its caller sends it with the one-call grant and the
-- commit in one round trip, so the advisory lock is held for no client round trip): an exclusive request
-- of a known, active agent, not yet holding or queued for the resource, holding no other live lease when
-- the lock order is to be checked, on a resource with a live holder or a queue and nothing for the full
-- step to clean up (no expired holder, no stale waiter). Returns held_by and writes the queue row with
-- its chained LeaseWaited; otherwise returns nothing and changes nothing (the full step decides).
CREATE FUNCTION eventstore_lease_queue(r text, a text, m text, ttl float8, ns int, k int, check_order boolean,
                                       expected float8, stale float8)
RETURNS TABLE (out_held_by text[]) LANGUAGE plpgsql AS $$
DECLARE
    held text[];
BEGIN
    PERFORM pg_advisory_xact_lock(ns, k);
    IF m <> 'exclusive' THEN RETURN; END IF;
    IF EXISTS (SELECT 1 FROM lease_holders h
               WHERE h.resource = r AND (h.agent_id = a OR h.expires_at <= clock_timestamp())) THEN RETURN; END IF;
    IF check_order AND EXISTS (SELECT 1 FROM lease_holders h WHERE h.agent_id = a) THEN RETURN; END IF;
    IF EXISTS (SELECT 1 FROM lease_waiters q
               WHERE q.resource = r AND (q.agent_id = a
                                         OR q.heartbeat_at < clock_timestamp() - make_interval(secs => stale)))
    THEN RETURN; END IF;
    SELECT array_agg(DISTINCT h.agent_id COLLATE "C" ORDER BY h.agent_id COLLATE "C") INTO held
    FROM lease_holders h WHERE h.resource = r;
    IF held IS NULL THEN
        SELECT array_agg(DISTINCT q.agent_id COLLATE "C" ORDER BY q.agent_id COLLATE "C") INTO held
        FROM lease_waiters q WHERE q.resource = r;
    END IF;
    IF held IS NULL THEN RETURN; END IF;  -- free: the one-call grant's case
    PERFORM 1 FROM agents g WHERE g.agent_id = a AND g.status = 'active' FOR SHARE;
    IF NOT FOUND THEN RETURN; END IF;
    INSERT INTO lease_waiters (resource, agent_id, mode, enqueued_at, heartbeat_at, expected_seconds, ttl_seconds)
    VALUES (r, a, m, clock_timestamp(), clock_timestamp(), expected, ttl);
    INSERT INTO lock_events (event_id, stream, type, schema_version, payload, agent_id, lease_resource, fencing_token)
    VALUES (gen_random_uuid(), 'lease-' || r, 'LeaseWaited', 1,
            jsonb_build_object('agent_id', a, 'expected_seconds', expected, 'held_by', to_jsonb(held), 'mode', m,
                               'resource', r)::text,
            a, NULL, NULL);
    RETURN QUERY SELECT held;
END $$;
REVOKE ALL ON FUNCTION eventstore_lease_queue(text, text, text, float8, int, int, boolean, float8, float8)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eventstore_lease_queue(text, text, text, float8, int, int, boolean, float8, float8)
    TO eventstore_coordinator;
REVOKE ALL ON FUNCTION eventstore_lease_release(text, text, bigint, int, int, float8) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eventstore_lease_release(text, text, bigint, int, int, float8) TO eventstore_coordinator;
"""
    )


def downgrade() -> None:
    op.execute(
        """
DROP FUNCTION IF EXISTS eventstore_lease_queue(text, text, text, float8, int, int, boolean, float8, float8);
DROP FUNCTION IF EXISTS eventstore_lease_release(text, text, bigint, int, int, float8);
ALTER TABLE lease_holders DROP COLUMN IF EXISTS handoff;
ALTER TABLE lease_waiters DROP COLUMN IF EXISTS ttl_seconds;
"""
    )
