"""Cloudpipe VPN (VLAN mode), as nova-manage's ``vpn list|run|spawn`` meant it.

Each VLAN network reserves vpn_private_address (subnet[2]) for its project's VPN instance and
publishes it as vpn_public_address:vpn_public_port. ``run`` launches that instance (named
``<project>-vpn``, nova's vpn_key_suffix); its forwarding exists exactly while it does.
"""

from __future__ import annotations

from sqlalchemy import select

from sdn.db import api as db
from sdn.db import models

VPN_SUFFIX = "-vpn"


def vpn_instance_name(project_id: str) -> str:
    return project_id + VPN_SUFFIX


def list_vpns(engine) -> list[dict]:
    """One row per VLAN network with a project: {project, network, public, private, instance,
    state} where state is ``running`` when the VPN instance holds the private address."""
    rows = []
    with db.read_transaction(engine) as session:
        for net in session.scalars(select(models.Network).where(models.Network.vpn_private_address
                                                                .is_not(None)).order_by(models.Network.id)):
            ip = session.scalar(select(models.FixedIp)
                                .where(models.FixedIp.address == net.vpn_private_address))
            inst = (session.scalar(select(models.Instance).where(models.Instance.uuid == ip.instance_uuid))
                    if ip is not None and ip.allocated and ip.instance_uuid else None)
            rows.append({"project": net.project_id, "network": net.cidr,
                         "public": f"{net.vpn_public_address}:{net.vpn_public_port}",
                         "private": f"{net.vpn_private_address}:1194",
                         "instance": inst.name if inst else None,
                         "state": "running" if inst else ("no project" if not net.project_id else "down")})
    return rows


def run_vpn(manager, project_id: str, host: str | None = None) -> dict:
    """Launch (idempotently) the project's VPN instance on its reserved address; returns the
    allocation dict of ``allocate_for_instance``. Raises NoVpnNetwork."""
    return manager.allocate_for_instance(vpn_instance_name(project_id), project_id, host, vpn=True)


def spawn_vpns(manager, host: str | None = None) -> list[dict]:
    """``run_vpn`` for every project that has a VLAN network but no VPN running."""
    return [run_vpn(manager, row["project"], host) for row in list_vpns(manager.engine)
            if row["project"] and row["state"] != "running"]
