"""Agents are not trusted: credentials, permissions, guarded streams, scoped keys, least-privilege roles.

- ``agent_credentials``: one row per credential (key id, HMAC key, status active/revoked/rotated). The
  key must be kept to check an HMAC; only the owner and ``eventstore_projector`` can read it.
- ``agent_permissions``: the stream patterns and event types an agent may emit (NULL: any).
- ``guarded_streams``: stream pattern -> resource template whose lease a write needs.
- ``operator_actions``: who (``session_user``) registered, rotated, removed, killed, revived, guarded.
- Idempotency keys are unique per agent: ``UNIQUE (agent_id, idempotency_key)``.
- Group roles (NOLOGIN) ``eventstore_projector``, ``eventstore_agent``, ``eventstore_auditor``,
  ``eventstore_operator``, ``eventstore_coordinator`` with their grants; the tables stay owned by the
  migrating role, and operator actions go through SECURITY DEFINER functions. See docs/security.md.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

ROLES = ("eventstore_projector", "eventstore_agent", "eventstore_auditor", "eventstore_operator",
         "eventstore_coordinator")


def upgrade() -> None:
    # Roles are cluster-wide: create each once (a second database on the same server reuses them).
    for role in ROLES:
        op.execute(f"""
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
        CREATE ROLE {role} NOLOGIN;
    END IF;
END $$;""")
    op.execute(
        r"""
ALTER TABLE events DROP CONSTRAINT events_idempotency_key_key;
ALTER TABLE events ADD CONSTRAINT events_agent_key_key UNIQUE (agent_id, idempotency_key);

CREATE TABLE agent_credentials (
    key_id text PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{16}$'),
    agent_id text NOT NULL,
    secret bytea NOT NULL CHECK (length(secret) = 32),
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked', 'rotated')),
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL DEFAULT session_user,
    retired_at timestamptz,
    retired_by text
);
CREATE INDEX agent_credentials_agent_idx ON agent_credentials (agent_id);
-- At most one active credential per agent.
CREATE UNIQUE INDEX agent_credentials_active_idx ON agent_credentials (agent_id) WHERE status = 'active';

CREATE TABLE agent_permissions (
    agent_id text PRIMARY KEY,
    stream_patterns text[],
    event_types text[],
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text NOT NULL DEFAULT session_user
);

