"""Lock history on its own hash chain (issue 11, aim 4): ``lock_events``, chained like outcomes and dead
letters (migration 0006) with its own head row ``history_heads.lock_events``, append-only.

Before this revision every lock event was appended to the global event log under the ``log_head`` lock,
which the projector's batches hold for tens of milliseconds, so every lease step waited behind intake.
Lock events now go to their own chain in the lease step's own transaction: still durable, still chained
(each row's hash covers the previous one, recomputed in Python by ``eventstore verify``) and anchored
(``eventstore anchor`` signs this head too), but no longer behind the write path.

Each row's ``hash`` is ``sha256(prev_hash || f(chain_seq) || f(event_id) || f(stream) || f(type) ||
f(schema_version) || f(payload) || f(agent_id) || f(lease_resource) || f(fencing_token) ||
f(recorded_at))`` with 0006's ``eventstore_field`` encoding; ``payload`` is kept as the canonical JSON
text that was hashed. Lock events recorded before this revision stay where they are, in the event log;
the view ``lock_history`` reads both, legacy rows first. Downgrading drops the new chain and with it the
lock events recorded since (the event log cannot take them back without breaking its own chain).

One lease step is also shortened: ``eventstore_lease_grant_free`` grants a free resource (or the head of
its queue) in one call, and a release deletes the holder and chains its ``LeaseReleased`` in one
statement (eventstore/postgres/lease_sql.py). Those two write the payload as ``jsonb::text``; the hash
covers the text as stored, whatever its spacing.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        r"""
CREATE TABLE lock_events (
    chain_seq bigint NOT NULL UNIQUE,
    event_id uuid PRIMARY KEY,
    stream text NOT NULL,
    type text NOT NULL,
    schema_version integer NOT NULL,
    payload text NOT NULL,
    agent_id text NOT NULL,
    lease_resource text,
    fencing_token bigint,
    recorded_at timestamptz NOT NULL,
    prev_hash bytea NOT NULL,
    hash bytea NOT NULL
);
CREATE INDEX lock_events_stream_idx ON lock_events (stream, chain_seq);
CREATE INDEX lock_events_lease_idx ON lock_events (lease_resource, fencing_token);
CREATE INDEX lock_events_type_idx ON lock_events (type);
COMMENT ON COLUMN lock_events.payload IS 'the canonical JSON text that was hashed (read it as payload::jsonb)';
COMMENT ON COLUMN lock_events.recorded_at IS 'the database clock when the row was chained, never an agent clock';
INSERT INTO history_heads (name) VALUES ('lock_events');

CREATE FUNCTION eventstore_lock_event_bytes(e lock_events) RETURNS bytea LANGUAGE sql STABLE AS $$
    SELECT eventstore_field(e.chain_seq::text) || eventstore_field(e.event_id::text) || eventstore_field(e.stream)
        || eventstore_field(e.type) || eventstore_field(e.schema_version::text) || eventstore_field(e.payload)
        || eventstore_field(e.agent_id) || eventstore_field(e.lease_resource)
        || eventstore_field(e.fencing_token::text) || eventstore_field(eventstore_micros(e.recorded_at))
$$;

-- As 0006's eventstore_chain_row, for this chain: the first row of a transaction locks the head row
-- (held to commit, so the chain has one order), later rows of the same transaction carry the running
-- head in a transaction-tagged setting; the statement trigger eventstore_chain_head writes it back.
CREATE FUNCTION eventstore_chain_lock_event() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path FROM CURRENT AS $$
DECLARE
    state text := current_setting('eventstore.chain.lock_events', true);
    tx text := pg_current_xact_id()::text;
    s bigint;
    h bytea;
BEGIN
    IF state IS NOT NULL AND split_part(state, ':', 1) = tx THEN
        s := split_part(state, ':', 2)::bigint;
        h := decode(split_part(state, ':', 3), 'hex');
    ELSE
        SELECT seq, hash INTO s, h FROM history_heads WHERE name = 'lock_events' FOR UPDATE;
    END IF;
    NEW.chain_seq := s + 1;
    NEW.prev_hash := h;
    NEW.recorded_at := clock_timestamp();
    NEW.hash := sha256(h || eventstore_lock_event_bytes(NEW));
    PERFORM set_config('eventstore.chain.lock_events',
                       tx || ':' || NEW.chain_seq || ':' || encode(NEW.hash, 'hex'), false);
    RETURN NEW;
END $$;
CREATE TRIGGER lock_events_chain BEFORE INSERT ON lock_events
    FOR EACH ROW EXECUTE FUNCTION eventstore_chain_lock_event();
