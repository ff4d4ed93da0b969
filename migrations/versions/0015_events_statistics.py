"""No statistics on the event log's payload and hash columns (issue 11 follow-up: the latency tail).

PostgreSQL's autoanalyze of ``events`` after a big drain took 0.3-1.3 s and fell into the tail of emit ->
outcome (docs/perf-tail.md). Most of that time is spent on ``payload`` (jsonb), ``hash`` and ``prev_hash``
(bytea): no query of the project filters, joins or groups on them, so their statistics are never used for
a selectivity; here their statistics target is 0 and ANALYZE skips them. ``eventstore bench analyze``
prints ANALYZE's time on ``events`` with and without, and compares the plans of the project's queries on
``events`` in the same run (docs/perf-hygiene.md). The downgrade restores the default target (-1).

Revision ID: 0015
Revises: 0014
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

COLUMNS = ("payload", "hash", "prev_hash")


def upgrade() -> None:
    op.execute("\n".join(f"ALTER TABLE events ALTER COLUMN {c} SET STATISTICS 0;" for c in COLUMNS))


def downgrade() -> None:
    op.execute("\n".join(f"ALTER TABLE events ALTER COLUMN {c} SET STATISTICS -1;" for c in COLUMNS))
