"""Several controllers: the change feed (``state_changes``: what each write transaction changed,
by revision) and the leader leases (``leader_leases``: who is master, in which term, until when).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "state_changes",
        sa.Column("revision", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("changes", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "leader_leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("incarnation", sa.String(64), nullable=False),
        sa.Column("term", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("leader_leases")
    op.drop_table("state_changes")
