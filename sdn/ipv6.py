"""Instances' IPv6 addresses, derived from their MAC (never allocated), as nova-network did.

nova's two ``ipv6_backend`` algorithms, bit for bit (nova/ipv6/rfc2462.py and
nova/ipv6/account_identifier.py, removed with nova-network in Ussuri):

* ``rfc2462``: prefix | modified EUI-64 of the MAC (RFC 4291 App. A): the address a guest's
  kernel forms itself by SLAAC (RFC 4862), so SLAAC networks need nothing else.
* ``account_identifier``: prefix | (first 32 bits of SHA-1(project id) << 32) ^ 0xff000000 ^
  the MAC's last 24 bits: the project is readable from the address; a kernel cannot form it,
  so only DHCPv6 (stateful) hands it out.

Pure functions on strings; a bad MAC or prefix raises ValueError naming it.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
import socket

import netaddr

BACKENDS = ("rfc2462", "account_identifier")
#: Neutron's ipv6_ra_mode / ipv6_address_mode values: SLAAC (RA A flag), SLAAC + stateless
#: DHCPv6 for DNS (A + O flags), addresses from DHCPv6 (M + O flags)
MODES = ("slaac", "dhcpv6-stateless", "dhcpv6-stateful")
#: link-local prefix (RFC 4291 §2.5.6)
LINK_LOCAL_PREFIX = "fe80::/64"


_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}([:-])(?:[0-9a-fA-F]{2}\1){4}[0-9a-fA-F]{2}$")


def _parsed(kind, value):
    """``kind(str(value))`` (a netaddr class), None when netaddr cannot read it."""
    try:
        return kind(str(value))
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return None


def _mac(mac: str) -> int:
    """A 48-bit MAC as an int; the common ``aa:bb:..`` / ``aa-bb-..`` forms by hand (load_views
    derives every VIF's address on each reload), the other forms netaddr knows through it."""
    if isinstance(mac, str) and _MAC_RE.match(mac):
        return int(mac[0:2] + mac[3:5] + mac[6:8] + mac[9:11] + mac[12:14] + mac[15:17], 16)
    eui = _parsed(netaddr.EUI, mac)
    if eui is None or eui.version != 48:
        raise ValueError(f"Bad mac for to_global_ipv6: {mac} (expected a 48-bit MAC such as "
                         "fa:16:3e:00:00:01)")
    return eui.value


@functools.lru_cache(maxsize=4096)
def _prefix_ip(prefix: str) -> int:
    """The address part of ``prefix`` as an int (nova: ``IPNetwork(prefix).ip``)."""
    try:
        return int(ipaddress.IPv6Interface(str(prefix).strip()).ip)
    except ValueError:
        pass
    net = _parsed(netaddr.IPNetwork, prefix)
    if net is None or net.version != 6:
        raise ValueError(f"Bad prefix for to_global_ipv6: {prefix} (expected an IPv6 prefix such "
                         "as fd00:0:0:1::/64)")
    return int(net.ip)


def modified_eui64(mac: str) -> int:
    """The 64-bit interface identifier of ``mac`` (RFC 4291 App. A): ff:fe in the middle, the
    universal/local bit inverted."""
    value = _mac(mac)
    return ((value >> 24) << 40 | 0xFFFE << 24 | value & 0xFFFFFF) ^ (0x02 << 56)


@functools.lru_cache(maxsize=4096)
def _project_hash(project_id: str) -> int:
    return int(hashlib.sha1(project_id.encode("utf-8")).hexdigest()[:8], 16) << 32


def _text(value: int) -> str:
    """RFC 5952 text of an IPv6 address; inet_ntop is 20x faster than ipaddress and prints the
    same whenever the upper 64 bits are not all zero (no IPv4-mapped/compatible forms)."""
    if value >> 64:
        return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))
    return str(ipaddress.IPv6Address(value))


def _rfc2462(prefix: str, mac: str, project_id: str | None) -> str:
    return _text(modified_eui64(mac) | _prefix_ip(prefix))


def _account_identifier(prefix: str, mac: str, project_id: str | None) -> str:
    if project_id is None:
        raise ValueError("account_identifier addresses need the instance's project id")
    mac_suffix = _mac(mac) & 0xFFFFFF
    return _text(_project_hash(str(project_id)) ^ 0xFF << 24 ^ mac_suffix | _prefix_ip(prefix))


_TO_GLOBAL = {"rfc2462": _rfc2462, "account_identifier": _account_identifier}


def to_global(prefix: str, mac: str, project_id: str | None, backend: str = "rfc2462") -> str:
    """The global IPv6 address of the VIF with ``mac`` on ``prefix`` (a /64 such as
    "fd00:0:0:1::/64"; host bits of the prefix are kept, as nova did), compressed text.

    ``backend`` is config ipv6_backend (``BACKENDS``); ``project_id`` is used by
    account_identifier only. Raises ValueError for a bad MAC, prefix or backend.
    """
    try:
        derive = _TO_GLOBAL[backend]
    except KeyError:
        raise ValueError(f"unknown ipv6_backend {backend!r}; allowed values are "
                         f"{', '.join(BACKENDS)}") from None
    return derive(prefix, mac, project_id)


def vif_address(cidr_v6: str | None, mac: str | None, project_id: str | None,
                backend: str = "rfc2462") -> str | None:
    """A VIF's derived global address on its network's /64 (``to_global``); None when the
    network has no /64 (or the VIF no MAC)."""
    return to_global(cidr_v6, mac, project_id, backend) if cidr_v6 and mac else None


def to_mac(address: str, backend: str = "rfc2462") -> str:
    """The MAC an address was derived from (nova's ``to_mac``): rfc2462 inverts the modified
    EUI-64; account_identifier keeps only the MAC's last 24 bits, and nova assumed the
    ``02:16:3e`` OUI for the rest. Raises ValueError for a bad address or backend."""
    try:
        addr = netaddr.IPAddress(str(address), 6)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise ValueError(f"bad IPv6 address {address!r}") from None
    if backend == "rfc2462":
        words = netaddr.EUI(int(addr) & 0xFFFFFFFFFFFFFFFF ^ (0x02 << 56), version=64).words
        return ":".join(f"{w:02x}" for w in words[0:3] + words[5:8])
    if backend == "account_identifier":
        low = int(addr) & 0xFFFFFF
        return ":".join(["02", "16", "3e"] + [f"{(low >> s) & 0xFF:02x}" for s in (16, 8, 0)])
    raise ValueError(f"unknown ipv6_backend {backend!r}; allowed values are {', '.join(BACKENDS)}")


def link_local(mac: str) -> str:
    """fe80::/64 + the modified EUI-64 of ``mac`` (RFC 4291 App. A, RFC 4862 §5.3): the
    link-local address a kernel forms on an interface with that MAC. Raises ValueError."""
    return _rfc2462(LINK_LOCAL_PREFIX, mac, None)
