"""Bandwidth limits per instance: what each of its VIFs may receive (``rx_kbps``) and send
(``tx_kbps``), in kbit/s; NULL is unlimited. nova derived them from the flavor's
``rxtx_factor`` times a ``rxtx_base``; sdn stores the resulting rates.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("rx_kbps", sa.Integer, nullable=True))
        batch.add_column(sa.Column("tx_kbps", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("tx_kbps")
        batch.drop_column("rx_kbps")
