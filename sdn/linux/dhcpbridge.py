"""``sdn dhcp-bridge``: dnsmasq's ``--dhcp-script`` (nova's ``bin/nova-dhcpbridge``).

dnsmasq calls it as ``add|old|del MAC IP [HOSTNAME]`` after each lease change and ``init`` at
start (with ``--leasefile-ro`` dnsmasq keeps no lease file: ``init`` prints the leases state
knows, one ``EXPIRY MAC IP HOSTNAME *`` line each). ``add``/``old`` -> lease_fixed_ip,
``del`` -> release_fixed_ip, through the same managers the OpenFlow backend's DHCP uses.
"""

from __future__ import annotations

import os
import time

ACTIONS = ("add", "old", "del", "init")


def init_leases(mgr, network_id: int | None, lease_time: int, now: float | None = None) -> str:
    """Lease lines for dnsmasq's ``init`` (nova's get_dhcp_leases): every leased fixed IP of the
    network (all networks when ``network_id`` is None), expiring ``lease_time`` from now."""
    now = time.time() if now is None else now
    cidr = None
    if network_id is not None:
        cidr = next((n["cidr"] for n in mgr.list_networks() if n["id"] == network_id), None)
        if cidr is None:
            return ""
    lines = []
    for ip in mgr.list_fixed_ips():
        if ip["leased"] and ip["mac"] and (cidr is None or ip["network"] == cidr):
            lines.append(f"{int(now) + lease_time} {ip['mac']} {ip['address']} {ip['hostname'] or '*'} *")
    return "".join(line + "\n" for line in lines)


def run(mgr, conf, action: str, mac: str | None, ip: str | None) -> str:
    """Perform one dnsmasq script call; returns what to print."""
    if action == "init":
        nid = os.environ.get("NETWORK_ID")
        return init_leases(mgr, int(nid) if nid and nid.isdigit() else None, conf.dhcp_lease_time)
    if not mac or not ip:
        from sdn import exception
        raise exception.Invalid(f"dhcp-bridge {action} needs MAC and IP arguments")
    if action in ("add", "old"):
        mgr.lease_fixed_ip(ip, mac)
        return ""
    mgr.release_fixed_ip(ip, mac)
    return ""
