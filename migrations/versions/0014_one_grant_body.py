"""One grant body and one notice MAC in the lease SQL (issue 11 follow-up; no change of behaviour).

0013 restated the grant (the agent must be active; a queued agent leaves the queue and its wait is chained;
the fence token is bumped, the holder row written and ``LeaseGranted`` chained) inside both
``eventstore_lease_grant_free`` and ``eventstore_lease_request``, and 0011/0013 each spelled out the
HMAC-SHA256 that signs a hand-off notice. Here each is one function, called by the others:

- ``eventstore_lease_grant(r, a, m, ttl, queued)``: the grant, for a caller that holds the resource's advisory
  lock and has decided that ``a`` may have it now (no holder; nobody queued, or ``a`` is the head: ``queued``).
  No row when the agent is not active, and then nothing was written.
- ``eventstore_lease_notice_mac(body)``: the hex MAC of a notice under ``lease_notice_key``, NULL without a key
  row. It runs with its caller's rights (not SECURITY DEFINER): only a role that may read the key can sign.

Both are executable by ``eventstore_coordinator`` only, which could already write every row they write. The
functions of 0013 that held the copies keep their names and signatures with the new bodies (the code calls
the same statements); 0013's own are renamed with the suffix ``_0013`` and no longer executable by the
coordinator role, so the downgrade renames them back, unchanged.

Revision ID: 0014
Revises: 0013
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

COORDINATOR = "eventstore_coordinator"
# name, argument types: the functions whose bodies change here
REPLACED = [
    ("eventstore_lease_grant_free", "text, text, text, float8, int, int, boolean"),
    ("eventstore_lease_request", "text, text, text, float8, int, int, boolean, float8, float8"),
    ("eventstore_lease_release_signed", "text, text, bigint, int, int, float8"),
]
# name, argument types: the functions new here
SHARED = [
    ("eventstore_lease_grant", "text, text, text, float8, boolean"),
    ("eventstore_lease_notice_mac", "text"),
]


def _grant(functions: list[tuple[str, str]]) -> str:
    return "\n".join(f"REVOKE ALL ON FUNCTION {n}({a}) FROM PUBLIC;\n"
                     f"GRANT EXECUTE ON FUNCTION {n}({a}) TO {COORDINATOR};" for n, a in functions)


def upgrade() -> None:
    renames = "\n".join(f"ALTER FUNCTION {n}({a}) RENAME TO {n}_0013;\n"
                        f"REVOKE ALL ON FUNCTION {n}_0013({a}) FROM {COORDINATOR};" for n, a in REPLACED)
    op.execute(renames + BODY + _grant(SHARED) + "\n" + _grant(REPLACED))


def downgrade() -> None:
    drops = "\n".join(f"DROP FUNCTION {n}({a});\nALTER FUNCTION {n}_0013({a}) RENAME TO {n};\n"
                      f"GRANT EXECUTE ON FUNCTION {n}({a}) TO {COORDINATOR};" for n, a in REPLACED)
    op.execute(drops + "\n" + "\n".join(f"DROP FUNCTION {n}({a});" for n, a in SHARED))


BODY = r"""
-- The grant both one-call paths make. The caller holds the resource's advisory lock and decided that the
-- agent may have the resource now; ``queued``: the agent is the head of its queue (its wait ends, chained).
-- The agents row is locked FOR SHARE (a kill waits for this transaction and revokes the grant).
CREATE FUNCTION eventstore_lease_grant(r text, a text, m text, ttl float8, queued boolean)
RETURNS TABLE (out_token bigint, out_expires_at timestamptz, out_waited float8) LANGUAGE plpgsql AS $$
DECLARE
    w lease_waiters;
    tok bigint;
    exp timestamptz;
    waited float8 := 0;
