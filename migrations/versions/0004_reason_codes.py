"""A machine-readable reason code on every outcome that did not commit (see eventstore.decisions).

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
ALTER TABLE outcomes ADD COLUMN reason_code text;
-- Rows decided before this revision get their code once, from their status and reason. The
-- append-only trigger is lifted for this one statement, inside the migration's transaction.
ALTER TABLE outcomes DISABLE TRIGGER outcomes_append_only;
UPDATE outcomes SET reason_code = CASE
    WHEN status = 'duplicate' THEN 'duplicate'
    WHEN status = 'conflict' THEN 'version_conflict'
    WHEN reason LIKE 'stale lease%' THEN 'lease_stale'
    WHEN reason LIKE 'lease token%' THEN 'lease_unknown'
    WHEN reason LIKE 'agent % was stopped by the kill switch%' THEN 'agent_killed'
    WHEN reason LIKE 'idempotency key % was already used%' THEN 'key_reused'
    ELSE 'invalid' END;
ALTER TABLE outcomes ENABLE TRIGGER outcomes_append_only;
CREATE INDEX outcomes_reason_code_idx ON outcomes (reason_code) WHERE reason_code IS NOT NULL;
"""
    )


def downgrade() -> None:
    op.execute("ALTER TABLE outcomes DROP COLUMN IF EXISTS reason_code")
