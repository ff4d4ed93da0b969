"""A wait is chained when it ENDS, not when it begins (issue 11, aim 4, round 5).

Until now a contended request made two chained durable commits: its ``LeaseWaited`` when it queued, and
the release that handed the lease on. The lock chain's single head row is held from each append through
its WAL flush, so every such commit ran one at a time across all resources. Here the queueing call
writes the ``lease_waiters`` row only (with the holders it waited behind, ``held_by``, new here), no lock
event, and commits with ``synchronous_commit = off``: a lost queue row is tolerated (the waiter's next poll
queues it again; tests/test_lease_queue_loss.py), and any durable commit that acts on the row (a grant, a
hand-off) flushes the WAL up to and past the row's own commit record.

The transaction that ends the wait appends ONE ``LeaseWaited`` (the queue row's ``enqueued_at`` from the
database clock, the seconds waited, the queue place ``queue_seq``, how it ``ended``) in the same durable,
chained commit as what ended it: the release's hand-off (LeaseReleased, LeaseWaited, LeaseGranted in one
flush), a grant to the head of the queue, and (in Python, eventstore/postgres/leases.py) a waiter that
gives up, is killed, revoked, or purged as abandoned. ``eventstore_lease_waited(lease_waiters, text)``
builds that payload so every path writes the same fields.

The functions of 0009/0010/0011 that chained a wait at its start are renamed with the suffix ``_0011``
and no longer executable by the coordinator role; the new ones take their names (and signatures), so the
code calls the same statements. The downgrade renames them back.

Revision ID: 0013
Revises: 0012
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# name, argument types: the functions replaced here
REPLACED = [
    ("eventstore_lease_grant_free", "text, text, text, float8, int, int, boolean"),
    ("eventstore_lease_queue", "text, text, text, float8, int, int, boolean, float8, float8"),
    ("eventstore_lease_release_signed", "text, text, bigint, int, int, float8"),
    ("eventstore_lease_request", "text, text, text, float8, int, int, boolean, float8, float8"),
]
OLD_RELEASE = ("eventstore_lease_release", "text, text, bigint, int, int, float8")  # 0010's, unused since 0011


def upgrade() -> None:
    renames = "\n".join(
        f"ALTER FUNCTION {n}({a}) RENAME TO {n}_0011;\n"
        f"REVOKE ALL ON FUNCTION {n}_0011({a}) FROM eventstore_coordinator;" for n, a in REPLACED)
    grants = "\n".join(
        f"REVOKE ALL ON FUNCTION {n}({a}) FROM PUBLIC;\nGRANT EXECUTE ON FUNCTION {n}({a}) TO eventstore_coordinator;"
        for n, a in REPLACED)
    op.execute(renames + f"\nREVOKE ALL ON FUNCTION {OLD_RELEASE[0]}({OLD_RELEASE[1]}) FROM eventstore_coordinator;\n"
               + BODY + grants)


def downgrade() -> None:
    drops = "\n".join(f"DROP FUNCTION {n}({a});\nALTER FUNCTION {n}_0011({a}) RENAME TO {n};\n"
                      f"GRANT EXECUTE ON FUNCTION {n}({a}) TO eventstore_coordinator;" for n, a in REPLACED)
    op.execute(drops + f"\nGRANT EXECUTE ON FUNCTION {OLD_RELEASE[0]}({OLD_RELEASE[1]}) TO eventstore_coordinator;\n"
               "DROP FUNCTION eventstore_lease_waited(lease_waiters, text);\n"
               "ALTER TABLE lease_waiters DROP COLUMN held_by;\n")


BODY = r"""
ALTER TABLE lease_waiters ADD COLUMN held_by text[];
COMMENT ON COLUMN lease_waiters.held_by IS
    'who held (else queued for) the resource when the request queued; chained in its LeaseWaited when the wait ends';