CREATE TRIGGER lock_events_chain_head AFTER INSERT ON lock_events
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore_chain_head();
CREATE TRIGGER lock_events_append_only BEFORE UPDATE OR DELETE ON lock_events
    FOR EACH ROW EXECUTE FUNCTION eventstore_forbid_change();
CREATE TRIGGER lock_events_no_truncate BEFORE TRUNCATE ON lock_events
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore_forbid_change();

-- The whole lock history in one order: the lock events the event log holds from before this revision
-- (log 'events', n = position), then the lock chain (log 'locks', n = chain_seq).
CREATE VIEW lock_history AS
SELECT 'events'::text AS log, position AS n, 0 AS log_order, position, NULL::bigint AS lock_seq, event_id, stream,
       type, agent_id, lease_resource, fencing_token, recorded_at, payload
FROM events
WHERE (stream LIKE 'lease-%' OR stream LIKE 'agent-%')
  AND type IN ('LeaseGranted', 'LeaseDenied', 'LeaseWaited', 'LeaseRenewed', 'LeaseReleased', 'LeaseExpired',
               'LeaseRevoked', 'DeadlockFound', 'WaitExceeded', 'AgentKilled', 'AgentRevived',
               'LockOrderViolated')
UNION ALL
SELECT 'locks', chain_seq, 1, NULL::bigint, chain_seq, event_id, stream, type, agent_id, lease_resource,
       fencing_token, recorded_at, payload::jsonb
FROM lock_events;

-- The common grant in one round trip (eventstore/postgres/leases.py tries it first): the resource has
-- no holder row at all (an expired one needs the full step, which fences it), nobody queued ahead of the
-- agent, the agent is known and active and (when the lock order is to be checked) holds no other live
-- lease. Then grant with a new fencing token and chain its LeaseGranted; otherwise return no row and
-- change nothing, and the caller runs the full step in the same transaction. Same lock order as the
-- full step: the resource's advisory lock, lease tables, agents, resources, the lock chain's head.
CREATE FUNCTION eventstore_lease_grant_free(r text, a text, m text, ttl float8, ns int, k int, check_order boolean)
RETURNS TABLE (out_token bigint, out_expires_at timestamptz, out_waited float8) LANGUAGE plpgsql AS $$
DECLARE
    head record;
    queued boolean;
    tok bigint;
    exp timestamptz;
    waited float8 := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(ns, k);
    IF EXISTS (SELECT 1 FROM lease_holders h WHERE h.resource = r) THEN RETURN; END IF;
    IF check_order AND EXISTS (SELECT 1 FROM lease_holders h WHERE h.agent_id = a) THEN RETURN; END IF;
    SELECT q.agent_id, q.enqueued_at INTO head FROM lease_waiters q WHERE q.resource = r ORDER BY q.seq LIMIT 1;
    queued := FOUND;
    IF queued AND head.agent_id <> a THEN RETURN; END IF;
    -- Only now, about to grant, is the agent row locked (a kill waits for this transaction): a call that
    -- grants nothing writes nothing and its commit needs no flush.
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
    INSERT INTO lock_events (event_id, stream, type, schema_version, payload, agent_id, lease_resource, fencing_token)
    VALUES (gen_random_uuid(), 'lease-' || r, 'LeaseGranted', 1,
            jsonb_build_object('agent_id', a, 'mode', m, 'resource', r, 'token', tok, 'ttl_seconds', ttl,
                               'waited_seconds', waited)::text,
            a, r, tok);
    RETURN QUERY SELECT tok, exp, waited;
END $$;
REVOKE ALL ON FUNCTION eventstore_lease_grant_free(text, text, text, float8, int, int, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eventstore_lease_grant_free(text, text, text, float8, int, int, boolean)
    TO eventstore_coordinator;

GRANT SELECT, INSERT ON lock_events TO eventstore_coordinator;
GRANT SELECT ON lock_events, lock_history TO eventstore_coordinator, eventstore_auditor, eventstore_operator;
"""
    )


def downgrade() -> None:
    op.execute(
        """
DROP FUNCTION IF EXISTS eventstore_lease_grant_free(text, text, text, float8, int, int, boolean);
DROP VIEW IF EXISTS lock_history;
DROP FUNCTION IF EXISTS eventstore_lock_event_bytes(lock_events);
DROP TABLE IF EXISTS lock_events;
DROP FUNCTION IF EXISTS eventstore_chain_lock_event();
DELETE FROM history_heads WHERE name = 'lock_events';
"""
    )
