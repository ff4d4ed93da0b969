"""Leases: current holders and the FIFO wait queue of the coordinator (promise 7).

The fencing side (``resources.fence_token``, sequence ``fencing_tokens``, ``agents``) is in 0001;
the history of every lock event is in the event log. These two tables are only the current state,
which is why rows here are updated and deleted freely.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        r"""
-- Who holds which resource now. Shared holders of one resource share the token of their group;
-- an exclusive holder is alone. expires_at is computed on the database clock, never the agent's.
CREATE TABLE lease_holders (
    resource text NOT NULL,
    agent_id text NOT NULL,
    mode text NOT NULL CHECK (mode IN ('exclusive', 'shared')),
    token bigint NOT NULL,
    hold_count integer NOT NULL DEFAULT 1 CHECK (hold_count >= 1),
    ttl_seconds double precision NOT NULL CHECK (ttl_seconds > 0),
    granted_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (resource, agent_id)
);
CREATE INDEX lease_holders_agent_idx ON lease_holders (agent_id);

-- Agents waiting for a resource, served first come, first served in seq order. A waiter refreshes
-- heartbeat_at on every poll; a row whose heartbeat is old belongs to a crashed process and is purged.
CREATE TABLE lease_waiters (
    seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    resource text NOT NULL,
    agent_id text NOT NULL,
    mode text NOT NULL CHECK (mode IN ('exclusive', 'shared')),
    enqueued_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    expected_seconds double precision,
    alerted boolean NOT NULL DEFAULT false,
    PRIMARY KEY (resource, agent_id)
);
CREATE INDEX lease_waiters_queue_idx ON lease_waiters (resource, seq);
"""
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS lease_waiters, lease_holders;")
