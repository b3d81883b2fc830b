"""What the metadata service answers, as pure functions of an instance's record and a path.

``respond(record, address, path, settings) -> Response``: ``record`` is the instance holding
the fixed IP ``address`` the request came from (None: no instance holds it -> 404), ``path`` the
request target as received (any text: query and fragment are ignored, slashes collapsed). It
never raises.

Paths (``latest`` only; EC2's ``2009-04-04``, the version cloud-init's EC2 datasource asks for
first, is the same data):

- ``/`` -> ``latest`` (EC2 versions), ``/openstack/`` -> ``latest``
- ``/openstack/latest/`` -> ``meta_data.json``, ``network_data.json``
- ``/openstack/latest/network_data.json``: OpenStack's network_data.json, the format nova's
  ``nova.virt.netutils.get_network_metadata`` writes: one ``links`` entry per VIF (``id`` is the
  VIF's port name ``tap<uuid[:11]>``, ``vif_id``, ``type`` ``ovs``/``bridge`` by backend,
  ``mtu`` = network_device_mtu or null, ``ethernet_mac_address``); one ``networks`` entry per
  fixed address, always ``type`` ``ipv4`` (static, in DHCP modes too: the same data the DHCP
  server hands out) with ``ip_address``, ``netmask``, ``routes`` (the default route via the
  network's gateway), ``network_id`` (sdn's network id as a string), ``link`` and the network's
  DNS servers as ``services``; an ``ipv6`` entry per VIF on a network with ``cidr_v6``
  (use_ipv6: the EUI-64 address of the VIF's MAC in it, as nova's rfc2462 backend, default
  route via the prefix's first address, nova's gateway_v6); top-level ``services``: every DNS
  server once.
- ``/openstack/latest/meta_data.json``: ``uuid``, ``name``, ``hostname``, ``project_id``,
  ``launch_index`` 0, ``availability_zone`` ``nova``, ``meta`` {}.
- ``/latest/meta-data/`` -> the keys; ``hostname`` and ``local-hostname`` (``hostname.dhcp_domain``
  as nova), ``instance-id`` (``i-`` + the first 8 hex digits of the instance uuid: stable, unique
  as long as two instances' uuids differ there), ``local-ipv4`` (the requesting fixed IP),
  ``public-ipv4`` (its first floating IP, else the instance's first, else empty as nova).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field

import netaddr

from sdn.view import vif_port_name

#: EC2 API versions answered (all the same data); "latest" first in listings
EC2_VERSIONS = ("latest", "2009-04-04")
OPENSTACK_VERSIONS = ("latest",)
EC2_KEYS = ("hostname", "instance-id", "local-hostname", "local-ipv4", "public-ipv4")
OPENSTACK_FILES = ("meta_data.json", "network_data.json")
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


@dataclass(frozen=True)
class NetworkInfo:
    """The fixed-IP network of one VIF (nova ``networks`` row)."""

    id: int
    label: str
    cidr: str
    netmask: str
    gateway: str | None
    dns: tuple[str, ...] = ()
    cidr_v6: str | None = None


@dataclass(frozen=True)
class PortInfo:
    """One VIF of the instance with its allocated fixed IPv4 addresses."""

    vif_uuid: str
    mac: str
    network: NetworkInfo
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class InstanceRecord:
    """The instance holding a fixed IP, with every VIF it has (in VIF id order)."""

    uuid: str
    name: str
    hostname: str
    project_id: str
    ports: tuple[PortInfo, ...] = ()
    #: floating IPs of the instance's fixed IPs, those of the requesting address first
    floating_ips: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    """Service-wide options: ``link_type`` ``ovs`` or ``bridge`` (network_driver), ``mtu``
    (network_device_mtu, None: unknown), ``domain`` (dhcp_domain), ``addresses``: whether
    network_data.json gives the guest its addresses (False for FlatManager without
    ``flat_injected``: nova told such guests nothing, the operator configured them)."""

    link_type: str = "ovs"
    mtu: int | None = None
    domain: str = "novalocal"
    addresses: bool = True


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes = field(default=b"")


def _text(status: int, text: str) -> Response:
    return Response(status, TEXT, text.encode("utf-8", "replace"))


NOT_FOUND = _text(404, "404 Not Found\n")


def _ipv6_of(port: PortInfo) -> tuple[str, str, str] | None:
    """(address, netmask, gateway) of ``port`` on its network's cidr_v6, or None."""
    if not port.network.cidr_v6:
        return None
    try:
        net = netaddr.IPNetwork(port.network.cidr_v6)
        address = netaddr.EUI(port.mac).ipv6(net.network)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return None
    return str(address), str(net.netmask), str(net[1])


