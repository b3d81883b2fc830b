"""IPv6 per network (issue 12): the router's address on the network's /64 (``gateway_v6``),
the prefix length (``netmask_v6``, "64"), Neutron's ``ipv6_ra_mode`` / ``ipv6_address_mode``
("slaac", "dhcpv6-stateless", "dhcpv6-stateful") and IPv6 DNS servers (``dns_v6``, comma
list). ``cidr_v6`` exists since 0001. Networks that already have a cidr_v6 get what network
create now gives: gateway prefix::1, /64, slaac.

Revision ID: 0004
Revises: 0003
"""

import ipaddress

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("networks") as batch:
        batch.add_column(sa.Column("gateway_v6", sa.String(39), nullable=True))
        batch.add_column(sa.Column("netmask_v6", sa.String(39), nullable=True))
        batch.add_column(sa.Column("ipv6_ra_mode", sa.String(16), nullable=True))
        batch.add_column(sa.Column("ipv6_address_mode", sa.String(16), nullable=True))
        batch.add_column(sa.Column("dns_v6", sa.String(255), nullable=True))
    conn = op.get_bind()
    networks = sa.table("networks", sa.column("id", sa.Integer), sa.column("cidr_v6", sa.String),
                        sa.column("gateway_v6", sa.String), sa.column("netmask_v6", sa.String),
                        sa.column("ipv6_ra_mode", sa.String), sa.column("ipv6_address_mode", sa.String))
    for net_id, cidr_v6 in conn.execute(sa.select(networks.c.id, networks.c.cidr_v6)
                                        .where(networks.c.cidr_v6.is_not(None))).all():
        prefix = ipaddress.IPv6Network(cidr_v6, strict=False)
        conn.execute(networks.update().where(networks.c.id == net_id).values(
            gateway_v6=str(prefix.network_address + 1), netmask_v6=str(prefix.prefixlen),
            ipv6_ra_mode="slaac", ipv6_address_mode="slaac"))


def downgrade() -> None:
    with op.batch_alter_table("networks") as batch:
        batch.drop_column("dns_v6")
        batch.drop_column("ipv6_address_mode")
        batch.drop_column("ipv6_ra_mode")
        batch.drop_column("netmask_v6")
        batch.drop_column("gateway_v6")
