"""SQLAlchemy models in nova-network's terms (Essex schema, trimmed to what sdn uses).

Timestamps are naive UTC datetimes. ``state_revision`` is a single row whose ``value`` every
committing write transaction increments (see ``sdn.db.api.transaction``); the controller polls it.
"""

from __future__ import annotations

import datetime

from sqlalchemy import (BigInteger, Boolean, DateTime, Float, ForeignKey, Integer, String, Text,
                        UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Network(Base):
    __tablename__ = "networks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    label: Mapped[str | None] = mapped_column(String(255))
    cidr: Mapped[str] = mapped_column(String(43), unique=True)
    netmask: Mapped[str] = mapped_column(String(39))
    gateway: Mapped[str] = mapped_column(String(39))
    broadcast: Mapped[str] = mapped_column(String(39))
    dns1: Mapped[str | None] = mapped_column(String(39))
    dns2: Mapped[str | None] = mapped_column(String(39))
    vlan: Mapped[int | None] = mapped_column(Integer, unique=True)
    bridge: Mapped[str | None] = mapped_column(String(255))
    bridge_interface: Mapped[str | None] = mapped_column(String(255))
    dhcp_start: Mapped[str | None] = mapped_column(String(39))
    project_id: Mapped[str | None] = mapped_column(String(255), index=True)
    vpn_public_address: Mapped[str | None] = mapped_column(String(39))
    vpn_public_port: Mapped[int | None] = mapped_column(Integer)
    vpn_private_address: Mapped[str | None] = mapped_column(String(39))
    cidr_v6: Mapped[str | None] = mapped_column(String(43))
    #: IPv6 (migration 0004): the router's address on cidr_v6, its prefix length ("64"),
    #: Neutron's ra/address modes (slaac | dhcpv6-stateless | dhcpv6-stateful), DNS servers
    #: (comma-separated); all NULL when the network has no cidr_v6
    gateway_v6: Mapped[str | None] = mapped_column(String(39))
    netmask_v6: Mapped[str | None] = mapped_column(String(39))
    ipv6_ra_mode: Mapped[str | None] = mapped_column(String(16))
    ipv6_address_mode: Mapped[str | None] = mapped_column(String(16))
    dns_v6: Mapped[str | None] = mapped_column(String(255))
    host: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime.datetime | None] = mapped_column(DateTime, onupdate=utcnow)


class Instance(Base):
    """sdn stands in for nova-compute, so it keeps the instances it networks."""

    __tablename__ = "instances"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    hostname: Mapped[str] = mapped_column(String(255))
    project_id: Mapped[str] = mapped_column(String(255))
    host: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    #: bandwidth limits of each of its VIFs in kbit/s (None: unlimited): what it receives / sends
    rx_kbps: Mapped[int | None] = mapped_column(Integer)
    tx_kbps: Mapped[int | None] = mapped_column(Integer)


class VirtualInterface(Base):
    __tablename__ = "virtual_interfaces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    address: Mapped[str] = mapped_column(String(17), unique=True)  # the MAC
    instance_uuid: Mapped[str] = mapped_column(ForeignKey("instances.uuid"), index=True)
    network_id: Mapped[int] = mapped_column(ForeignKey("networks.id"))
    port_security: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)

    instance: Mapped[Instance] = relationship()
    allowed_address_pairs: Mapped[list[AllowedAddressPair]] = relationship(
        cascade="all, delete-orphan", order_by="AllowedAddressPair.id")


class FixedIp(Base):
    """One address of a network. ``instance_uuid`` is the association (kept after deallocation in
    DHCP modes until released or timed out); ``allocated`` says the instance still holds it."""

    __tablename__ = "fixed_ips"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(39), unique=True)
    network_id: Mapped[int] = mapped_column(ForeignKey("networks.id"), index=True)
    # No foreign key: the association outlives the instance row until release/timeout, as in nova.
    instance_uuid: Mapped[str | None] = mapped_column(String(36), index=True)
    virtual_interface_id: Mapped[int | None] = mapped_column(
        ForeignKey("virtual_interfaces.id", ondelete="SET NULL"))
    allocated: Mapped[bool] = mapped_column(Boolean, default=False)
    leased: Mapped[bool] = mapped_column(Boolean, default=False)
    reserved: Mapped[bool] = mapped_column(Boolean, default=False)
    host: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime.datetime | None] = mapped_column(DateTime, onupdate=utcnow)

    network: Mapped[Network] = relationship()
    virtual_interface: Mapped[VirtualInterface | None] = relationship()


