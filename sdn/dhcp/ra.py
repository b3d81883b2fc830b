"""Router advertisements and the gateway's neighbour advertisements: pure bytes in -> bytes out.

    frame = router_advertisement(net)                 # periodic, unsolicited: to ff02::1
    reply = answer(rs_frame, net)                     # router solicitation -> its RA, else None
    reply = neighbor_advertisement(ns_frame, net)     # NS for a gateway address -> NA, else None

sdn is the router of every network (OVN's model: no radvd on OVS), so every RA comes from the
network's gateway: Ethernet source ``net.gateway_mac``, IPv6 source its link-local address
(``net.gateway_lla``, RFC 4291 App. A modified EUI-64), hop limit 255 (RFC 4861 §4.2, §6.1.2).

What an RA carries, by the network's mode (Neutron's ``ipv6_ra_mode`` / ``ipv6_address_mode``):

    slaac              prefix with L and A flags                     M=0 O=0
    dhcpv6-stateless   prefix with L and A flags                     M=0 O=1 (DNS by DHCPv6 as well)
    dhcpv6-stateful    prefix with the L flag only                   M=1 O=1 (address by DHCPv6)

plus router lifetime 3 x ``ra_interval`` (RFC 4861 §6.2.1), MTU when the network sets one (>= 1280,
RFC 8200 §5), the source link-layer address, RDNSS from ``dns_v6`` and DNSSL from ``domain``
(RFC 8106 §5.1, §5.2, lifetime 3 x ``ra_interval``).

The Ethernet/IPv6 helpers here (``parse_ipv6``, ``ipv6_frame``) are shared with
``sdn.dhcp.dhcpv6``. Decoding never raises: whatever is not a well-formed message is ``None``.
Incoming ICMPv6 checksums are verified (RFC 4861 §6.1.1, §7.1.1: the kernel computes them in
software, no offload); UDP checksums are not (``dhcpv6``: guests with offload send partial ones).
Scapy is the validator in the tests (tests/unit/test_ra.py), never used here: ~1.7 ms per packet.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import struct
from typing import NamedTuple

from sdn import ipv6
from sdn.dhcp.packet import inet_checksum
from sdn.dhcp.server import mac_bytes
from sdn.view import NetworkView

ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
IPPROTO_FRAGMENT = 44
#: IPv6 extension headers walked over to the upper layer (RFC 8200 §4): hop-by-hop options,
#: routing, destination options. A fragment (44) or anything else ends the walk.
_EXTENSION_HEADERS = frozenset((0, 43, 60))
_MAX_EXTENSION_HEADERS = 8

#: RFC 4861 §4: ICMPv6 types
ROUTER_SOLICITATION = 133
ROUTER_ADVERTISEMENT = 134
NEIGHBOR_SOLICITATION = 135
NEIGHBOR_ADVERTISEMENT = 136
#: RFC 4861 §4.6, RFC 8106 §5: option types
OPT_SOURCE_LLADDR = 1
OPT_TARGET_LLADDR = 2
OPT_PREFIX_INFORMATION = 3
OPT_MTU = 5
OPT_RDNSS = 25
OPT_DNSSL = 31

#: RA flags (RFC 4861 §4.2): managed address configuration, other configuration
RA_MANAGED = 0x80
RA_OTHER = 0x40
#: prefix information flags (RFC 4861 §4.6.2): on-link, autonomous address configuration
PREFIX_ON_LINK = 0x80
PREFIX_AUTONOMOUS = 0x40
#: NA flags (RFC 4861 §4.4): router, solicited, override
NA_ROUTER = 0x80
NA_SOLICITED = 0x40
NA_OVERRIDE = 0x20

#: RFC 4861 §6.1, §7.1: ND messages are only valid with hop limit 255 (never forwarded)
ND_HOP_LIMIT = 255
#: Cur Hop Limit advertised to hosts (RFC 4861 §6.2.1 AdvCurHopLimit: IANA's default TTL, 64)
CUR_HOP_LIMIT = 64
#: RFC 4861 §6.2.1 AdvValidLifetime / AdvPreferredLifetime defaults (30 days, 7 days)
PREFIX_VALID_LIFETIME = 2_592_000
PREFIX_PREFERRED_LIFETIME = 604_800
#: RFC 4861 §6.2.1: AdvDefaultLifetime is at most 9000 s
MAX_ROUTER_LIFETIME = 9000
#: RFC 8200 §5: every IPv6 link carries 1280 octets; a smaller MTU option is invalid
IPV6_MIN_MTU = 1280

SLAAC = "slaac"
DHCPV6_STATELESS = "dhcpv6-stateless"
DHCPV6_STATEFUL = "dhcpv6-stateful"
MODES = ipv6.MODES  # (SLAAC, DHCPV6_STATELESS, DHCPV6_STATEFUL)

ALL_NODES = "ff02::1"
ALL_NODES_MAC = "33:33:00:00:00:01"
UNSPECIFIED = bytes(16)
_ALL_NODES = socket.inet_pton(socket.AF_INET6, ALL_NODES)
_ALL_NODES_MAC = bytes.fromhex(ALL_NODES_MAC.replace(":", ""))
_SOLICITED_NODE_PREFIX = bytes.fromhex("ff02" + "00" * 9 + "01ff")  # ff02::1:ff00:0/104

_ETH = struct.Struct("!6s6sH")
_IPV6 = struct.Struct("!IHBB16s16s")
_U32 = struct.Struct("!I")


class Ipv6Packet(NamedTuple):
    """A decoded Ethernet/IPv6 frame. MACs are 6 ``bytes``, addresses 16 ``bytes``;
    ``payload`` is the upper-layer message (after any extension headers, without the frame's
    Ethernet padding); ``next_header`` its protocol (58 ICMPv6, 17 UDP)."""

    eth_dst: bytes
    eth_src: bytes
    src: bytes
    dst: bytes
    hop_limit: int
    next_header: int
    payload: bytes


# ------------------------------------------------------------------------------ frames

def parse_ipv6(frame: bytes) -> Ipv6Packet | None:
    """Decode an Ethernet (optionally 802.1Q-tagged) frame carrying an unfragmented IPv6
    packet (RFC 8200 §3, §4); None for anything else, never an exception."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        return None
    frame = bytes(frame)
    n = len(frame)
    if n < 54:
        return None
    eth_dst, eth_src, ethertype = _ETH.unpack_from(frame, 0)
    off = 14
    if ethertype == ETH_P_8021Q:
        ethertype = int.from_bytes(frame[16:18], "big")
        off = 18
    if ethertype != ETH_P_IPV6 or n < off + 40:
        return None
    vtf, length, next_header, hop_limit, src, dst = _IPV6.unpack_from(frame, off)
    if vtf >> 28 != 6:
        return None
    start = off + 40
    end = start + length
    if end > n or length == 0:  # truncated, or a jumbogram (RFC 2675), which no link here carries
        return None
    for _ in range(_MAX_EXTENSION_HEADERS):
        if next_header not in _EXTENSION_HEADERS:
            break
        if start + 8 > end:
            return None
        next_header, size = frame[start], (frame[start + 1] + 1) * 8
        start += size
        if start > end:
            return None
    else:
        return None
    if next_header in _EXTENSION_HEADERS or next_header == IPPROTO_FRAGMENT:
        return None
    return Ipv6Packet(eth_dst, eth_src, src, dst, hop_limit, next_header, frame[start:end])


