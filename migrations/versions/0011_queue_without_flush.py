"""Queueing without a flush of its own (issue 11, aim 4, round 3): the one-call queueing
``eventstore_lease_queue`` (0010) sets ``synchronous_commit = off`` for its transaction when, and only when,
it wrote a place in the queue (the queue row and its chained ``LeaseWaited``), as the full step does in
eventstore/postgres/leases.py.

Why that keeps every promise (docs/perf-leases.md "Round 3", docs/coordination.md): the transaction
still appends to the lock chain under the chain's head row, so its WAL records come before those of any
later chain row; every later durable commit (the release that hands the lease to this waiter, any other
lease step) flushes the WAL up to its own commit record and so this one with it. A crash can therefore
only lose a queue place that nothing durable has yet followed: no durable chain row ever follows a lost
one (the chain has no gap) and no grant was made on it (a grant is a durable commit that read it). The
waiter was told nothing but "wait"; its next poll finds no place and queues again. What is saved is the
flush under the resource's advisory lock and the chain head, which the release of the resource held by
the queue's head waited for: one WAL flush per contended turnover instead of two.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

QUEUE_ASYNC = r"""
CREATE OR REPLACE FUNCTION eventstore_lease_queue(r text, a text, m text, ttl float8, ns int, k int,
                                                  check_order boolean,
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
    -- Only a place in the queue was written: no flush of its own (migration 0011).
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY SELECT held;
END $$;
"""

QUEUE_0010 = r"""
CREATE OR REPLACE FUNCTION eventstore_lease_queue(r text, a text, m text, ttl float8, ns int, k int,
                                                  check_order boolean,
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
"""


def upgrade() -> None:
    op.execute(QUEUE_ASYNC)


def downgrade() -> None:
    op.execute(QUEUE_0010)