CREATE TABLE guarded_streams (
    pattern text PRIMARY KEY CHECK (length(pattern) BETWEEN 1 AND 200),
    resource text NOT NULL DEFAULT '{stream}' CHECK (length(resource) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL DEFAULT session_user
);

CREATE TABLE operator_actions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action text NOT NULL,
    target text NOT NULL,
    detail text,
    actor text NOT NULL DEFAULT session_user,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER operator_actions_append_only BEFORE UPDATE OR DELETE ON operator_actions
    FOR EACH ROW EXECUTE FUNCTION eventstore_forbid_change();
CREATE TRIGGER operator_actions_no_truncate BEFORE TRUNCATE ON operator_actions
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore_forbid_change();

-- Operator actions. SECURITY DEFINER: they run with the owner's rights, so the operator role needs no
-- write access to any table; session_user (the login role) is recorded as the actor.
CREATE FUNCTION eventstore_register_agent(p_agent text, p_key_id text, p_secret bytea,
                                          p_streams text[], p_types text[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    UPDATE agent_credentials SET status = 'rotated', retired_at = now(), retired_by = session_user
     WHERE agent_id = p_agent AND status = 'active';
    INSERT INTO agent_credentials (key_id, agent_id, secret) VALUES (p_key_id, p_agent, p_secret);
    INSERT INTO agent_permissions (agent_id, stream_patterns, event_types) VALUES (p_agent, p_streams, p_types)
    ON CONFLICT (agent_id) DO UPDATE SET stream_patterns = EXCLUDED.stream_patterns,
        event_types = EXCLUDED.event_types, updated_at = now(), updated_by = session_user;
    INSERT INTO agents (agent_id) VALUES (p_agent) ON CONFLICT (agent_id) DO NOTHING;
    INSERT INTO operator_actions (action, target, detail)
    VALUES ('register', p_agent, format('key %s; streams %s; types %s', p_key_id,
            coalesce(p_streams::text, 'any'), coalesce(p_types::text, 'any')));
END $$;

CREATE FUNCTION eventstore_rotate_agent(p_agent text, p_key_id text, p_secret bytea) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    UPDATE agent_credentials SET status = 'rotated', retired_at = now(), retired_by = session_user
     WHERE agent_id = p_agent AND status = 'active';
    IF NOT FOUND THEN RETURN false; END IF;
    INSERT INTO agent_credentials (key_id, agent_id, secret) VALUES (p_key_id, p_agent, p_secret);
    INSERT INTO operator_actions (action, target, detail) VALUES ('rotate', p_agent, 'key ' || p_key_id);
    RETURN true;
END $$;

CREATE FUNCTION eventstore_remove_agent(p_agent text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    UPDATE agent_credentials SET status = 'revoked', retired_at = now(), retired_by = session_user
     WHERE agent_id = p_agent AND status = 'active';
    IF NOT FOUND THEN RETURN false; END IF;
    INSERT INTO operator_actions (action, target) VALUES ('remove', p_agent);
    RETURN true;
END $$;

CREATE FUNCTION eventstore_kill_agent(p_agent text, p_reason text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO agents (agent_id, status, reason, changed_at) VALUES (p_agent, 'killed', p_reason, now())
    ON CONFLICT (agent_id) DO UPDATE SET status = 'killed', reason = EXCLUDED.reason, changed_at = now();
    INSERT INTO operator_actions (action, target, detail) VALUES ('kill', p_agent, p_reason);
END $$;

CREATE FUNCTION eventstore_revive_agent(p_agent text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    UPDATE agents SET status = 'active', reason = NULL, changed_at = now() WHERE agent_id = p_agent;
    IF NOT FOUND THEN RETURN false; END IF;
    INSERT INTO operator_actions (action, target) VALUES ('revive', p_agent);
    RETURN true;
END $$;

CREATE FUNCTION eventstore_guard(p_pattern text, p_resource text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO guarded_streams (pattern, resource) VALUES (p_pattern, p_resource)
    ON CONFLICT (pattern) DO UPDATE SET resource = EXCLUDED.resource, created_at = now(),
        created_by = session_user;
    INSERT INTO operator_actions (action, target, detail) VALUES ('guard', p_pattern, p_resource);
END $$;

CREATE FUNCTION eventstore_unguard(p_pattern text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    DELETE FROM guarded_streams WHERE pattern = p_pattern;
    IF NOT FOUND THEN RETURN false; END IF;
    INSERT INTO operator_actions (action, target) VALUES ('unguard', p_pattern);
    RETURN true;
END $$;

-- Nobody runs the operator functions unless granted.
REVOKE ALL ON FUNCTION eventstore_register_agent(text, text, bytea, text[], text[]),
    eventstore_rotate_agent(text, text, bytea), eventstore_remove_agent(text), eventstore_kill_agent(text, text),
    eventstore_revive_agent(text),
    eventstore_guard(text, text), eventstore_unguard(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eventstore_register_agent(text, text, bytea, text[], text[]),
    eventstore_rotate_agent(text, text, bytea), eventstore_remove_agent(text), eventstore_kill_agent(text, text),
    eventstore_revive_agent(text), eventstore_guard(text, text), eventstore_unguard(text) TO eventstore_operator;

-- Nobody but the owner gets anything by default; then each role gets exactly what it needs.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO eventstore_projector, eventstore_agent, eventstore_auditor, eventstore_operator,
    eventstore_coordinator;

-- Projector: appends the log, writes outcomes, dead letters, offsets, stream versions and read models.
-- SELECT ... FOR SHARE needs an UPDATE privilege on some column: it gets one on a harmless column only.
GRANT SELECT, INSERT ON events, outcomes, dead_letters TO eventstore_projector;
GRANT SELECT, INSERT, UPDATE ON streams, consumer_offsets, publisher_checkpoints TO eventstore_projector;
GRANT DELETE ON consumer_offsets TO eventstore_projector;
GRANT SELECT, UPDATE ON log_head TO eventstore_projector;
GRANT SELECT ON agents, resources, lease_holders, agent_credentials, agent_permissions, guarded_streams
    TO eventstore_projector;
GRANT UPDATE (changed_at) ON agents TO eventstore_projector;
GRANT UPDATE (resource) ON resources TO eventstore_projector;
GRANT UPDATE (ttl_seconds) ON lease_holders TO eventstore_projector;
GRANT UPDATE (created_at) ON agent_credentials TO eventstore_projector;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO eventstore_projector;
-- Read-model tables are created (and so owned) by the projector: they are rebuildable, not evidence.
GRANT CREATE ON SCHEMA public TO eventstore_projector;

-- Agent: reads what the SDK reads (the log, stream versions, outcomes); writes nothing.
GRANT SELECT ON events, streams, log_head, outcomes TO eventstore_agent;

-- Auditor: reads the history and the state around it, never a credential's key.
GRANT SELECT ON events, streams, log_head, outcomes, dead_letters, agents, resources, lease_holders,
    lease_waiters, agent_permissions, guarded_streams, operator_actions, consumer_offsets,
    publisher_checkpoints TO eventstore_auditor;
GRANT SELECT (key_id, agent_id, status, created_at, created_by, retired_at, retired_by)
    ON agent_credentials TO eventstore_auditor, eventstore_operator;

-- Operator: the functions above, and what it needs to see before acting.
GRANT SELECT ON agents, agent_permissions, guarded_streams, operator_actions, lease_holders, lease_waiters,
    resources TO eventstore_operator;

-- Coordinator: the lease tables, agents (kill/revive), fencing tokens, and the lock history it appends
-- to the log. It is trusted with leases (it grants them), so it is not an agent's role (docs/security.md).
GRANT SELECT, INSERT, UPDATE, DELETE ON lease_holders, lease_waiters TO eventstore_coordinator;
GRANT SELECT, INSERT, UPDATE ON agents, resources, streams TO eventstore_coordinator;
GRANT SELECT, INSERT ON events TO eventstore_coordinator;
GRANT SELECT, UPDATE ON log_head TO eventstore_coordinator;
GRANT SELECT ON outcomes TO eventstore_coordinator;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO eventstore_coordinator;

-- Read models the projector creates later are readable by agents and auditors (needs a migrating role
-- that is a superuser or a member of eventstore_projector; otherwise grant SELECT on them by hand).
DO $$ BEGIN
    ALTER DEFAULT PRIVILEGES FOR ROLE eventstore_projector IN SCHEMA public
        GRANT SELECT ON TABLES TO eventstore_agent, eventstore_auditor;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'read models: grant SELECT on them to eventstore_agent and eventstore_auditor by hand';
END $$;
"""
    )


def downgrade() -> None:
    op.execute(
        """
DROP FUNCTION IF EXISTS eventstore_register_agent(text, text, bytea, text[], text[]),
    eventstore_rotate_agent(text, text, bytea), eventstore_remove_agent(text), eventstore_kill_agent(text, text),
    eventstore_revive_agent(text), eventstore_guard(text, text), eventstore_unguard(text);
DROP TABLE IF EXISTS operator_actions, guarded_streams, agent_permissions, agent_credentials;
ALTER TABLE events DROP CONSTRAINT IF EXISTS events_agent_key_key;
ALTER TABLE events ADD CONSTRAINT events_idempotency_key_key UNIQUE (idempotency_key);
"""
    )