def upper_checksum(src: bytes, dst: bytes, next_header: int, message: bytes) -> int:
    """RFC 8200 §8.1: the Internet checksum over the pseudo-header (source, destination,
    upper-layer length, next header) and ``message``. 0 when ``message`` carries a correct
    checksum; the value to insert when its checksum field is zero."""
    return inet_checksum(src + dst + struct.pack("!I3xB", len(message), next_header) + message)


def ipv6_frame(*, eth_dst: bytes, eth_src: bytes, src: bytes, dst: bytes, next_header: int,
               message: bytes, checksum_at: int, hop_limit: int = ND_HOP_LIMIT) -> bytes:
    """Ethernet/IPv6 frame (no extension headers, traffic class and flow label 0) around the
    upper-layer ``message``, whose 16-bit checksum field at offset ``checksum_at`` (2 for
    ICMPv6, 6 for UDP) must be zero: it is computed here (RFC 8200 §8.1; a UDP checksum of 0 is
    sent as 0xffff, RFC 768)."""
    csum = upper_checksum(src, dst, next_header, message)
    if next_header == IPPROTO_UDP and csum == 0:
        csum = 0xFFFF
    message = message[:checksum_at] + csum.to_bytes(2, "big") + message[checksum_at + 2:]
    return (_ETH.pack(eth_dst, eth_src, ETH_P_IPV6)
            + _IPV6.pack(0x60000000, len(message), next_header, hop_limit, src, dst) + message)