BEGIN
    PERFORM 1 FROM agents g WHERE g.agent_id = a AND g.status = 'active' FOR SHARE;
    IF NOT FOUND THEN RETURN; END IF;
    IF queued THEN
        DELETE FROM lease_waiters q WHERE q.resource = r AND q.agent_id = a RETURNING q.* INTO w;
        waited := extract(epoch FROM clock_timestamp() - w.enqueued_at);
    END IF;
    INSERT INTO resources AS s (resource, fence_token) VALUES (r, nextval('fencing_tokens'))
    ON CONFLICT (resource) DO UPDATE SET fence_token = GREATEST(s.fence_token, EXCLUDED.fence_token)
    RETURNING s.fence_token INTO tok;
    INSERT INTO lease_holders AS h (resource, agent_id, mode, token, ttl_seconds, granted_at, expires_at)
    VALUES (r, a, m, tok, ttl, clock_timestamp(), clock_timestamp() + make_interval(secs => ttl))
    RETURNING h.expires_at INTO exp;
    -- The chain's head is the last lock taken: nothing after the append but the caller's commit.
    INSERT INTO lock_events (event_id, stream, type, schema_version, payload, agent_id, lease_resource, fencing_token)
    SELECT gen_random_uuid(), 'lease-' || r, x.type, 1, x.payload, a, x.res, x.tok
    FROM (VALUES (1, 'LeaseWaited', CASE WHEN queued THEN eventstore_lease_waited(w, 'granted') END, NULL,
                  NULL::bigint),
                 (2, 'LeaseGranted',
                  jsonb_build_object('agent_id', a, 'mode', m, 'resource', r, 'token', tok, 'ttl_seconds', ttl,
                                     'waited_seconds', waited)::text, r, tok)) AS x(i, type, payload, res, tok)
    WHERE x.payload IS NOT NULL ORDER BY x.i;
    RETURN QUERY SELECT tok, exp, waited;
END $$;

-- The hex HMAC-SHA256 of a hand-off notice under the notice key (the pads are the key xor 0x36 / 0x5c);
-- NULL without a key row. The caller's rights: a role that cannot read lease_notice_key cannot sign.
CREATE FUNCTION eventstore_lease_notice_mac(body text) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT encode(sha256(p.outer_pad || sha256(p.inner_pad || convert_to(body, 'UTF8'))), 'hex')
    FROM lease_notice_key p
$$;

-- 0009's one-call grant (0013's decisions): free, and nobody queued or the agent heads the queue.
CREATE FUNCTION eventstore_lease_grant_free(r text, a text, m text, ttl float8, ns int, k int, check_order boolean)
RETURNS TABLE (out_token bigint, out_expires_at timestamptz, out_waited float8) LANGUAGE plpgsql AS $$
DECLARE
    head record;
    queued boolean;
BEGIN
    PERFORM pg_advisory_xact_lock(ns, k);
    IF EXISTS (SELECT 1 FROM lease_holders h WHERE h.resource = r) THEN RETURN; END IF;
    IF check_order AND EXISTS (SELECT 1 FROM lease_holders h WHERE h.agent_id = a) THEN RETURN; END IF;
    SELECT q.agent_id INTO head FROM lease_waiters q WHERE q.resource = r ORDER BY q.seq LIMIT 1;
    queued := FOUND;
    IF queued AND head.agent_id <> a THEN RETURN; END IF;
    RETURN QUERY SELECT * FROM eventstore_lease_grant(r, a, m, ttl, queued);
END $$;

-- 0011's signed release (0013's decisions); the hand-off chains the waiter's wait: LeaseReleased,
-- LeaseWaited, LeaseGranted.
CREATE FUNCTION eventstore_lease_release_signed(r text, a text, t bigint, ns int, k int, stale float8)
RETURNS TABLE (out_held float8) LANGUAGE plpgsql AS $$
DECLARE
    held float8;
    head record;
    w lease_waiters;
    tok bigint;
    exp timestamptz;
    waited float8;
    body text;
    mac text;
