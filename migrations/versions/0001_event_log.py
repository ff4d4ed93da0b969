"""The write path: event log with hash chain, stream versions, outcomes, consumer offsets, dead letters.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        r"""
-- One row: the head of the log. Appenders lock it (UPDATE ... RETURNING) for the rest of their
-- transaction, so positions are handed out gaplessly and in commit order (promise 4), and each
-- event's hash chains onto the previous one (promise 8).
CREATE TABLE log_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    position bigint NOT NULL DEFAULT 0,
    hash bytea NOT NULL DEFAULT '\x0000000000000000000000000000000000000000000000000000000000000000'
);
INSERT INTO log_head DEFAULT VALUES;

CREATE TABLE streams (
    stream text PRIMARY KEY,
    version bigint NOT NULL CHECK (version >= 0)
);

CREATE TABLE events (
    position bigint PRIMARY KEY CHECK (position > 0),
    event_id uuid NOT NULL UNIQUE,
    stream text NOT NULL,
    version bigint NOT NULL CHECK (version > 0),
    type text NOT NULL,
    schema_version integer NOT NULL,
    payload jsonb NOT NULL,
    agent_id text NOT NULL,
    idempotency_key text NOT NULL UNIQUE,
    correlation_id uuid NOT NULL,
    causation_id uuid,
    occurred_at timestamptz,
    recorded_at timestamptz NOT NULL,
    lease_resource text,
    fencing_token bigint,
    intent_hash bytea NOT NULL,
    prev_hash bytea NOT NULL,
    hash bytea NOT NULL,
    UNIQUE (stream, version)
);
CREATE INDEX events_agent_idx ON events (agent_id, position);
CREATE INDEX events_recorded_at_idx ON events (recorded_at);
COMMENT ON COLUMN events.occurred_at IS 'time as the agent claims it; never used for ordering';
COMMENT ON COLUMN events.recorded_at IS 'the database clock (transaction time) when the event was committed';

-- Decisions that did not commit an event: duplicate, conflict, rejected. The committed outcome of
-- an event is its row in events.
CREATE TABLE outcomes (
    event_id uuid PRIMARY KEY,
    agent_id text NOT NULL,
    idempotency_key text,
    stream text,
    status text NOT NULL CHECK (status IN ('duplicate', 'conflict', 'rejected')),
    expected_version bigint,
    current_version bigint,
    original_position bigint,
    reason text NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT now(),
    source_partition integer,
    source_offset bigint
);
CREATE INDEX outcomes_agent_idx ON outcomes (agent_id, decided_at);

-- Offsets of the intake topic, written in the same transaction as the effects (promise 5);
-- the projector seeks to these on assignment and fences zombies against them.
CREATE TABLE consumer_offsets (
    group_id text NOT NULL,
    topic text NOT NULL,
    partition integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);

CREATE TABLE dead_letters (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic text NOT NULL,
    partition integer NOT NULL,
    "offset" bigint NOT NULL,
    key bytea,
    value bytea,
    reason text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (topic, partition, "offset")
);

-- Agents known to the coordinator; a killed agent's new events are rejected by the projector.
CREATE TABLE agents (
    agent_id text PRIMARY KEY,
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'killed')),
    reason text,
    changed_at timestamptz NOT NULL DEFAULT now()
);

-- The newest fencing token granted per resource; events carrying an older token are refused.
CREATE SEQUENCE fencing_tokens AS bigint START 1;
CREATE TABLE resources (
    resource text PRIMARY KEY,
    fence_token bigint NOT NULL
);

-- History is evidence: the database itself refuses to change or remove it.
CREATE FUNCTION eventstore_forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'table % is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'ES001', HINT = 'history is corrected by appending a compensating event';
END
$$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION eventstore_forbid_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore_forbid_change();
CREATE TRIGGER outcomes_append_only BEFORE UPDATE OR DELETE ON outcomes
    FOR EACH ROW EXECUTE FUNCTION eventstore_forbid_change();
CREATE TRIGGER outcomes_no_truncate BEFORE TRUNCATE ON outcomes
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore_forbid_change();
"""
    )


def downgrade() -> None:
    op.execute(
        """
DROP TABLE IF EXISTS resources, agents, dead_letters, consumer_offsets, outcomes, events, streams, log_head;
DROP SEQUENCE IF EXISTS fencing_tokens;
DROP FUNCTION IF EXISTS eventstore_forbid_change();
"""
    )