def multicast_mac(address: bytes) -> bytes:
    """RFC 2464 §7: the Ethernet address of an IPv6 multicast address, 33:33 + its last 4 bytes."""
    return b"\x33\x33" + address[12:]


def solicited_node(address: bytes) -> bytes:
    """RFC 4291 §2.7.1: ff02::1:ffXX:XXXX of ``address`` (16 bytes -> 16 bytes)."""
    return _SOLICITED_NODE_PREFIX + address[13:]


def _packed(address: str | None) -> bytes | None:
    return socket.inet_pton(socket.AF_INET6, address) if address else None


# ------------------------------------------------------------------------------ network facts

def address_mode(net: NetworkView) -> str:
    """The network's IPv6 mode: ``ipv6_ra_mode``, else ``ipv6_address_mode``, else "slaac"
    (sdn is always the router, so the two are equal when both are set)."""
    return net.ipv6_ra_mode or net.ipv6_address_mode or SLAAC


def router_lifetime(net: NetworkView) -> int:
    """Seconds: 3 x ``ra_interval`` (RFC 4861 §6.2.1 AdvDefaultLifetime), at most 9000."""
    return max(0, min(3 * int(net.ra_interval), MAX_ROUTER_LIFETIME))


def domain_names(*names: str) -> bytes:
    """RFC 1035 §3.1 wire form (no compression) of each name, concatenated, as DNSSL
    (RFC 8106 §5.2) and DHCPv6 option 24 (RFC 3646 §4, RFC 8415 §10) carry them. Names that
    cannot be encoded (a label over 63 octets, a name over 255, not ASCII) are left out."""
    out = bytearray()
    for name in names:
        try:
            labels = [label.encode("ascii") for label in name.strip(".").split(".") if label]
        except (UnicodeEncodeError, AttributeError):
            continue
        wire = b"".join(bytes((len(label),)) + label for label in labels) + b"\0"
        if labels and all(len(label) <= 63 for label in labels) and len(wire) <= 255:
            out += wire
    return bytes(out)


# ------------------------------------------------------------------------------ RA