class FloatingIp(Base):
    __tablename__ = "floating_ips"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(39), unique=True)
    pool: Mapped[str | None] = mapped_column(String(255))
    interface: Mapped[str | None] = mapped_column(String(255))
    project_id: Mapped[str | None] = mapped_column(String(255))
    fixed_ip_id: Mapped[int | None] = mapped_column(ForeignKey("fixed_ips.id"))
    host: Mapped[str | None] = mapped_column(String(255))
    auto_assigned: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)


class AllowedAddressPair(Base):
    """Extra (mac, ip-or-cidr) a VIF may send from, beyond its own MAC and fixed IPs."""

    __tablename__ = "allowed_address_pairs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vif_id: Mapped[int] = mapped_column(ForeignKey("virtual_interfaces.id", ondelete="CASCADE"), index=True)
    mac: Mapped[str] = mapped_column(String(17))
    ip_cidr: Mapped[str] = mapped_column(String(43))


class SecurityGroup(Base):
    """A project's named set of firewall rules (nova ``security_groups``). ``stateful`` False:
    no connection tracking, every packet must match a rule (replies included)."""

    __tablename__ = "security_groups"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(String(255), default="")
    project_id: Mapped[str] = mapped_column(String(255), index=True)
    stateful: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)

    rules: Mapped[list[SecurityGroupRule]] = relationship(
        cascade="all, delete-orphan", order_by="SecurityGroupRule.id",
        foreign_keys="SecurityGroupRule.parent_group_id")


class SecurityGroupRule(Base):
    """One allow rule (nova ``security_group_rules`` + Neutron's direction/ethertype).

    ``protocol`` is an IP protocol number, None for any. For TCP/UDP ``port_min``/``port_max``
    bound the destination port (None: every port); for ICMP/ICMPv6 they are the type and code
    (None: any). The remote is ``remote_cidr`` or the members of ``remote_group_id``.
    """

    __tablename__ = "security_group_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_group_id: Mapped[int] = mapped_column(
        ForeignKey("security_groups.id", ondelete="CASCADE"), index=True)
    direction: Mapped[str] = mapped_column(String(7))       # ingress | egress
    ethertype: Mapped[str] = mapped_column(String(4))       # IPv4 | IPv6
    protocol: Mapped[int | None] = mapped_column(Integer)
    port_min: Mapped[int | None] = mapped_column(Integer)
    port_max: Mapped[int | None] = mapped_column(Integer)
    remote_cidr: Mapped[str | None] = mapped_column(String(43))
    remote_group_id: Mapped[int | None] = mapped_column(
        ForeignKey("security_groups.id"), index=True)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)


class SecurityGroupInstance(Base):
    """Which instances are in which security groups (nova
    ``security_group_instance_association``)."""

    __tablename__ = "security_group_instance_association"
    __table_args__ = (UniqueConstraint("security_group_id", "instance_uuid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    security_group_id: Mapped[int] = mapped_column(
        ForeignKey("security_groups.id", ondelete="CASCADE"), index=True)
    instance_uuid: Mapped[str] = mapped_column(
        ForeignKey("instances.uuid", ondelete="CASCADE"), index=True)


class ProviderFirewallRule(Base):
    """An operator-wide drop of inbound traffic to every instance, evaluated before the tenants'
    rules (nova ``provider_fw_rules``). Same protocol/port fields as a security group rule."""

    __tablename__ = "provider_fw_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    protocol: Mapped[int | None] = mapped_column(Integer)
    port_min: Mapped[int | None] = mapped_column(Integer)
    port_max: Mapped[int | None] = mapped_column(Integer)
    cidr: Mapped[str] = mapped_column(String(43))
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)


class StateRevision(Base):
    __tablename__ = "state_revision"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)


class StateChange(Base):
    """The change feed (``sdn.db.changes``): what one committed write transaction changed, under
    the ``state_revision`` value it produced. ``changes`` is JSON: a list of
    ``{"table", "kind" (insert|update|delete), "ids" (primary keys, null: not known, e.g. a bulk
    UPDATE), "networks" (network ids the rows belong to, null: not known)}``."""

    __tablename__ = "state_changes"

    revision: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    changes: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)


class LeaderLease(Base):
    """A lease on a role among several controllers (``sdn.apps.mastership``): ``name`` is the
    role ("deployment"), ``holder`` the controller id holding it, ``incarnation`` which run of
    that controller, ``term`` grows with every change of holder (the OpenFlow generation_id
    that fences a stale master), ``expires_at`` the holder's wall clock (Unix seconds) at which
    the lease lapses unless renewed."""

    __tablename__ = "leader_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    incarnation: Mapped[str] = mapped_column(String(64))
    term: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[float] = mapped_column(Float)
