"""Signed hand-off notices and one call per first request (issue 11, aim 4, round 4).

A release that hands the lease to the head of the queue (0010) notifies the waiter with the grant, but any
role may NOTIFY, so until now the waiter checked the notice with a read of its own (a transaction per
contended request). Here the release signs the notice: ``eventstore_lease_release_signed`` is 0010's
release plus an HMAC-SHA256 of the payload under a key in ``lease_notice_key`` (random, made here, readable
by the coordinator role only), and the payload also names the queue place (``lease_waiters.seq``) the
grant was made for. A coordinator that has read the key believes a notice whose MAC matches and whose
queue place is the one its request holds (an old notice replayed by a listener names an older place), with
no read; anything else is checked with the read as before. The notice is only sent at the release's
commit, so a signed notice is a committed (durable) grant.

``eventstore_lease_request`` is a first request in one call: it decides as 0009's one-call grant followed by
0010's one-call queueing (and returns the queue place), reading the holders and the queue's head once under
the resource's advisory lock, in one statement, so a client can send it alone in autocommit mode (no BEGIN,
no COMMIT statement) and still queue atomically (FIFO).

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        r"""
CREATE TABLE lease_notice_key (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    key bytea NOT NULL CHECK (length(key) = 32),
    inner_pad bytea NOT NULL CHECK (length(inner_pad) = 64),
    outer_pad bytea NOT NULL CHECK (length(outer_pad) = 64)
);
COMMENT ON TABLE lease_notice_key IS
    'HMAC-SHA256 key of signed lease hand-off notices (the pads are the key xor 0x36 / 0x5c); a secret';
REVOKE ALL ON lease_notice_key FROM PUBLIC;
GRANT SELECT ON lease_notice_key TO eventstore_coordinator;
DO $$
DECLARE
    k bytea := uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid());  -- 244 random bits
    i bytea := decode(repeat('36', 64), 'hex');
    o bytea := decode(repeat('5c', 64), 'hex');
