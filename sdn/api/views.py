"""The API's JSON bodies, built from the managers' dicts (pure: dicts in, dicts out).

nova's shapes where nova had the resource (the key sets of nova's doc/api_samples and
nova.api.openstack.compute: networks.network_dict, floating_ips._translate_floating_ip_view,
floating_ips_bulk._get_floating_ip_info, security_groups._format_security_group[_rule]);
sdn's own for instances and VIFs.
"""

from __future__ import annotations

import netaddr

#: what nova shows every caller of os-networks (networks.network_dict)
NETWORK_FIELDS = ("id", "cidr", "netmask", "gateway", "broadcast", "dns1", "dns2", "cidr_v6",
                  "gateway_v6", "label", "netmask_v6")
#: and what it adds for an admin
NETWORK_ADMIN_FIELDS = ("created_at", "updated_at", "deleted_at", "deleted", "injected", "bridge",
                        "vlan", "vpn_public_address", "vpn_public_port", "vpn_private_address",
                        "dhcp_start", "project_id", "host", "bridge_interface", "multi_host",
                        "priority", "rxtx_base", "mtu", "dhcp_server", "enable_dhcp",
                        "share_address")


def network(net: dict, admin: bool, *, dhcp: bool, injected: bool, mtu: int | None) -> dict:
    """nova's network dict of a ``sdn.manager.network_dict``. ``dhcp``: the manager answers
    DHCP (FlatDHCP, VLAN); ``injected``: flat_injected of a flat manager; ``mtu``:
    network_device_mtu. Fields sdn has no notion of are nova's values for a nova-network
    network without them (deleted False, multi_host False, priority/rxtx_base None)."""
    v6 = netaddr.IPNetwork(net["cidr_v6"]) if net.get("cidr_v6") else None
    full = {**net, "id": str(net["id"]),
            "gateway_v6": str(v6[1]) if v6 is not None else None,
            "netmask_v6": str(v6.prefixlen) if v6 is not None else None,
            "deleted": False, "deleted_at": None, "injected": injected, "multi_host": False,
            "priority": None, "rxtx_base": None, "mtu": mtu,
            "dhcp_server": net["gateway"] if dhcp else None, "enable_dhcp": dhcp,
            "share_address": False}
    fields = NETWORK_FIELDS + (NETWORK_ADMIN_FIELDS if admin else ())
    return {k: full.get(k) for k in fields}


def floating_ip(row: dict) -> dict:
    """nova's os-floating-ips entry of a ``FloatingIps.list`` row."""
    return {"id": row["id"], "ip": row["address"], "pool": row["pool"],
            "fixed_ip": row["fixed_ip"], "instance_id": row["instance_uuid"]}


def floating_ip_info(row: dict) -> dict:
    """nova's os-floating-ips-bulk entry of a ``FloatingIps.list`` row."""
    return {"address": row["address"], "instance_uuid": row["instance_uuid"],
            "fixed_ip": row["fixed_ip"], "interface": row["interface"], "pool": row["pool"],
            "project_id": row["project_id"]}


def _nova_protocol(name: str) -> str | None:
    return None if name == "any" else name


def rule(r: dict, parent_group_id: int, tenant_id: str | None = None) -> dict:
    """nova's security group rule of a ``sdn.secgroups.rule_dict``: ``group`` names the remote
    group ({name, tenant_id}) or is {}; ``ip_range`` holds the remote CIDR or is {}. Ports are
    sdn's (None: every port, or any ICMP type/code)."""
    return {"id": r["id"], "parent_group_id": parent_group_id,
            "ip_protocol": _nova_protocol(r["protocol"]), "from_port": r["port_min"],
            "to_port": r["port_max"],
            "group": {"name": r["remote_group"], "tenant_id": tenant_id} if r["remote_group"] else {},
            "ip_range": {} if r["remote_group"] else {"cidr": r["remote_cidr"]}}


def security_group(g: dict) -> dict:
    """nova's security group of a ``SecurityGroups`` dict. ``rules`` holds the ingress rules
    (nova-network had no other kind); egress rules are sdn's and shown by the CLI."""
    return {"id": g["id"], "name": g["name"], "description": g["description"],
            "tenant_id": g["project"],
            "rules": [rule(r, g["id"], tenant_id=g["project"]) for r in g["rules"]
                      if r["direction"] == "ingress"]}


def instance_summary(alloc: dict) -> dict:
    """sdn's instance in a list: name, uuid, project, host and every VIF (MAC, fixed IP,
    network, port name) of an ``allocation`` dict."""
    return {"name": alloc["instance"], "id": alloc["instance_uuid"], "project_id": alloc["project"],
            "host": alloc["host"],
            "vifs": [{"id": v["vif_uuid"], "mac_address": v["mac"], "fixed_ip": v["address"],
                      "network_id": str(v["network_id"]), "network_label": v["label"],
                      "cidr": v["cidr"], "vlan": v["vlan"], "gateway": v["gateway"],
                      "port_name": v["port_name"]} for v in alloc["vifs"]]}


def instance(alloc: dict, port_security: dict, bandwidth: dict, groups: list[str]) -> dict:
    """sdn's instance: ``instance_summary`` plus port security and allowed address pairs
    (Neutron's names), bandwidth limits (kbit/s, None: unlimited) and security group names."""
    return {**instance_summary(alloc),
            "port_security_enabled": port_security["port_security"],
            "allowed_address_pairs": address_pairs(port_security),
            "rx_kbps": bandwidth["rx_kbps"], "tx_kbps": bandwidth["tx_kbps"],
            "security_groups": [{"name": n} for n in groups]}


def address_pairs(port_security: dict) -> list[dict]:
    """Neutron's allowed_address_pairs entries ({ip_address, mac_address})."""
    return [{"ip_address": p["ip"], "mac_address": p["mac"]}
            for p in port_security["allowed_address_pairs"]]
