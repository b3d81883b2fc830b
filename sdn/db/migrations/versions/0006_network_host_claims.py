"""Network hosts claim their networks (nova's set_network_host): ``networks.host`` was written
with the creating CLI's ``host`` and read by nothing; it now names the network host whose
router serves the network. Existing values are cleared so the first network host that sees a
VIF on a network claims it, as for a new one (otherwise a network created on another machine
would be routed by nobody until ``sdn network modify --host``).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    networks = sa.table("networks", sa.column("host", sa.String))
    op.execute(networks.update().values(host=None))


def downgrade() -> None:
    """Nothing to restore: before 0006 no code read ``networks.host``."""
