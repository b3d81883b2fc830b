"""Security groups: groups, rules, instance membership and provider (operator) rules.

Every existing instance joins its project's ``default`` group (created here with nova's
defaults: no ingress rule, egress allowed for IPv4 and IPv6), as nova gave every instance.

Revision ID: 0002
Revises: 0001
"""

import datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    groups = op.create_table(
        "security_groups",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("description", sa.String(255), nullable=False),
        sa.Column("project_id", sa.String(255), nullable=False, index=True),
        sa.Column("stateful", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("project_id", "name"),
    )
    rules = op.create_table(
        "security_group_rules",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("parent_group_id", sa.Integer,
                  sa.ForeignKey("security_groups.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("direction", sa.String(7), nullable=False),
        sa.Column("ethertype", sa.String(4), nullable=False),
        sa.Column("protocol", sa.Integer),
        sa.Column("port_min", sa.Integer),
        sa.Column("port_max", sa.Integer),
        sa.Column("remote_cidr", sa.String(43)),
        sa.Column("remote_group_id", sa.Integer, sa.ForeignKey("security_groups.id"), index=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    members = op.create_table(
        "security_group_instance_association",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("security_group_id", sa.Integer,
                  sa.ForeignKey("security_groups.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("instance_uuid", sa.String(36),
                  sa.ForeignKey("instances.uuid", ondelete="CASCADE"), nullable=False, index=True),
        sa.UniqueConstraint("security_group_id", "instance_uuid"),
    )
    op.create_table(
        "provider_fw_rules",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("protocol", sa.Integer),
        sa.Column("port_min", sa.Integer),
        sa.Column("port_max", sa.Integer),
        sa.Column("cidr", sa.String(43), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    conn = op.get_bind()
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    projects = [p for (p,) in conn.execute(sa.text(
        "SELECT DISTINCT project_id FROM instances ORDER BY project_id"))]
    for project in projects:
        conn.execute(groups.insert().values(name="default", description="default",
                                            project_id=project, stateful=True, created_at=now))
        gid = conn.execute(sa.text("SELECT id FROM security_groups WHERE project_id = :p "
                                   "AND name = 'default'"), {"p": project}).scalar_one()
        for ethertype in ("IPv4", "IPv6"):
            conn.execute(rules.insert().values(parent_group_id=gid, direction="egress",
                                               ethertype=ethertype, created_at=now))
        for (uuid,) in conn.execute(sa.text("SELECT uuid FROM instances WHERE project_id = :p"),
                                    {"p": project}).all():
            conn.execute(members.insert().values(security_group_id=gid, instance_uuid=uuid))


def downgrade() -> None:
    for table in ("provider_fw_rules", "security_group_instance_association",
                  "security_group_rules", "security_groups"):
        op.drop_table(table)
