"""Side histories chained and append-only: outcomes and dead letters each get a hash chain with its own
head row (``history_heads``), computed by the database in the inserting transaction; dead letters
become append-only like the event log and outcomes (issue 9).

Each row's ``hash`` is ``sha256(prev_hash || f(chain_seq) || f(col1) || ...)`` with ``f(NULL) = 0x00``
and ``f(v) = 0x01 || length(v) as 4 bytes big-endian || v`` over the column's bytes (uuid and numbers as
text, timestamps as microseconds since the epoch, text as UTF-8, bytea as is):
eventstore.core.hashing.row_hash computes the same in Python, which is what ``eventstore verify``
does, so a rewritten function in the database cannot hide a change. The chain trigger skips a row
whose key already exists (what ``ON CONFLICT DO NOTHING`` would do), under the head's lock, so a
skipped row never advances the head.

Revision ID: 0006
Revises: 0004 (re-chained onto 0005 at merge; independent of its content)
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        r"""
CREATE TABLE history_heads (
    name text PRIMARY KEY,
    seq bigint NOT NULL DEFAULT 0 CHECK (seq >= 0),
    hash bytea NOT NULL DEFAULT '\x0000000000000000000000000000000000000000000000000000000000000000'
);
INSERT INTO history_heads (name) VALUES ('outcomes'), ('dead_letters');

CREATE FUNCTION eventstore_field(v text) RETURNS bytea LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN v IS NULL THEN '\x00'::bytea
                ELSE '\x01'::bytea || int4send(octet_length(convert_to(v, 'UTF8'))) || convert_to(v, 'UTF8') END
$$;
CREATE FUNCTION eventstore_field(v bytea) RETURNS bytea LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN v IS NULL THEN '\x00'::bytea ELSE '\x01'::bytea || int4send(octet_length(v)) || v END
$$;
CREATE FUNCTION eventstore_micros(t timestamptz) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (extract(epoch FROM t) * 1000000)::bigint::text
$$;

ALTER TABLE outcomes ADD COLUMN chain_seq bigint, ADD COLUMN prev_hash bytea, ADD COLUMN hash bytea;
ALTER TABLE dead_letters ADD COLUMN chain_seq bigint, ADD COLUMN prev_hash bytea, ADD COLUMN hash bytea;

-- The bytes hashed after prev_hash, columns in this order (eventstore/postgres/sidechains.py lists the same).
CREATE FUNCTION eventstore_outcome_bytes(o outcomes) RETURNS bytea LANGUAGE sql STABLE AS $$
    SELECT eventstore_field(o.chain_seq::text) || eventstore_field(o.event_id::text)
        || eventstore_field(o.agent_id) || eventstore_field(o.idempotency_key) || eventstore_field(o.stream)
        || eventstore_field(o.status) || eventstore_field(o.expected_version::text)
        || eventstore_field(o.current_version::text) || eventstore_field(o.original_position::text)
        || eventstore_field(o.reason) || eventstore_field(eventstore_micros(o.decided_at))
        || eventstore_field(o.source_partition::text) || eventstore_field(o.source_offset::text)
        || eventstore_field(o.reason_code)
$$;
CREATE FUNCTION eventstore_dead_letter_bytes(d dead_letters) RETURNS bytea LANGUAGE sql STABLE AS $$
    SELECT eventstore_field(d.chain_seq::text) || eventstore_field(d.id::text) || eventstore_field(d.topic)
        || eventstore_field(d.partition::text) || eventstore_field(d."offset"::text)
        || eventstore_field(d.key) || eventstore_field(d.value) || eventstore_field(d.reason)
        || eventstore_field(eventstore_micros(d.recorded_at))
$$;

-- Rows decided before this revision are chained once, oldest first, with the append-only trigger
-- lifted inside the migration's transaction (as in 0004).
ALTER TABLE outcomes DISABLE TRIGGER outcomes_append_only;
DO $$
DECLARE r record; s bigint := 0; h bytea := '\x0000000000000000000000000000000000000000000000000000000000000000';
BEGIN
    FOR r IN SELECT event_id FROM outcomes ORDER BY decided_at, event_id LOOP
        s := s + 1;
        UPDATE outcomes SET chain_seq = s, prev_hash = h WHERE event_id = r.event_id;
        UPDATE outcomes o SET hash = sha256(h || eventstore_outcome_bytes(o)) WHERE o.event_id = r.event_id
            RETURNING o.hash INTO h;
    END LOOP;
    UPDATE history_heads SET seq = s, hash = h WHERE name = 'outcomes';
END $$;
ALTER TABLE outcomes ENABLE TRIGGER outcomes_append_only;
DO $$
DECLARE r record; s bigint := 0; h bytea := '\x0000000000000000000000000000000000000000000000000000000000000000';
BEGIN
    FOR r IN SELECT id FROM dead_letters ORDER BY id LOOP
        s := s + 1;
        UPDATE dead_letters SET chain_seq = s, prev_hash = h WHERE id = r.id;
        UPDATE dead_letters d SET hash = sha256(h || eventstore_dead_letter_bytes(d)) WHERE d.id = r.id
            RETURNING d.hash INTO h;
    END LOOP;
    UPDATE history_heads SET seq = s, hash = h WHERE name = 'dead_letters';
END $$;
ALTER TABLE outcomes ALTER COLUMN chain_seq SET NOT NULL, ALTER COLUMN prev_hash SET NOT NULL,
    ALTER COLUMN hash SET NOT NULL;
