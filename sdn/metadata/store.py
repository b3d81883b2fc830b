"""The metadata service's one read per request: the instance holding a fixed IP.

``load_instance(engine, address)`` reads, in one read-only transaction (``read_transaction``:
no write lock on SQLite, never a write), the allocated fixed IP ``address``, the instance of its
VIF, every VIF of that instance with its network and allocated fixed IPs, and the floating IPs
pointing at them. None when no VIF holds ``address`` (not allocated, deallocated, unknown).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.engine import Engine

from sdn.db import api
from sdn.db import models
from sdn.metadata.document import InstanceRecord, NetworkInfo, PortInfo, valid_address


def load_instance(engine: Engine, address: str) -> InstanceRecord | None:
    if not valid_address(address):
        return None
    Fixed, Vif, Inst, Net = models.FixedIp, models.VirtualInterface, models.Instance, models.Network
    with api.read_transaction(engine) as session:
        instance_uuid = session.scalar(
            select(Vif.instance_uuid).join(Fixed, Fixed.virtual_interface_id == Vif.id)
            .where(Fixed.address == address, Fixed.allocated.is_(True)))
        if instance_uuid is None:
            return None
        inst = session.execute(select(Inst.uuid, Inst.name, Inst.hostname, Inst.project_id)
                               .where(Inst.uuid == instance_uuid)).first()
        if inst is None:
            return None
        vifs = session.execute(select(Vif.id, Vif.uuid, Vif.address, Vif.network_id)
                               .where(Vif.instance_uuid == instance_uuid).order_by(Vif.id)).all()
        vif_ids = [v.id for v in vifs]
        fixed: dict[int, list[str]] = {}
        for vif_id, fixed_address in session.execute(
                select(Fixed.virtual_interface_id, Fixed.address)
                .where(Fixed.virtual_interface_id.in_(vif_ids), Fixed.allocated.is_(True))
                .order_by(Fixed.id)):
            fixed.setdefault(vif_id, []).append(fixed_address)
        networks = {n.id: NetworkInfo(id=n.id, label=n.label or "", cidr=n.cidr, netmask=n.netmask,
                                      gateway=n.gateway or None,
                                      dns=tuple(d for d in (n.dns1, n.dns2) if d), cidr_v6=n.cidr_v6)
                    for n in session.execute(
                        select(Net.id, Net.label, Net.cidr, Net.netmask, Net.gateway, Net.dns1,
                               Net.dns2, Net.cidr_v6)
                        .where(Net.id.in_({v.network_id for v in vifs})))}
        all_fixed = [a for addresses in fixed.values() for a in addresses]
        floating = session.execute(
            select(models.FloatingIp.address, Fixed.address)
            .join(Fixed, models.FloatingIp.fixed_ip_id == Fixed.id)
            .where(Fixed.address.in_(all_fixed)).order_by(models.FloatingIp.id)).all()
    ports = tuple(PortInfo(vif_uuid=v.uuid, mac=v.address, network=networks[v.network_id],
                           addresses=tuple(fixed.get(v.id, ())))
                  for v in vifs if v.network_id in networks)
    mine = [f for f, fixed_address in floating if fixed_address == address]
    return InstanceRecord(uuid=inst.uuid, name=inst.name, hostname=inst.hostname,
                          project_id=inst.project_id, ports=ports,
                          floating_ips=tuple(mine + [f for f, _ in floating if f not in mine]))