BEGIN
    PERFORM pg_advisory_xact_lock(ns, k);
    DELETE FROM lease_holders h
    WHERE h.resource = r AND h.agent_id = a AND h.token = t AND h.hold_count = 1
      AND h.expires_at > clock_timestamp()
    RETURNING extract(epoch FROM clock_timestamp() - h.granted_at)::float8 INTO held;
    IF NOT FOUND THEN RETURN; END IF;
    FOR head IN SELECT q.agent_id, q.mode, q.ttl_seconds
                FROM lease_waiters q
                WHERE q.resource = r AND q.heartbeat_at >= clock_timestamp() - make_interval(secs => stale)
                ORDER BY q.seq LOOP
        EXIT WHEN head.mode <> 'exclusive' OR head.ttl_seconds IS NULL
                  OR EXISTS (SELECT 1 FROM lease_holders h WHERE h.resource = r);
        PERFORM 1 FROM agents g WHERE g.agent_id = head.agent_id AND g.status = 'active' FOR SHARE;
        IF FOUND THEN
            DELETE FROM lease_waiters q WHERE q.resource = r AND q.agent_id = head.agent_id RETURNING q.* INTO w;
            waited := extract(epoch FROM clock_timestamp() - w.enqueued_at);
            INSERT INTO resources AS s (resource, fence_token) VALUES (r, nextval('fencing_tokens'))
            ON CONFLICT (resource) DO UPDATE SET fence_token = GREATEST(s.fence_token, EXCLUDED.fence_token)
            RETURNING s.fence_token INTO tok;
            INSERT INTO lease_holders AS h (resource, agent_id, mode, token, ttl_seconds, granted_at, expires_at,
                                            handoff)
            VALUES (r, head.agent_id, 'exclusive', tok, head.ttl_seconds, clock_timestamp(),
                    clock_timestamp() + make_interval(secs => head.ttl_seconds), true)
            RETURNING h.expires_at INTO exp;
            body := r || chr(31) || head.agent_id || chr(31) || tok::text || chr(31) || extract(epoch FROM exp)::text
                    || chr(31) || waited::text || chr(31) || w.seq::text;
            mac := eventstore_lease_notice_mac(body);
            IF mac IS NOT NULL THEN
                body := body || chr(31) || mac;
            END IF;
            PERFORM pg_notify('eventstore_leases', body);  -- sent at commit
            -- The chain's head is the last lock taken: nothing after the append but the commit.
            INSERT INTO lock_events (event_id, stream, type, schema_version, payload, agent_id, lease_resource,
                                     fencing_token)
            VALUES (gen_random_uuid(), 'lease-' || r, 'LeaseReleased', 1,
                    jsonb_build_object('agent_id', a, 'held_seconds', held, 'resource', r, 'token', t)::text,
                    a, r, t),
                   (gen_random_uuid(), 'lease-' || r, 'LeaseWaited', 1, eventstore_lease_waited(w, 'handed_off'),
                    head.agent_id, NULL, NULL),
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
                      CASE WHEN x.mode = 'exclusive' THEN x.resource || chr(31) || x.agent_id ELSE x.resource END)
    FROM (SELECT q.resource, q.mode, q.agent_id FROM lease_waiters q WHERE q.resource = r ORDER BY q.seq LIMIT 1) x;
    INSERT INTO lock_events (event_id, stream, type, schema_version, payload, agent_id, lease_resource,
                             fencing_token)
    VALUES (gen_random_uuid(), 'lease-' || r, 'LeaseReleased', 1,
            jsonb_build_object('agent_id', a, 'held_seconds', held, 'resource', r, 'token', t)::text,
            a, r, t);
    RETURN QUERY SELECT held;
END $$;

-- 0011's first request in one statement (0013's decisions): granted as eventstore_lease_grant_free would,
-- or queued (the queue row only, committed without a flush), or no row and nothing written.
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
    place bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(ns, k);
    IF check_order AND EXISTS (SELECT 1 FROM lease_holders h WHERE h.agent_id = a) THEN RETURN; END IF;
    SELECT array_agg(DISTINCT h.agent_id COLLATE "C" ORDER BY h.agent_id COLLATE "C"),
           bool_or(h.agent_id = a OR h.expires_at <= clock_timestamp())
    INTO held, blocked FROM lease_holders h WHERE h.resource = r;
    IF held IS NULL THEN
        SELECT q.agent_id INTO head FROM lease_waiters q WHERE q.resource = r ORDER BY q.seq LIMIT 1;
        queued := FOUND;
        IF NOT queued OR head.agent_id = a THEN
            RETURN QUERY SELECT g.out_token, g.out_expires_at, g.out_waited, NULL::text[], NULL::bigint
                         FROM eventstore_lease_grant(r, a, m, ttl, queued) g;
            RETURN;
        END IF;
    END IF;
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
                                    ttl_seconds, held_by)
    VALUES (r, a, m, clock_timestamp(), clock_timestamp(), expected, ttl, held)
    RETURNING q.seq INTO place;
    -- A queue row alone (no lock event): its commit need not wait for the flush. A crash may lose it (the
    -- waiter queues again); any durable commit that acts on it flushes the WAL past it first.
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY SELECT NULL::bigint, NULL::timestamptz, NULL::float8, held, place;
END $$;
"""