-- The LeaseWaited payload of a wait that ends now (the queue row as it was deleted, and how it ended).
CREATE FUNCTION eventstore_lease_waited(q lease_waiters, ended text) RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT jsonb_build_object(
        'agent_id', q.agent_id, 'ended', ended,
        'enqueued_at', to_char(q.enqueued_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'expected_seconds', q.expected_seconds, 'held_by', to_jsonb(coalesce(q.held_by, '{}'::text[])),
        'mode', q.mode, 'queue_seq', q.seq, 'resource', q.resource,
        'waited_seconds', extract(epoch FROM clock_timestamp() - q.enqueued_at)::float8)::text
$$;
REVOKE ALL ON FUNCTION eventstore_lease_waited(lease_waiters, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eventstore_lease_waited(lease_waiters, text) TO eventstore_coordinator;

-- 0009's one-call grant; a grant to the head of the queue chains its wait (LeaseWaited, then LeaseGranted).
CREATE FUNCTION eventstore_lease_grant_free(r text, a text, m text, ttl float8, ns int, k int, check_order boolean)
RETURNS TABLE (out_token bigint, out_expires_at timestamptz, out_waited float8) LANGUAGE plpgsql AS $$
DECLARE
    head record;
    w lease_waiters;
    queued boolean;
    tok bigint;
    exp timestamptz;
    waited float8 := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(ns, k);
    IF EXISTS (SELECT 1 FROM lease_holders h WHERE h.resource = r) THEN RETURN; END IF;
    IF check_order AND EXISTS (SELECT 1 FROM lease_holders h WHERE h.agent_id = a) THEN RETURN; END IF;
    SELECT q.agent_id INTO head FROM lease_waiters q WHERE q.resource = r ORDER BY q.seq LIMIT 1;
    queued := FOUND;
    IF queued AND head.agent_id <> a THEN RETURN; END IF;
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

-- 0010's one-call queueing: the queue row (with held_by) only, no lock event, committed without a flush.
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
    IF held IS NULL THEN RETURN; END IF;
    PERFORM 1 FROM agents g WHERE g.agent_id = a AND g.status = 'active' FOR SHARE;
    IF NOT FOUND THEN RETURN; END IF;
    INSERT INTO lease_waiters (resource, agent_id, mode, enqueued_at, heartbeat_at, expected_seconds, ttl_seconds,
                               held_by)
    VALUES (r, a, m, clock_timestamp(), clock_timestamp(), expected, ttl, held);
    PERFORM set_config('synchronous_commit', 'off', true);  -- a queue row alone: no lock event, no flush wait
    RETURN QUERY SELECT held;
END $$;

-- 0011's signed release; the hand-off chains the waiter's wait: LeaseReleased, LeaseWaited, LeaseGranted.
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
    pads record;
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

-- 0011's first request in one statement; the grant to the head of the queue chains its wait, and queueing
-- writes the queue row only, committed without a flush (no lock event).
CREATE FUNCTION eventstore_lease_request(r text, a text, m text, ttl float8, ns int, k int, check_order boolean,
                                         expected float8, stale float8)
RETURNS TABLE (out_token bigint, out_expires_at timestamptz, out_waited float8, out_held_by text[],
               out_seq bigint)
LANGUAGE plpgsql AS $$
DECLARE
    held text[];
    blocked boolean;
    head record;
    w lease_waiters;
    queued boolean;
    tok bigint;
    exp timestamptz;
    waited float8 := 0;
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
            INSERT INTO lock_events (event_id, stream, type, schema_version, payload, agent_id, lease_resource,
                                     fencing_token)
            SELECT gen_random_uuid(), 'lease-' || r, x.type, 1, x.payload, a, x.res, x.tok
            FROM (VALUES (1, 'LeaseWaited', CASE WHEN queued THEN eventstore_lease_waited(w, 'granted') END, NULL,
                          NULL::bigint),
                         (2, 'LeaseGranted',
                          jsonb_build_object('agent_id', a, 'mode', m, 'resource', r, 'token', tok,
                                             'ttl_seconds', ttl, 'waited_seconds', waited)::text, r, tok)
                 ) AS x(i, type, payload, res, tok)
            WHERE x.payload IS NOT NULL ORDER BY x.i;
            RETURN QUERY SELECT tok, exp, waited, NULL::text[], NULL::bigint;
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
