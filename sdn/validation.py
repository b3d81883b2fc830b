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


def ipv6_network(value, what: str) -> netaddr.IPNetwork:
    """An IPv6 prefix without host bits, /64 or shorter (an IPv6 link is a /64: SLAAC needs
    64-bit interface identifiers, RFC 4291 §2.5.1, RFC 4862 §5.5.3)."""
    example = "an IPv6 CIDR such as fd00:0:0:1::/64 or fd00::/48"
    net = _parse_network(value, what, example)
    if net.version != 6:
        raise exception.InvalidCidr(cidr=value, reason=f"{what} must be {example}")
    _no_host_bits(net, value)
    if net.prefixlen > 64:
        raise exception.InvalidCidr(cidr=value, reason=f"{what} must be a /64 or shorter (one /64 per "
                                    "network, which SLAAC needs)")
    return net


def ipv6_address(value, what: str) -> str:
    """One IPv6 address, compressed text (``what`` names it in the message)."""
    if not isinstance(value, str) or not netaddr.valid_ipv6(value.strip(), netaddr.INET_PTON):
        raise exception.InvalidAddress(what=what, value=value, allowed="an IPv6 address such as 2001:db8::1")
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


# -- security group and provider rules ------------------------------------------------------

#: protocol names a rule accepts (IANA numbers); "any" (or nothing) is every protocol
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "ipv6-icmp": 58, "sctp": 132}
PORT_PROTOCOLS = (6, 17, 132)
ICMP_PROTOCOLS = (1, 58)
DIRECTIONS = ("ingress", "egress")
ETHERTYPES = ("IPv4", "IPv6")
_SG_NAME_RE = re.compile(r"^[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]{0,254}$")


def secgroup_name(value) -> str:
    """A security group name: 1-255 printable characters, not starting with a space."""
    if not isinstance(value, str) or not _SG_NAME_RE.fullmatch(value) or value != value.strip():
        raise exception.Invalid(f"invalid security group name {value!r}: 1-255 printable "
                                f"characters without leading or trailing spaces")
    return value


def protocol(value) -> int | None:
    """IP protocol of a rule: a name (tcp, udp, icmp, icmpv6, sctp), a number 0-255, or
    any/None (every protocol, returned as None)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "any", "-1")):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lower() in PROTOCOLS:
        return PROTOCOLS[value.strip().lower()]
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    else:
        raise exception.Invalid(f"unknown protocol {value!r}: use tcp, udp, icmp, icmpv6, sctp, "
                                f"any, or an IP protocol number 0-255")
    if not 0 <= number <= 255:
        raise exception.Invalid(f"IP protocol number {number} is outside 0-255")
    return number


def _int_or_none(value, what: str):
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise exception.Invalid(f"{what} must be a whole number, not {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise exception.Invalid(f"{what} must be a whole number, not {value!r}")
    return value


def rule_ports(proto: int | None, from_port, to_port) -> tuple[int | None, int | None]:
    """(port_min, port_max) of a rule for protocol ``proto``.

    TCP/UDP/SCTP: a destination port range within 1-65535, from <= to; both absent (or -1,
    nova's "any") is every port. ICMP/ICMPv6: from = type, to = code, each 0-255 or -1/absent
    for any; a code needs a type. Other protocols take no ports. Raises Invalid.
    """
    lo = _int_or_none(from_port, "the from port")
    hi = _int_or_none(to_port, "the to port")
    if proto in PORT_PROTOCOLS:
        if lo in (None, -1) and hi in (None, -1):
            return None, None
        if lo is None or hi is None:
            lo = hi if lo is None else lo
            hi = lo if hi is None else hi
        if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
            raise exception.Invalid(f"bad port range {lo}-{hi}: ports are 1-65535 (or -1 -1 for "
                                    f"every port)")
        if lo > hi:
            raise exception.Invalid(f"bad port range {lo}-{hi}: the from port is above the to port")
        return lo, hi
    if proto in ICMP_PROTOCOLS:
        icmp_type = None if lo in (None, -1) else lo
        code = None if hi in (None, -1) else hi
        for what, v in (("ICMP type", icmp_type), ("ICMP code", code)):
            if v is not None and not 0 <= v <= 255:
                raise exception.Invalid(f"bad {what} {v}: 0-255, or -1 for any")
        if code is not None and icmp_type is None:
            raise exception.Invalid(f"ICMP code {code} needs an ICMP type (the from port)")
        return icmp_type, code
    if lo not in (None, -1) or hi not in (None, -1):
        name = "any protocol" if proto is None else f"protocol {proto}"
        raise exception.Invalid(f"ports apply to tcp, udp and sctp (and type/code to icmp), "
                                f"not to {name}")
    return None, None


def rule_cidr(value, ethertype: str | None = None) -> str:
    """A rule's remote CIDR in canonical form (host bits dropped); its version must match
    ``ethertype`` when given."""
    net = _parse_network(value, "the remote CIDR", "a CIDR such as 192.0.2.0/24 or 0.0.0.0/0")
    if ethertype is not None and f"IPv{net.version}" != ethertype:
        raise exception.Invalid(f"remote CIDR {value} is IPv{net.version} but the rule's "
                                f"ethertype is {ethertype}")
    return str(net.cidr)


def direction(value) -> str:
    if not isinstance(value, str) or value.strip().lower() not in DIRECTIONS:
        raise exception.Invalid(f"unknown direction {value!r}: ingress or egress")
    return value.strip().lower()


def ethertype(value) -> str:
    wanted = {e.lower(): e for e in ETHERTYPES}
    if not isinstance(value, str) or value.strip().lower() not in wanted:
        raise exception.Invalid(f"unknown ethertype {value!r}: IPv4 or IPv6")
    return wanted[value.strip().lower()]


def rule_protocol_family(proto: int | None, ether: str) -> None:
    """ICMP belongs to IPv4 and ICMPv6 to IPv6."""
    if proto == 1 and ether == "IPv6":
        raise exception.Invalid("icmp is IPv4's; an IPv6 rule takes icmpv6")
    if proto == 58 and ether == "IPv4":
        raise exception.Invalid("icmpv6 is IPv6's; an IPv4 rule takes icmp")