def network_data(record: InstanceRecord, settings: Settings = Settings()) -> dict:
    """OpenStack's network_data.json of ``record`` (see the module docstring)."""
    links, networks, dns_all = [], [], []
    for port in record.ports:
        link_id = vif_port_name(port.vif_uuid)
        links.append({"id": link_id, "vif_id": port.vif_uuid, "type": settings.link_type,
                      "mtu": settings.mtu, "ethernet_mac_address": port.mac})
        net = port.network
        services = [{"type": "dns", "address": d} for d in net.dns]
        dns_all += [d for d in net.dns if d not in dns_all]
        v4_routes = ([{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": net.gateway}]
                     if net.gateway else [])
        for address in port.addresses:
            networks.append({"id": f"network{len(networks)}", "type": "ipv4", "link": link_id,
                             "ip_address": address, "netmask": net.netmask, "routes": v4_routes,
                             "network_id": str(net.id), "services": services})
        v6 = _ipv6_of(port)
        if v6:
            address, netmask, gateway = v6
            networks.append({"id": f"network{len(networks)}", "type": "ipv6", "link": link_id,
                             "ip_address": address, "netmask": netmask,
                             "routes": [{"network": "::", "netmask": "::", "gateway": gateway}],
                             "network_id": str(net.id), "services": services})
    return {"links": links, "networks": networks if settings.addresses else [],
            "services": [{"type": "dns", "address": d} for d in dns_all]}


def meta_data(record: InstanceRecord) -> dict:
    """OpenStack's meta_data.json: what cloud-init's OpenStack datasource requires."""
    return {"uuid": record.uuid, "name": record.name, "hostname": record.hostname,
            "project_id": record.project_id, "launch_index": 0, "availability_zone": "nova",
            "meta": {}}


def fqdn(record: InstanceRecord, settings: Settings) -> str:
    """``hostname.dhcp_domain`` (nova's EC2 hostname), the bare hostname without a domain."""
    return f"{record.hostname}.{settings.domain}" if settings.domain else record.hostname


def ec2_value(record: InstanceRecord, address: str, key: str, settings: Settings) -> str | None:
    """The EC2 meta-data value ``key`` (None: no such key)."""
    if key in ("hostname", "local-hostname"):
        return fqdn(record, settings)
    if key == "instance-id":
        return "i-" + record.uuid.replace("-", "")[:8]
    if key == "local-ipv4":
        return address
    if key == "public-ipv4":
        return record.floating_ips[0] if record.floating_ips else ""
    return None


def _parts(path: str) -> list[str] | None:
    """The path's non-empty segments, query/fragment dropped; None for what is no path."""
    if not isinstance(path, str):
        return None
    path = path.split("?", 1)[0].split("#", 1)[0]
    if path.startswith(("http://", "https://")):   # absolute-form request target
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    if not path.startswith("/"):
        return None
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        return None
    return parts


def _json(document: dict) -> Response:
    return Response(200, JSON, json.dumps(document, indent=2, sort_keys=True).encode() + b"\n")


def respond(record: InstanceRecord | None, address: str, path: str,
            settings: Settings = Settings()) -> Response:
    """The answer to a GET of ``path`` from ``address`` (held by ``record``); never raises."""
    try:
        return _respond(record, address, path, settings)
    except Exception:  # noqa: BLE001 - a bad record or path must not escape as an exception
        return _text(500, "500 Internal Server Error\n")


def _respond(record, address, path, settings) -> Response:
    parts = _parts(path)
    if parts is None or record is None:
        return NOT_FOUND
    if not parts:
        return _text(200, "\n".join(EC2_VERSIONS))
    if parts[0] == "openstack":
        if len(parts) == 1:
            return _text(200, "\n".join(OPENSTACK_VERSIONS))
        if parts[1] not in OPENSTACK_VERSIONS:
            return NOT_FOUND
        if len(parts) == 2:
            return _text(200, "\n".join(OPENSTACK_FILES))
        if len(parts) == 3 and parts[2] == "network_data.json":
            return _json(network_data(record, settings))
        if len(parts) == 3 and parts[2] == "meta_data.json":
            return _json(meta_data(record))
        return NOT_FOUND
    if parts[0] in EC2_VERSIONS:
        if len(parts) == 1:
            return _text(200, "meta-data/")
        if parts[1] != "meta-data":
            return NOT_FOUND
        if len(parts) == 2:
            return _text(200, "\n".join(EC2_KEYS))
        if len(parts) == 3:
            value = ec2_value(record, address, parts[2], settings)
            return NOT_FOUND if value is None else _text(200, value)
    return NOT_FOUND


def valid_address(text: str) -> bool:
    """True when ``text`` is an IP address (a request's source, to look up)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
