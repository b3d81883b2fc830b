"""Floating IPs with nova-network's semantics (nova.network.manager.FloatingIP).

A floating IP is created in a pool by an operator (``sdn floating create``), allocated to a
project, associated to a fixed IP (several floating IPs may point at one fixed IP),
disassociated, and deallocated back to the pool. Every operation is one transaction; a refused
operation changes nothing.
"""

from __future__ import annotations

import netaddr
from sqlalchemy import select
from sqlalchemy.orm import Session

from sdn import exception, validation
from sdn.db import api as db
from sdn.db import models

#: Largest range one ``floating create`` may add (a /16): a typo must not write millions of rows.
MAX_RANGE = validation.MAX_FLOATING_IPS

#: Addresses of a floating range (see ``sdn.validation.floating_range``). Raises InvalidCidr.
parse_range = validation.floating_range


def floating_ips_in(session: Session, first: int, last: int) -> list[tuple[int, str]]:
    """(address as an integer, pool) of every floating IP from ``first`` to ``last``, in order."""
    rows = ((int(netaddr.IPAddress(a)), pool) for a, pool in
            session.execute(select(models.FloatingIp.address, models.FloatingIp.pool)))
    return sorted((a, pool) for a, pool in rows if first <= a <= last)


def describe_addresses(found: list[tuple[int, str]]) -> str:
    """``floating IPs A-B (pool P, N addresses)`` for a sorted ``floating_ips_in`` result (its first pool)."""
    pool = found[0][1]
    mine = [a for a, p in found if p == pool]
    lo, hi = netaddr.IPAddress(mine[0]), netaddr.IPAddress(mine[-1])
    span = f"floating IP {lo}" if lo == hi else f"floating IPs {lo}-{hi}"
    return f"{span} (pool {pool}, {len(mine)} address{'es' if len(mine) > 1 else ''})"


