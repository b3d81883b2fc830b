"""Operator input, parsed and checked in one place: CIDRs, addresses, sizes, VLANs, names, MACs.

The CLI and the managers (and so any future REST API, which calls the managers) get the same
checks. Every function returns the canonical value or raises an ``sdn.exception`` error whose
message says what is wrong and what is allowed. Nothing here reads or writes the database.
"""

from __future__ import annotations

import math
import re

import netaddr

from sdn import exception

MIN_VLAN, MAX_VLAN = 1, 4094
#: smallest network: network address, gateway, one instance, broadcast
MIN_NETWORK_SIZE = 4
#: most fixed IPs one ``network create`` may write (a /16): nova writes a row per address, and a
#: /8 (16.7 million rows) runs out of memory instead of failing cleanly
MAX_FIXED_IPS = 65536
#: most floating IPs one ``floating create`` may add (a /16)
MAX_FLOATING_IPS = 65536
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

_CIDR_EXAMPLE = "10.0.0.0/24"


def _parse_network(value, what: str, example: str) -> netaddr.IPNetwork:
    """``value`` as an IPNetwork; InvalidCidr naming ``what`` and an example otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise exception.InvalidCidr(cidr=value, reason=f"{what} is empty; give {example}")
    try:
        return netaddr.IPNetwork(value.strip())
    except (netaddr.AddrFormatError, ValueError, TypeError) as err:
        raise exception.InvalidCidr(cidr=value, reason=f"{err}; give {what} as {example}") from None


def _no_host_bits(net: netaddr.IPNetwork, value: str) -> None:
    if net.ip != net.network:
        raise exception.InvalidCidr(cidr=value, reason=f"host bits are set; did you mean {net.cidr}?")


def ipv4_network(value, what: str = "the fixed range") -> netaddr.IPNetwork:
    """An IPv4 network CIDR without host bits (``10.0.0.0/24``)."""
    net = _parse_network(value, what, f"an IPv4 CIDR such as {_CIDR_EXAMPLE}")
    if net.version != 4:
        raise exception.InvalidCidr(cidr=value, reason=f"only IPv4 is supported for {what}, such as {_CIDR_EXAMPLE}")
    _no_host_bits(net, value)
    return net


def network_lookup(value) -> str:
    """The canonical text of a CIDR naming an existing network (``network delete``)."""
    return str(_parse_network(value, "the network", f"a CIDR such as {_CIDR_EXAMPLE}"))


def address_or_cidr(value) -> str:
    """Canonical ``a.b.c.d``/``a.b.c.d/n`` (or IPv6) of an allowed address pair; a host CIDR
    collapses to the address, host bits of a wider CIDR are dropped."""
    net = _parse_network(value, "the address", "an address or CIDR such as 10.0.0.5 or 10.0.0.0/28")
    if net.prefixlen == (32 if net.version == 4 else 128):
        return str(net.ip)
    return str(net.cidr)


def floating_range(value) -> list[str]:
    """Addresses of a floating range: one IPv4 address, or a CIDR without host bits (every
    address but network/broadcast up to /30, like nova-manage); at most MAX_FLOATING_IPS."""
    net = _parse_network(value, "the floating range", "a CIDR such as 203.0.113.0/28 or one address")
    if net.version != 4:
        raise exception.InvalidCidr(cidr=value, reason="floating IPs are IPv4, such as 203.0.113.0/28")
    _no_host_bits(net, value)
    if net.size > MAX_FLOATING_IPS:
        raise exception.InvalidCidr(cidr=value, reason=f"{net.size} addresses; at most {MAX_FLOATING_IPS} "
                                    f"(a /16) per command")
    hosts = net.iter_hosts() if net.prefixlen < 31 else iter(net)
    return [str(ip) for ip in hosts]


def ipv4_address(value, what: str) -> str:
    """One IPv4 address in dotted-quad form (``what`` names it in the message)."""
    if not isinstance(value, str) or not netaddr.valid_ipv4(value.strip(), netaddr.INET_PTON):
        raise exception.InvalidAddress(what=what, value=value, allowed="an IPv4 address such as 10.0.0.5")
    return str(netaddr.IPAddress(value.strip()))


def unicast_mac(value) -> str:
    """A unicast Ethernet MAC, canonical ``aa:bb:cc:dd:ee:ff``."""
    try:
        mac = netaddr.EUI(value, dialect=netaddr.mac_unix_expanded)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise exception.InvalidMac(mac=value, reason="expected six hex bytes like fa:16:3e:00:00:01") from None
    if int(mac) >> 40 & 1:
        raise exception.InvalidMac(mac=value, reason="a multicast MAC cannot be a VIF's source; "
                                   "use a unicast MAC (first byte even), like fa:16:3e:00:00:01")
    return str(mac)


def count(value, what: str, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer within [minimum, maximum] (``what`` names the option)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise exception.Invalid(f"{what} must be a whole number, not {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        allowed = f"at least {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise exception.Invalid(f"{what} must be {allowed}, not {value}")
    return value


def vlans(vlan_start, num_networks: int) -> range:
    """The VLAN ids ``vlan_start .. vlan_start + num_networks - 1``, all within 1-4094."""
    if isinstance(vlan_start, bool) or not isinstance(vlan_start, int):
        raise exception.VlanOutOfRange(reason=f"VLAN {vlan_start!r} is not a number")
    if not MIN_VLAN <= vlan_start <= MAX_VLAN:
        raise exception.VlanOutOfRange(reason=f"VLAN {vlan_start} is out of range")
    last = vlan_start + num_networks - 1
    if last > MAX_VLAN:
        raise exception.VlanOutOfRange(
            reason=f"{num_networks} networks from VLAN {vlan_start} would need VLANs up to {last}; "
                   f"start at {MAX_VLAN - num_networks + 1} at most, or create fewer networks")
    return range(vlan_start, last + 1)


def host_bits(network_size, num_networks: int, fixed_net: netaddr.IPNetwork, fit: bool) -> int:
    """Host bits per network for ``num_networks`` networks of ``network_size`` addresses (rounded
    up to a power of two) carved from ``fixed_net``; with ``fit`` (no size asked for) the size
    shrinks to what ``fixed_net`` holds, as nova-manage does. Refuses more than MAX_FIXED_IPS
    addresses in all."""
    count(network_size, "network_size", minimum=MIN_NETWORK_SIZE, maximum=MAX_FIXED_IPS)
    bits = int(math.ceil(math.log2(network_size)))
    if fit:
        bits = min(bits, int(math.log2(fixed_net.size // num_networks)) if fixed_net.size >= num_networks else 0)
    if 2 ** bits * num_networks > fixed_net.size or bits < 2:
        raise exception.Invalid(
            f"network range {fixed_net} ({fixed_net.size} addresses) cannot hold {num_networks} network(s) of "
            f"{max(2 ** bits, MIN_NETWORK_SIZE)} addresses; use a larger range or fewer/smaller networks")
    if 2 ** bits * num_networks > MAX_FIXED_IPS:
        raise exception.Invalid(
            f"{num_networks} network(s) of {2 ** bits} addresses are {2 ** bits * num_networks} fixed IPs; "
            f"one network create may add at most {MAX_FIXED_IPS} (a /16): create fewer or smaller networks")
    return bits


def instance_name(name) -> str:
    """An instance name: letters, digits, '-', '_' or '.', starting with a letter or digit, up
    to 63 characters, with a non-empty hostname."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or not hostname_for(name):
        raise exception.InvalidInstanceName(name=name)
    return name


def hostname_for(name: str) -> str:
    """DNS label for an instance name: lower case, ``_``/``.`` become ``-``."""
    return re.sub(r"[_.]", "-", name.lower()).strip("-")


def required(value, what: str, option: str) -> str:
    """A non-empty string (``what`` is the thing, ``option`` the flag that gives it)."""
    if not isinstance(value, str) or not value.strip():
        raise exception.Invalid(f"{what} must not be empty; give it with {option}")
    return value