ALTER TABLE dead_letters ALTER COLUMN chain_seq SET NOT NULL, ALTER COLUMN prev_hash SET NOT NULL,
    ALTER COLUMN hash SET NOT NULL;
CREATE UNIQUE INDEX outcomes_chain_seq_idx ON outcomes (chain_seq);
CREATE UNIQUE INDEX dead_letters_chain_seq_idx ON dead_letters (chain_seq);

-- The chain triggers run with the migration owner's rights (SECURITY DEFINER), so a runtime role that
-- may only INSERT into outcomes or dead_letters needs no right on history_heads. The first row of a
-- transaction locks the head row; the running head is then carried from row to row in a setting
-- tagged with the transaction id (rolled back with the (sub)transaction like the rows), and written
-- to the head row once per statement: updating one row per inserted row would cost far more.
CREATE FUNCTION eventstore_chain_row() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path FROM CURRENT AS $$
DECLARE
    chain text := TG_TABLE_NAME;
    state text := current_setting('eventstore.chain.' || chain, true);
    tx text := pg_current_xact_id()::text;
    s bigint;
    h bytea;
BEGIN
    IF state IS NOT NULL AND split_part(state, ':', 1) = tx THEN
        s := split_part(state, ':', 2)::bigint;
        h := decode(split_part(state, ':', 3), 'hex');
    ELSE
        SELECT seq, hash INTO s, h FROM history_heads WHERE name = chain FOR UPDATE;
    END IF;
    -- Skipped, as ON CONFLICT DO NOTHING would (checked under the head's lock, so never racing).
    IF chain = 'outcomes' THEN
        IF EXISTS (SELECT 1 FROM outcomes WHERE event_id = NEW.event_id) THEN RETURN NULL; END IF;
    ELSIF EXISTS (SELECT 1 FROM dead_letters
                  WHERE topic = NEW.topic AND partition = NEW.partition AND "offset" = NEW."offset") THEN
        RETURN NULL;
    END IF;
    NEW.chain_seq := s + 1;
    NEW.prev_hash := h;
    IF chain = 'outcomes' THEN
        NEW.hash := sha256(h || eventstore_outcome_bytes(NEW));
    ELSE
        NEW.hash := sha256(h || eventstore_dead_letter_bytes(NEW));
    END IF;
    PERFORM set_config('eventstore.chain.' || chain, tx || ':' || NEW.chain_seq || ':' || encode(NEW.hash, 'hex'),
                       false);
    RETURN NEW;
END $$;
CREATE FUNCTION eventstore_chain_head() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path FROM CURRENT AS $$
DECLARE
    state text := current_setting('eventstore.chain.' || TG_TABLE_NAME, true);
BEGIN
    IF state IS NOT NULL AND split_part(state, ':', 1) = pg_current_xact_id()::text THEN
        UPDATE history_heads
        SET seq = split_part(state, ':', 2)::bigint, hash = decode(split_part(state, ':', 3), 'hex')
        WHERE name = TG_TABLE_NAME;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER outcomes_chain BEFORE INSERT ON outcomes
    FOR EACH ROW EXECUTE FUNCTION eventstore_chain_row();
CREATE TRIGGER outcomes_chain_head AFTER INSERT ON outcomes
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore_chain_head();
CREATE TRIGGER dead_letters_chain BEFORE INSERT ON dead_letters
    FOR EACH ROW EXECUTE FUNCTION eventstore_chain_row();
CREATE TRIGGER dead_letters_chain_head AFTER INSERT ON dead_letters
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore_chain_head();

-- Dead letters are evidence too: append-only like the event log and outcomes.
CREATE TRIGGER dead_letters_append_only BEFORE UPDATE OR DELETE ON dead_letters
    FOR EACH ROW EXECUTE FUNCTION eventstore_forbid_change();
CREATE TRIGGER dead_letters_no_truncate BEFORE TRUNCATE ON dead_letters
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore_forbid_change();
"""
    )


def downgrade() -> None:
    op.execute(
        """
DROP TRIGGER IF EXISTS dead_letters_no_truncate ON dead_letters;
DROP TRIGGER IF EXISTS dead_letters_append_only ON dead_letters;
DROP TRIGGER IF EXISTS dead_letters_chain_head ON dead_letters;
DROP TRIGGER IF EXISTS dead_letters_chain ON dead_letters;
DROP TRIGGER IF EXISTS outcomes_chain_head ON outcomes;
DROP TRIGGER IF EXISTS outcomes_chain ON outcomes;
DROP FUNCTION IF EXISTS eventstore_chain_head(), eventstore_chain_row();
DROP FUNCTION IF EXISTS eventstore_dead_letter_bytes(dead_letters), eventstore_outcome_bytes(outcomes);
ALTER TABLE outcomes DROP COLUMN IF EXISTS chain_seq, DROP COLUMN IF EXISTS prev_hash, DROP COLUMN IF EXISTS hash;
ALTER TABLE dead_letters DROP COLUMN IF EXISTS chain_seq, DROP COLUMN IF EXISTS prev_hash,
    DROP COLUMN IF EXISTS hash;
DROP FUNCTION IF EXISTS eventstore_micros(timestamptz), eventstore_field(text), eventstore_field(bytea);
DROP TABLE IF EXISTS history_heads;
"""
    )