class FloatingIps:
    """Floating-IP operations on ``engine``; ``conf`` gives default_floating_pool and
    public_interface."""

    def __init__(self, engine, conf):
        self.engine = engine
        self.conf = conf

    # -- operator: nova-manage floating create|delete|list -------------------------------

    def create(self, ip_range: str, pool: str | None = None, host: str | None = None,
               interface: str | None = None) -> list[str]:
        """Add every address of ``ip_range`` to ``pool``. Raises FloatingRangeConflict if the
        range overlaps a network (its fixed IPs), FloatingIpExists if any address is already a
        floating IP (nothing is added then)."""
        addresses = parse_range(ip_range)
        pool = self.conf.default_floating_pool if pool is None else validation.required(pool, "the pool", "--pool")
        first, last = int(netaddr.IPAddress(addresses[0])), int(netaddr.IPAddress(addresses[-1]))
        with db.transaction(self.engine) as session:
            db.lock_key(session, db.LOCK_ADDRESS_SPACE, "")   # racing overlapping creations
            for net in session.scalars(select(models.Network).order_by(models.Network.id)):
                cidr = netaddr.IPNetwork(net.cidr)
                if cidr.first <= last and first <= cidr.last:
                    raise exception.FloatingRangeConflict(new=f"floating range {ip_range}",
                                                          existing=f"network {net.cidr} ({net.label})")
            taken = floating_ips_in(session, first, last)
            if taken:
                raise exception.FloatingIpExists(range=ip_range, existing=describe_addresses(taken))
            session.add_all(models.FloatingIp(address=a, pool=pool, host=host,
                                              interface=interface or self.conf.public_interface)
                            for a in addresses)
        return addresses

    def delete(self, ip_range: str) -> int:
        """Remove the range's floating IPs. Refuses (FloatingIpInUse) while any of them is
        associated; returns how many were deleted."""
        addresses = parse_range(ip_range)
        with db.transaction(self.engine) as session:
            rows = session.scalars(select(models.FloatingIp)
                                   .where(models.FloatingIp.address.in_(addresses))).all()
            if not rows:
                raise exception.FloatingIpNotFound(address=ip_range)
            for row in rows:
                if row.fixed_ip_id is not None:
                    raise exception.FloatingIpInUse(address=row.address, action="delete")
                session.delete(row)
            return len(rows)

    def list(self) -> list[dict]:
        """Every floating IP: {id, address, pool, host, interface, project_id, fixed_ip,
        instance, instance_uuid, auto_assigned}."""
        with db.read_transaction(self.engine) as session:
            return [_describe(session, f) for f in session.scalars(
                select(models.FloatingIp).order_by(models.FloatingIp.id))]

    # -- project: allocate / associate / disassociate / deallocate ----------------------

    def allocate(self, project_id: str, pool: str | None = None) -> str:
        """Give ``project_id`` a free floating IP from ``pool``. Raises NoMoreFloatingIps."""
        with db.transaction(self.engine) as session:
            return self._allocate(session, project_id, pool).address

    def _allocate(self, session: Session, project_id: str, pool: str | None,
                  auto_assigned: bool = False) -> models.FloatingIp:
        pool = pool or self.conf.default_floating_pool
        query = (select(models.FloatingIp).where(models.FloatingIp.project_id.is_(None),
                                                 models.FloatingIp.pool == pool)
                 .order_by(models.FloatingIp.id).limit(1))
        if session.bind.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        row = session.scalar(query)
        if row is None:
            raise exception.NoMoreFloatingIps(pool=pool)
        row.project_id, row.auto_assigned = project_id, auto_assigned
        return row

    def associate(self, address: str, instance_name: str, project_id: str,
                  fixed_address: str | None = None) -> dict:
        """Point floating ``address`` (allocated to ``project_id``) at the instance's fixed IP
        (or ``fixed_address`` of it). Raises FloatingIpNotFound, FloatingIpNotAllocated,
        FloatingIpInUse, InstanceNotFound, FixedIpNotFound."""
        with db.transaction(self.engine) as session:
            row = self._owned(session, address, project_id)
            if row.fixed_ip_id is not None:
                raise exception.FloatingIpInUse(address=address, action="associate")
            row.fixed_ip_id = _fixed_ip_of(session, instance_name, project_id, fixed_address).id
            session.flush()
            return _describe(session, row)

    def disassociate(self, address: str, project_id: str, instance_name: str | None = None) -> dict:
        """Detach ``address`` from its fixed IP (which must be ``instance_name``'s, when given:
        nova's removeFloatingIp). Raises FloatingIpNotAssociated, FloatingIpNotOfInstance."""
        with db.transaction(self.engine) as session:
            row = self._owned(session, address, project_id)
            if row.fixed_ip_id is None:
                raise exception.FloatingIpNotAssociated(address=address)
            if instance_name is not None:
                now = _describe(session, row)
                if now["instance"] != instance_name:
                    raise exception.FloatingIpNotOfInstance(
                        address=address, name=instance_name,
                        actual=f"instance {now['instance']}" if now["instance"] else
                        f"fixed IP {now['fixed_ip']}")
            row.fixed_ip_id = None
            return _describe(session, row)

    def deallocate(self, address: str, project_id: str) -> None:
        """Return ``address`` to its pool. Refuses while associated (FloatingIpInUse)."""
        with db.transaction(self.engine) as session:
            row = self._owned(session, address, project_id)
            if row.fixed_ip_id is not None:
                raise exception.FloatingIpInUse(address=address, action="deallocate")
            row.project_id, row.auto_assigned = None, False

    @staticmethod
    def _owned(session: Session, address: str, project_id: str) -> models.FloatingIp:
        """The floating IP row, locked until commit (PostgreSQL: two associates of one address at
        once must not both see it free; SQLite's write lock already serialises them)."""
        row = session.scalar(select(models.FloatingIp).where(models.FloatingIp.address == address)
                             .with_for_update())
        if row is None:
            raise exception.FloatingIpNotFound(address=address)
        if row.project_id != project_id:
            raise exception.FloatingIpNotAllocated(address=address, project=project_id)
        return row

    # -- hooks for the network manager (same transaction as the instance's allocation) ---

    def auto_assign(self, session: Session, fixed_ip: models.FixedIp, project_id: str) -> str:
        """auto_assign_floating_ip: allocate one and associate it to ``fixed_ip``."""
        row = self._allocate(session, project_id, None, auto_assigned=True)
        row.fixed_ip_id = fixed_ip.id
        return row.address

    @staticmethod
    def release_for_fixed_ip(session: Session, fixed_ip_id: int) -> None:
        """On instance deletion: disassociate every floating IP of the fixed IP; auto-assigned
        ones also go back to the pool (nova's deallocate_for_instance)."""
        for row in session.scalars(select(models.FloatingIp)
                                   .where(models.FloatingIp.fixed_ip_id == fixed_ip_id)):
            row.fixed_ip_id = None
            if row.auto_assigned:
                row.project_id, row.auto_assigned = None, False


def _fixed_ip_of(session: Session, instance_name: str, project_id: str,
                 fixed_address: str | None) -> models.FixedIp:
    inst = session.scalar(select(models.Instance).where(models.Instance.name == instance_name))
    if inst is None:
        raise exception.InstanceNotFound(name=instance_name)
    if inst.project_id != project_id:
        raise exception.InstanceNotInProject(name=instance_name, existing=inst.project_id, project=project_id)
    query = select(models.FixedIp).where(models.FixedIp.instance_uuid == inst.uuid,
                                         models.FixedIp.allocated.is_(True))
    if fixed_address:
        query = query.where(models.FixedIp.address == fixed_address)
    fixed = session.scalar(query.order_by(models.FixedIp.id).limit(1))
    if fixed is None:
        raise exception.FixedIpNotFound(address=fixed_address or f"of instance {instance_name}")
    return fixed


def _describe(session: Session, row: models.FloatingIp) -> dict:
    fixed = session.get(models.FixedIp, row.fixed_ip_id) if row.fixed_ip_id else None
    inst = (session.scalar(select(models.Instance).where(models.Instance.uuid == fixed.instance_uuid))
            if fixed is not None and fixed.instance_uuid else None)
    return {"id": row.id, "address": row.address, "pool": row.pool, "host": row.host,
            "interface": row.interface, "project_id": row.project_id,
            "fixed_ip": fixed.address if fixed else None,
            "instance": inst.name if inst else None,
            "instance_uuid": inst.uuid if inst else None, "auto_assigned": row.auto_assigned}