BEGIN
    FOR n IN 0..31 LOOP
        i := set_byte(i, n, get_byte(k, n) # 54);
        o := set_byte(o, n, get_byte(k, n) # 92);
    END LOOP;
    INSERT INTO lease_notice_key (key, inner_pad, outer_pad) VALUES (k, i, o);
END $$;

-- 0010's eventstore_lease_release, but the hand-off notice names the queue place and is signed:
-- resource, agent, token, expiry (epoch), seconds waited, queue seq, then hex HMAC-SHA256 of all before it.
CREATE FUNCTION eventstore_lease_release_signed(r text, a text, t bigint, ns int, k int, stale float8)
RETURNS TABLE (out_held float8) LANGUAGE plpgsql AS $$
DECLARE
    held float8;
    head record;
    tok bigint;
    exp timestamptz;
    waited float8;
    body text;
    pads record;
BEGIN
    PERFORM pg_advisory_xact_lock(ns, k);
    DELETE FROM lease_holders h
    WHERE h.resource = r AND h.agent_id = a AND h.token = t AND h.hold_count = 1
      AND h.expires_at > clock_timestamp()
    RETURNING extract(epoch FROM clock_timestamp() - h.granted_at)::float8 INTO held;
    IF NOT FOUND THEN RETURN; END IF;
    FOR head IN SELECT q.agent_id, q.mode, q.enqueued_at, q.ttl_seconds, q.seq
                FROM lease_waiters q
                WHERE q.resource = r AND q.heartbeat_at >= clock_timestamp() - make_interval(secs => stale)
                ORDER BY q.seq LOOP
        EXIT WHEN head.mode <> 'exclusive' OR head.ttl_seconds IS NULL
                  OR EXISTS (SELECT 1 FROM lease_holders h WHERE h.resource = r);
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
            body := r || chr(31) || head.agent_id || chr(31) || tok::text || chr(31) || extract(epoch FROM exp)::text
                    || chr(31) || waited::text || chr(31) || head.seq::text;
            SELECT p.inner_pad, p.outer_pad INTO pads FROM lease_notice_key p;
            IF FOUND THEN
                body := body || chr(31)
                        || encode(sha256(pads.outer_pad || sha256(pads.inner_pad || convert_to(body, 'UTF8'))), 'hex');
            END IF;
            PERFORM pg_notify('eventstore_leases', body);  -- sent at commit
            -- The chain's head is the last lock taken: nothing after the append but the commit.
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
            RETURN QUERY SELECT held;
            RETURN;
        END IF;
    END LOOP;
    PERFORM pg_notify('eventstore_leases',
                      CASE WHEN w.mode = 'exclusive' THEN w.resource || chr(31) || w.agent_id ELSE w.resource END)
    FROM (SELECT q.resource, q.mode, q.agent_id FROM lease_waiters q WHERE q.resource = r ORDER BY q.seq LIMIT 1) w;
    INSERT INTO lock_events (event_id, stream, type, schema_version, payload, agent_id, lease_resource,
                             fencing_token)
    VALUES (gen_random_uuid(), 'lease-' || r, 'LeaseReleased', 1,
            jsonb_build_object('agent_id', a, 'held_seconds', held, 'resource', r, 'token', t)::text,
            a, r, t);
    RETURN QUERY SELECT held;
END $$;

-- A first request in one statement: granted (token, expiry, seconds waited), or queued (held_by, the queue
-- place), or no row and nothing written (the full step decides, in a transaction of its own). It decides
-- exactly as 0009's eventstore_lease_grant_free followed by 0010's eventstore_lease_queue, reading the
-- resource's holders and the head of its queue once under one advisory lock.
CREATE FUNCTION eventstore_lease_request(r text, a text, m text, ttl float8, ns int, k int, check_order boolean,
                                         expected float8, stale float8)
RETURNS TABLE (out_token bigint, out_expires_at timestamptz, out_waited float8, out_held_by text[],
               out_seq bigint)
LANGUAGE plpgsql AS $$
DECLARE
    held text[];
    blocked boolean;
    head record;
    queued boolean;
    tok bigint;
    exp timestamptz;
    waited float8 := 0;
    place bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(ns, k);
    -- Holding another lease while the order is checked: neither one-call path decides.
    IF check_order AND EXISTS (SELECT 1 FROM lease_holders h WHERE h.agent_id = a) THEN RETURN; END IF;
    SELECT array_agg(DISTINCT h.agent_id COLLATE "C" ORDER BY h.agent_id COLLATE "C"),
           bool_or(h.agent_id = a OR h.expires_at <= clock_timestamp())
    INTO held, blocked FROM lease_holders h WHERE h.resource = r;
    IF held IS NULL THEN
        -- No holder row: granted when nobody is queued or the agent is the head (0009's one-call grant).
        SELECT q.agent_id, q.enqueued_at INTO head FROM lease_waiters q WHERE q.resource = r ORDER BY q.seq LIMIT 1;
        queued := FOUND;
        IF NOT queued OR head.agent_id = a THEN
            PERFORM 1 FROM agents g WHERE g.agent_id = a AND g.status = 'active' FOR SHARE;
            IF NOT FOUND THEN RETURN; END IF;
            IF queued THEN
                DELETE FROM lease_waiters q WHERE q.resource = r AND q.agent_id = a;
                waited := extract(epoch FROM clock_timestamp() - head.enqueued_at);
            END IF;
            INSERT INTO resources AS s (resource, fence_token) VALUES (r, nextval('fencing_tokens'))
            ON CONFLICT (resource) DO UPDATE SET fence_token = GREATEST(s.fence_token, EXCLUDED.fence_token)
            RETURNING s.fence_token INTO tok;
            INSERT INTO lease_holders AS h (resource, agent_id, mode, token, ttl_seconds, granted_at, expires_at)
            VALUES (r, a, m, tok, ttl, clock_timestamp(), clock_timestamp() + make_interval(secs => ttl))
            RETURNING h.expires_at INTO exp;
            INSERT INTO lock_events (event_id, stream, type, schema_version, payload, agent_id, lease_resource,
                                     fencing_token)
            VALUES (gen_random_uuid(), 'lease-' || r, 'LeaseGranted', 1,
                    jsonb_build_object('agent_id', a, 'mode', m, 'resource', r, 'token', tok, 'ttl_seconds', ttl,
                                       'waited_seconds', waited)::text,
                    a, r, tok);
            RETURN QUERY SELECT tok, exp, waited, NULL::text[], NULL::bigint;
            RETURN;
        END IF;
    END IF;
    -- Busy: queued (0010's one-call queueing) when nothing is left for the full step to decide or clean up.
    IF m <> 'exclusive' OR blocked THEN RETURN; END IF;
    IF EXISTS (SELECT 1 FROM lease_waiters q
               WHERE q.resource = r AND (q.agent_id = a
                                         OR q.heartbeat_at < clock_timestamp() - make_interval(secs => stale)))
    THEN RETURN; END IF;
    IF held IS NULL THEN
        SELECT array_agg(DISTINCT q.agent_id COLLATE "C" ORDER BY q.agent_id COLLATE "C") INTO held
        FROM lease_waiters q WHERE q.resource = r;
    END IF;
    PERFORM 1 FROM agents g WHERE g.agent_id = a AND g.status = 'active' FOR SHARE;
    IF NOT FOUND THEN RETURN; END IF;
    INSERT INTO lease_waiters AS q (resource, agent_id, mode, enqueued_at, heartbeat_at, expected_seconds,
                                    ttl_seconds)
    VALUES (r, a, m, clock_timestamp(), clock_timestamp(), expected, ttl)
    RETURNING q.seq INTO place;
    INSERT INTO lock_events (event_id, stream, type, schema_version, payload, agent_id, lease_resource, fencing_token)
    VALUES (gen_random_uuid(), 'lease-' || r, 'LeaseWaited', 1,
            jsonb_build_object('agent_id', a, 'expected_seconds', expected, 'held_by', to_jsonb(held), 'mode', m,
                               'resource', r)::text,
            a, NULL, NULL);
    RETURN QUERY SELECT NULL::bigint, NULL::timestamptz, NULL::float8, held, place;
END $$;
REVOKE ALL ON FUNCTION eventstore_lease_release_signed(text, text, bigint, int, int, float8) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eventstore_lease_release_signed(text, text, bigint, int, int, float8)
    TO eventstore_coordinator;
REVOKE ALL ON FUNCTION eventstore_lease_request(text, text, text, float8, int, int, boolean, float8, float8)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eventstore_lease_request(text, text, text, float8, int, int, boolean, float8, float8)
    TO eventstore_coordinator;
"""
    )


def downgrade() -> None:
    op.execute(
        """
DROP FUNCTION IF EXISTS eventstore_lease_request(text, text, text, float8, int, int, boolean, float8, float8);
DROP FUNCTION IF EXISTS eventstore_lease_release_signed(text, text, bigint, int, int, float8);
DROP TABLE IF EXISTS lease_notice_key;
"""
    )
