"""Initial schema: networks, instances, virtual_interfaces, fixed_ips, floating_ips,
allowed_address_pairs and the single-row state_revision.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "networks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("label", sa.String(255)),
        sa.Column("cidr", sa.String(43), nullable=False, unique=True),
        sa.Column("netmask", sa.String(39), nullable=False),
        sa.Column("gateway", sa.String(39), nullable=False),
        sa.Column("broadcast", sa.String(39), nullable=False),
        sa.Column("dns1", sa.String(39)),
        sa.Column("dns2", sa.String(39)),
        sa.Column("vlan", sa.Integer, unique=True),
        sa.Column("bridge", sa.String(255)),
        sa.Column("bridge_interface", sa.String(255)),
        sa.Column("dhcp_start", sa.String(39)),
        sa.Column("project_id", sa.String(255)),
        sa.Column("vpn_public_address", sa.String(39)),
        sa.Column("vpn_public_port", sa.Integer),
        sa.Column("vpn_private_address", sa.String(39)),
        sa.Column("cidr_v6", sa.String(43)),
        sa.Column("host", sa.String(255)),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime),
    )
    op.create_index("ix_networks_project_id", "networks", ["project_id"])
    op.create_table(
        "instances",
        sa.Column("uuid", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("project_id", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255)),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "virtual_interfaces",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("uuid", sa.String(36), nullable=False, unique=True),
        sa.Column("address", sa.String(17), nullable=False, unique=True),
        sa.Column("instance_uuid", sa.String(36), sa.ForeignKey("instances.uuid"), nullable=False),
        sa.Column("network_id", sa.Integer, sa.ForeignKey("networks.id"), nullable=False),
        sa.Column("port_security", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_virtual_interfaces_instance_uuid", "virtual_interfaces", ["instance_uuid"])
    op.create_table(
        "fixed_ips",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("address", sa.String(39), nullable=False, unique=True),
        sa.Column("network_id", sa.Integer, sa.ForeignKey("networks.id"), nullable=False),
        sa.Column("instance_uuid", sa.String(36)),
        sa.Column("virtual_interface_id", sa.Integer,
                  sa.ForeignKey("virtual_interfaces.id", ondelete="SET NULL")),
        sa.Column("allocated", sa.Boolean, nullable=False),
        sa.Column("leased", sa.Boolean, nullable=False),
        sa.Column("reserved", sa.Boolean, nullable=False),
        sa.Column("host", sa.String(255)),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime),
    )
    op.create_index("ix_fixed_ips_network_id", "fixed_ips", ["network_id"])
    op.create_index("ix_fixed_ips_instance_uuid", "fixed_ips", ["instance_uuid"])
    op.create_table(
        "floating_ips",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("address", sa.String(39), nullable=False, unique=True),
        sa.Column("pool", sa.String(255)),
        sa.Column("interface", sa.String(255)),
        sa.Column("project_id", sa.String(255)),
        sa.Column("fixed_ip_id", sa.Integer, sa.ForeignKey("fixed_ips.id")),
        sa.Column("host", sa.String(255)),
        sa.Column("auto_assigned", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "allowed_address_pairs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("vif_id", sa.Integer, sa.ForeignKey("virtual_interfaces.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("mac", sa.String(17), nullable=False),
        sa.Column("ip_cidr", sa.String(43), nullable=False),
    )
    op.create_index("ix_allowed_address_pairs_vif_id", "allowed_address_pairs", ["vif_id"])
    revision_table = op.create_table(
        "state_revision",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("value", sa.Integer, nullable=False),
    )
    op.bulk_insert(revision_table, [{"id": 1, "value": 0}])


def downgrade() -> None:
    for table in ("state_revision", "allowed_address_pairs", "floating_ips", "fixed_ips",
                  "virtual_interfaces", "instances", "networks"):
        op.drop_table(table)