def _nd_option(kind: int, body: bytes) -> bytes:
    """One ND option (RFC 4861 §4.6): type, length in 8-octet units, ``body`` zero-padded."""
    size = (len(body) + 2 + 7) // 8 * 8
    return bytes((kind, size // 8)) + body + bytes(size - 2 - len(body))


class Gateway(NamedTuple):
    """A network's IPv6 router in wire form (16-byte addresses, 6-byte MAC), computed once per
    NetworkView by :func:`gateway`."""

    mac: bytes                    #: gateway_mac
    lla: bytes                    #: gateway_lla
    address: bytes | None         #: gateway_v6
    prefix: ipaddress.IPv6Network  #: cidr_v6
    mode: str                     #: address_mode(net)
    dns: bytes                    #: dns_v6, packed back to back
    domains: bytes                #: domain in RFC 1035 wire form (b"" when none or unusable)
    ra_message: bytes             #: the ICMPv6 router advertisement, checksum field zero


@functools.lru_cache(maxsize=4096)
def gateway(net: NetworkView) -> Gateway:
    """``net``'s gateway in wire form, its router advertisement message built (RFC 4861 §4.2).
    Cached per NetworkView (frozen: a changed network is another key). Raises ValueError when
    ``net`` has no ``cidr_v6`` or an address or MAC does not parse (controller data)."""
    if not net.cidr_v6:
        raise ValueError(f"network {net.label!r} has no IPv6 prefix (cidr_v6)")
    prefix = ipaddress.IPv6Network(net.cidr_v6, strict=False)
    mode = address_mode(net)
    mac = mac_bytes(net.gateway_mac)
    dns = b"".join(_packed(a) for a in net.dns_v6)
    domains = domain_names(net.domain) if net.domain else b""
    flags = {SLAAC: 0, DHCPV6_STATELESS: RA_OTHER,
             DHCPV6_STATEFUL: RA_MANAGED | RA_OTHER}.get(mode, 0)
    prefix_flags = PREFIX_ON_LINK | (0 if mode == DHCPV6_STATEFUL else PREFIX_AUTONOMOUS)
    lifetime = router_lifetime(net)
    options = [_nd_option(OPT_SOURCE_LLADDR, mac)]
    if net.mtu and IPV6_MIN_MTU <= int(net.mtu) <= 0xFFFFFFFF:
        options.append(_nd_option(OPT_MTU, b"\0\0" + _U32.pack(int(net.mtu))))
    options.append(_nd_option(OPT_PREFIX_INFORMATION, struct.pack(
        "!BBII4x16s", prefix.prefixlen, prefix_flags, PREFIX_VALID_LIFETIME,
        PREFIX_PREFERRED_LIFETIME, prefix.network_address.packed)))
    if dns:
        options.append(_nd_option(OPT_RDNSS, b"\0\0" + _U32.pack(lifetime) + dns))
    if domains:
        options.append(_nd_option(OPT_DNSSL, b"\0\0" + _U32.pack(lifetime) + domains))
    head = struct.pack("!BBHBBHII", ROUTER_ADVERTISEMENT, 0, 0, CUR_HOP_LIMIT, flags, lifetime,
                       0, 0)  # reachable time and retrans timer 0: unspecified by this router
    return Gateway(mac, _packed(net.gateway_lla), _packed(net.gateway_v6), prefix, mode, dns,
                   domains, head + b"".join(options))


def router_advertisement(net: NetworkView, *, dst_mac: str = ALL_NODES_MAC,
                         dst_ip: str = ALL_NODES) -> bytes:
    """The whole Ethernet frame of ``net``'s router advertisement (RFC 4861 §4.2, §6.2.3),
    from ``gateway_mac`` / ``gateway_lla`` to ``dst_mac`` / ``dst_ip`` (default: all-nodes,
    the periodic unsolicited RA). Untagged: the caller adds a VLAN tag where it needs one.

    Raises ValueError when ``net`` has no ``cidr_v6`` or an unusable address (controller data,
    never a guest's); :func:`answer` never raises."""
    return _ra_frame(gateway(net), mac_bytes(dst_mac), _packed(dst_ip))


def _ra_frame(gw: Gateway, eth_dst: bytes, dst: bytes) -> bytes:
    return ipv6_frame(eth_dst=eth_dst, eth_src=gw.mac, src=gw.lla, dst=dst,
                      next_header=IPPROTO_ICMPV6, message=gw.ra_message, checksum_at=2)


# ------------------------------------------------------------------------------ ND decoding

def _nd_options(message: bytes, start: int) -> dict[int, bytes] | None:
    """ND options of ``message`` from ``start`` as {type: first body}; None when an option has
    length 0 or overruns the message (RFC 4861 §6.1.1, §7.1.1: such messages are discarded)."""
    options: dict[int, bytes] = {}
    i, n = start, len(message)
    while i < n:
        if i + 2 > n or message[i + 1] == 0:
            return None
        j = i + message[i + 1] * 8
        if j > n:
            return None
        options.setdefault(message[i], message[i + 2:j])
        i = j
    return options


def _valid_nd(packet: Ipv6Packet | None, kind: int, min_len: int) -> dict[int, bytes] | None:
    """Options of an ICMPv6 ND message of type ``kind`` that passes RFC 4861's validity checks
    (§6.1.1, §7.1.1: hop limit 255, code 0, checksum, length, options); None otherwise."""
    if (packet is None or packet.next_header != IPPROTO_ICMPV6 or packet.hop_limit != ND_HOP_LIMIT
            or len(packet.payload) < min_len or packet.payload[0] != kind or packet.payload[1] != 0
            or upper_checksum(packet.src, packet.dst, IPPROTO_ICMPV6, packet.payload) != 0):
        return None
    options = _nd_options(packet.payload, min_len)
    if options is None:
        return None
    if packet.src == UNSPECIFIED and OPT_SOURCE_LLADDR in options:
        return None  # §6.1.1 / §7.1.1: no source link-layer address option from ::
    return options


def is_router_advertisement(frame: bytes) -> bool:
    """Whether ``frame`` is an Ethernet/IPv6 ICMPv6 router advertisement (type 134), however
    malformed otherwise; for backends that must drop RAs from instances."""
    packet = parse_ipv6(frame)
    return (packet is not None and packet.next_header == IPPROTO_ICMPV6
            and packet.payload[:1] == bytes((ROUTER_ADVERTISEMENT,)))


def answer(frame: bytes, net: NetworkView) -> bytes | None:
    """A valid router solicitation (RFC 4861 §4.1, §6.1.1) -> ``net``'s router advertisement
    (§6.2.6): unicast to the soliciting host (its Ethernet and IPv6 source) when it has a source
    address, else to all-nodes. None for anything else, or when ``net`` has no ``cidr_v6``;
    never an exception."""
    try:
        packet = parse_ipv6(frame)
        if not net.cidr_v6 or _valid_nd(packet, ROUTER_SOLICITATION, 8) is None:
            return None
        if packet.src == UNSPECIFIED:
            return _ra_frame(gateway(net), _ALL_NODES_MAC, _ALL_NODES)
        if packet.src[0] == 0xFF:
            return None  # a multicast source is invalid (RFC 4291 §2.7)
        return _ra_frame(gateway(net), packet.eth_src, packet.src)
    except Exception:  # controller data we cannot encode must cost one answer, not the caller
        return None


def neighbor_advertisement(frame: bytes, net: NetworkView) -> bytes | None:
    """A valid neighbour solicitation (RFC 4861 §4.3, §7.1.1) for the gateway's global
    (``gateway_v6``) or link-local (``gateway_lla``) address -> the gateway's neighbour
    advertisement (§4.4, §7.2.4): source the target address, target link-layer address
    ``gateway_mac``, R and O flags; S and unicast to the solicitor, or (duplicate address
    detection, source ::) S clear and to all-nodes. None for anything else, or when ``net`` has
    no ``cidr_v6``; never an exception."""
    try:
        packet = parse_ipv6(frame)
        if not net.cidr_v6 or _valid_nd(packet, NEIGHBOR_SOLICITATION, 24) is None:
            return None
        target = packet.payload[8:24]
        gw = gateway(net)
        if target != gw.lla and target != gw.address:
            return None
        if packet.src == UNSPECIFIED:
            if packet.dst != solicited_node(target):
                return None  # §7.1.1: DAD is sent to the target's solicited-node address
            dst, eth_dst, flags = _ALL_NODES, _ALL_NODES_MAC, NA_ROUTER | NA_OVERRIDE
        elif packet.src[0] == 0xFF:
            return None
        else:
            dst, eth_dst, flags = packet.src, packet.eth_src, NA_ROUTER | NA_SOLICITED | NA_OVERRIDE
        message = (struct.pack("!BBHB3x16s", NEIGHBOR_ADVERTISEMENT, 0, 0, flags, target)
                   + _nd_option(OPT_TARGET_LLADDR, gw.mac))
        return ipv6_frame(eth_dst=eth_dst, eth_src=gw.mac, src=target, dst=dst,
                          next_header=IPPROTO_ICMPV6, message=message, checksum_at=2)
    except Exception:  # controller data we cannot encode must cost one answer, not the caller
        return None
