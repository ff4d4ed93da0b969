"""Identity refusals apart from the event ids they claim (docs/security.md, "Identity refusals").

Until this revision an envelope refused for its identity (``bad_signature``, ``unknown_agent``,
``credential_revoked``) was recorded in ``outcomes`` under the event id and the agent it *names*. Anyone who
can produce to the intake topic can name another agent and one of its pending event ids, so the forged
refusal answered that agent's table lookup (its handle settled REJECTED while its genuine event committed)
and took the event id's primary key (the agent's genuine non-committed decision was then dropped by
``ON CONFLICT (event_id) DO NOTHING``).

Such refusals now go to ``identity_refusals``: one row per refused envelope, keyed by its own chain
sequence, with the event id and agent it claimed, the key id it carried (NULL: unsigned) and ``proven``:
true only when the envelope's MAC verified under the credential its key id names (so the refusal came from
a holder of that key: a revoked credential, or another agent's). The table is append-only and hash-chained
like 0006's side histories (head row ``history_heads.identity_refusals``, recomputed in Python by
``eventstore verify``); each row's hash is ``sha256(prev_hash || f(chain_seq) || f(claimed_event_id) ||
f(agent_id) || f(key_id) || f(proven) || f(reason_code) || f(reason) || f(idempotency_key) || f(stream) ||
f(expected_version) || f(current_version) || f(source_partition) || f(source_offset) || f(decided_at))``
with 0006's ``eventstore_field`` encoding.
``current_version`` is the stream's version when the envelope was refused, so the history shows the
refusal among the decisions around that write, as it did from ``outcomes``. Identity refusals recorded in
``outcomes`` before this revision stay there (the chain cannot give them up).

Revision ID: 0012
Revises: 0011
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        r"""
CREATE TABLE identity_refusals (
    chain_seq bigint PRIMARY KEY,
    claimed_event_id uuid NOT NULL,
    agent_id text NOT NULL,
    key_id text,
    proven boolean NOT NULL,
    reason_code text NOT NULL,
    reason text NOT NULL,
    idempotency_key text,
    stream text,
    expected_version bigint,
    current_version bigint,
    source_partition integer,
    source_offset bigint,
    decided_at timestamptz NOT NULL DEFAULT now(),
    prev_hash bytea NOT NULL,
    hash bytea NOT NULL
);
CREATE INDEX identity_refusals_claimed_idx ON identity_refusals (claimed_event_id);
CREATE INDEX identity_refusals_agent_idx ON identity_refusals (agent_id, decided_at);
CREATE INDEX identity_refusals_stream_version_idx ON identity_refusals (stream, current_version);
COMMENT ON TABLE identity_refusals IS
    'envelopes refused for their identity, apart from the event ids they claim (never an agent''s decision '
    'unless proven for its key); append-only, hash-chained';
COMMENT ON COLUMN identity_refusals.proven IS
    'the envelope''s MAC verified under the credential key_id names: a holder of that key sent it';
COMMENT ON COLUMN identity_refusals.decided_at IS 'the database clock (transaction time), never an agent clock';
INSERT INTO history_heads (name) VALUES ('identity_refusals');

CREATE FUNCTION eventstore_identity_refusal_bytes(r identity_refusals) RETURNS bytea LANGUAGE sql STABLE AS $$
    SELECT eventstore_field(r.chain_seq::text) || eventstore_field(r.claimed_event_id::text)
        || eventstore_field(r.agent_id) || eventstore_field(r.key_id) || eventstore_field(r.proven::text)
        || eventstore_field(r.reason_code) || eventstore_field(r.reason) || eventstore_field(r.idempotency_key)
        || eventstore_field(r.stream) || eventstore_field(r.expected_version::text)
        || eventstore_field(r.current_version::text) || eventstore_field(r.source_partition::text)
        || eventstore_field(r.source_offset::text) || eventstore_field(eventstore_micros(r.decided_at))
$$;

-- As 0009's eventstore_chain_lock_event, for this chain. A row already recorded for the same intake
-- message and claimed id (a batch replayed after a crash) is skipped, checked under the head's lock.
CREATE FUNCTION eventstore_chain_identity_refusal() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path FROM CURRENT AS $$
DECLARE
    state text := current_setting('eventstore.chain.identity_refusals', true);
    tx text := pg_current_xact_id()::text;
    s bigint;
    h bytea;
BEGIN
    IF state IS NOT NULL AND split_part(state, ':', 1) = tx THEN
        s := split_part(state, ':', 2)::bigint;
        h := decode(split_part(state, ':', 3), 'hex');
    ELSE
        SELECT seq, hash INTO s, h FROM history_heads WHERE name = 'identity_refusals' FOR UPDATE;
    END IF;
    IF NEW.source_offset IS NOT NULL AND EXISTS (
            SELECT 1 FROM identity_refusals
            WHERE claimed_event_id = NEW.claimed_event_id AND source_partition = NEW.source_partition
              AND source_offset = NEW.source_offset) THEN
        RETURN NULL;
    END IF;
    NEW.chain_seq := s + 1;
    NEW.prev_hash := h;
    NEW.decided_at := now();
    NEW.hash := sha256(h || eventstore_identity_refusal_bytes(NEW));
    PERFORM set_config('eventstore.chain.identity_refusals',
                       tx || ':' || NEW.chain_seq || ':' || encode(NEW.hash, 'hex'), false);
    RETURN NEW;
END $$;
CREATE TRIGGER identity_refusals_chain BEFORE INSERT ON identity_refusals
    FOR EACH ROW EXECUTE FUNCTION eventstore_chain_identity_refusal();
CREATE TRIGGER identity_refusals_chain_head AFTER INSERT ON identity_refusals
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore_chain_head();
CREATE TRIGGER identity_refusals_append_only BEFORE UPDATE OR DELETE ON identity_refusals
    FOR EACH ROW EXECUTE FUNCTION eventstore_forbid_change();
CREATE TRIGGER identity_refusals_no_truncate BEFORE TRUNCATE ON identity_refusals
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore_forbid_change();

GRANT SELECT, INSERT ON identity_refusals TO eventstore_projector;
GRANT SELECT ON identity_refusals TO eventstore_agent, eventstore_auditor, eventstore_operator,
    eventstore_coordinator;
"""
    )


def downgrade() -> None:
    op.execute(
        """
DROP FUNCTION IF EXISTS eventstore_identity_refusal_bytes(identity_refusals);
DROP TABLE IF EXISTS identity_refusals;
DROP FUNCTION IF EXISTS eventstore_chain_identity_refusal();
DELETE FROM history_heads WHERE name = 'identity_refusals';
"""
    )
