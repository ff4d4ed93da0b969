"""Grants for the tables of 0006 (side-chain heads) and 0007 (API tokens) to the roles of 0005.

0005, 0006 and 0007 were written side by side; this revision gives the group roles what they need of
the later tables: auditors and operators read the chain heads (verify, anchor, the check); the HTTP
API runs with an operator login, which reads and maintains the hashed tokens. Agents and the
projector get nothing new (the chain triggers run with the owner's rights).

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
REVOKE ALL ON history_heads, api_tokens FROM PUBLIC;
GRANT SELECT ON history_heads TO eventstore_auditor, eventstore_operator;
GRANT SELECT, INSERT, UPDATE ON api_tokens TO eventstore_operator;
"""
    )


def downgrade() -> None:
    op.execute(
        """
REVOKE ALL ON history_heads FROM eventstore_auditor, eventstore_operator;
REVOKE ALL ON api_tokens FROM eventstore_operator;
"""
    )
