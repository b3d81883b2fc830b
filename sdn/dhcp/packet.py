"""Fast DHCPv4 codec: Ethernet/IPv4/UDP/BOOTP frames <-> plain values, with ``struct`` only.

Scapy defines and validates the protocol in the tests (every request is crafted and every reply
parsed and checksum-checked with Scapy, and the constants below are cross-checked against
``scapy.layers.dhcp``), but the per-packet path never builds a Scapy packet: parsing + building
with Scapy costs ~1.7 ms per packet, this codec a few microseconds.

Parsing is strict about structure (lengths, magic cookie, option TLVs) and raises
``MalformedFrame`` -- and only ``MalformedFrame`` -- on anything it cannot decode.  It does not
verify the incoming IP/UDP checksums: guests with checksum offload legitimately send partial
UDP checksums through a tap device.
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

MAGIC_COOKIE = b"\x63\x82\x53\x63"
BOOTREQUEST = 1
BOOTREPLY = 2
SERVER_PORT = 67
CLIENT_PORT = 68
ETH_P_IP = 0x0800
ETH_P_8021Q = 0x8100
IPPROTO_UDP = 17
TTL = 64

#: BOOTP fixed header (236) + magic cookie (4)
BOOTP_HEADER_LEN = 240
#: RFC 1542 §2.1 / many clients: never send a BOOTP payload shorter than this
BOOTP_MIN_LEN = 300
#: RFC 2131 §2: every client accepts an IP datagram of 576 octets; option 57 can only raise it
MIN_MAX_MESSAGE_SIZE = 576
IP_UDP_HEADERS_LEN = 28

# Option 53 values (RFC 2132 §9.6); names match scapy.layers.dhcp.DHCPTypes (upper-cased).
DISCOVER = 1
OFFER = 2
REQUEST = 3
DECLINE = 4
ACK = 5
NAK = 6
RELEASE = 7
INFORM = 8
MESSAGE_TYPE_NAMES = {
    DISCOVER: "DISCOVER",
    OFFER: "OFFER",
    REQUEST: "REQUEST",
    DECLINE: "DECLINE",
    ACK: "ACK",
    NAK: "NAK",
    RELEASE: "RELEASE",
    INFORM: "INFORM",
}

# Option codes (RFC 2132, RFC 3046, RFC 4361); cross-checked against scapy's DHCPOptions in tests.
OPT_PAD = 0
OPT_SUBNET_MASK = 1
OPT_ROUTER = 3
OPT_DNS = 6
OPT_HOSTNAME = 12
OPT_DOMAIN = 15
OPT_MTU = 26
OPT_BROADCAST = 28
OPT_REQUESTED_IP = 50
OPT_LEASE_TIME = 51
OPT_OVERLOAD = 52
OPT_MESSAGE_TYPE = 53
OPT_SERVER_ID = 54
OPT_PARAM_REQUEST = 55
OPT_MESSAGE = 56
OPT_MAX_MESSAGE_SIZE = 57
OPT_T1 = 58
OPT_T2 = 59
OPT_CLIENT_ID = 61
OPT_RELAY_AGENT = 82
OPT_CLASSLESS_ROUTES = 121
OPT_END = 255

#: options whose value must have an exact length when present in a request
_FIXED_LENGTH = {
    OPT_MESSAGE_TYPE: 1,
    OPT_REQUESTED_IP: 4,
    OPT_SERVER_ID: 4,
    OPT_MAX_MESSAGE_SIZE: 2,
    OPT_OVERLOAD: 1,
}

ZERO_IP = b"\0\0\0\0"
BROADCAST_IP = b"\xff\xff\xff\xff"
BROADCAST_MAC = b"\xff" * 6
BROADCAST_FLAG = 0x8000

_ETH = struct.Struct("!6s6sH")
_IP = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
# op htype hlen hops xid secs flags ciaddr yiaddr siaddr giaddr chaddr [sname file] cookie
_BOOTP = struct.Struct("!BBBBIHH4s4s4s4s16s192x4s")
_REPLY_HEAD = struct.Struct("!6s6sHBBHHHBBH4s4sHHHHBBBBIHH4s4s4s4s16s")
_ZERO_SNAME_FILE = bytes(192)
_IP_HEADER_OFFSET = 14
_UDP_OFFSET = 34


class MalformedFrame(ValueError):
    """The frame is not a well-formed DHCPv4 request; the message says why."""


class DhcpRequest(NamedTuple):
    """A decoded BOOTREQUEST. Addresses are 4-byte ``bytes``, MACs 6-byte ``bytes``."""

    eth_src: bytes
    ip_src: bytes
    ip_dst: bytes
    udp_sport: int
    op: int
    htype: int
    hlen: int
    hops: int
    xid: int
    secs: int
    flags: int
    ciaddr: bytes
    yiaddr: bytes
    siaddr: bytes
    giaddr: bytes
    chaddr: bytes  # all 16 bytes, as on the wire
    options: dict  # code -> value; repeated options concatenated (RFC 3396)

    @property
    def message_type(self) -> int:
        return self.options[OPT_MESSAGE_TYPE][0]

    @property
    def client_mac(self) -> bytes:
        """The hardware address in chaddr (``hlen`` bytes)."""
        return self.chaddr[: self.hlen]


def _parse_options(buf: bytes, i: int, end: int, opts: dict, where: str) -> None:
    """Decode TLV options from buf[i:end] into opts; stop at END. Missing END is tolerated only
    when the last option ends exactly at ``end``."""
    while i < end:
        code = buf[i]
        if code == OPT_PAD:
            i += 1
            continue
        if code == OPT_END:
            return
        if i + 1 >= end:
            raise MalformedFrame(f"option {code} in {where} has no length byte")
        j = i + 2 + buf[i + 1]
        if j > end:
            raise MalformedFrame(f"option {code} in {where} overruns the field ({j - end} bytes)")
        value = buf[i + 2 : j]
        old = opts.get(code)
        opts[code] = value if old is None else old + value
        i = j


def parse_request(frame: bytes) -> DhcpRequest:
    """Decode an Ethernet frame carrying a DHCPv4 BOOTREQUEST; raise MalformedFrame otherwise."""
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise MalformedFrame(f"frame is {type(frame).__name__}, not bytes")
    frame = bytes(frame)
    n = len(frame)
    if n < 14:
        raise MalformedFrame(f"frame of {n} bytes is shorter than an Ethernet header")
    _dst, eth_src, ethertype = _ETH.unpack_from(frame, 0)
    off = 14
    if ethertype == ETH_P_8021Q:
        if n < 18:
            raise MalformedFrame("truncated 802.1Q tag")
        (ethertype,) = struct.unpack_from("!H", frame, 16)
        off = 18
    if ethertype != ETH_P_IP:
        raise MalformedFrame(f"ethertype 0x{ethertype:04x} is not IPv4")
    if n < off + 20:
        raise MalformedFrame("truncated IPv4 header")
    vihl, _tos, total, _id, frag, _ttl, proto, _csum, ip_src, ip_dst = _IP.unpack_from(frame, off)
    if vihl >> 4 != 4:
        raise MalformedFrame(f"IP version {vihl >> 4}")
    ihl = (vihl & 0xF) * 4
    if ihl < 20:
        raise MalformedFrame(f"IP header length {ihl} < 20")
    if total < ihl + 8 or off + total > n:
        raise MalformedFrame(f"IP total length {total} inconsistent with frame of {n} bytes")
    if frag & 0x3FFF:
        raise MalformedFrame("fragmented IP datagram")
    if proto != IPPROTO_UDP:
        raise MalformedFrame(f"IP protocol {proto} is not UDP")
    udp = off + ihl
    ip_end = off + total
    sport, dport, ulen, _ucsum = _UDP.unpack_from(frame, udp)
    if dport != SERVER_PORT:
        raise MalformedFrame(f"UDP destination port {dport} is not {SERVER_PORT}")
    if ulen < 8 or udp + ulen > ip_end:
        raise MalformedFrame(f"UDP length {ulen} inconsistent with IP length {total}")
    b = udp + 8
    end = udp + ulen
    if end - b < BOOTP_HEADER_LEN:
        raise MalformedFrame(f"BOOTP payload of {end - b} bytes is shorter than {BOOTP_HEADER_LEN}")
    (op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr,
     cookie) = _BOOTP.unpack_from(frame, b)
    if cookie != MAGIC_COOKIE:
        raise MalformedFrame(f"bad magic cookie {cookie.hex()}")
    if hlen > 16:
        raise MalformedFrame(f"hlen {hlen} > 16")
    opts: dict = {}
    _parse_options(frame, b + BOOTP_HEADER_LEN, end, opts, "options")
    overload = opts.get(OPT_OVERLOAD)
    if overload is not None:  # RFC 2132 §9.3: options continue in file (1), sname (2) or both (3)
        if len(overload) != 1 or overload[0] not in (1, 2, 3):
            raise MalformedFrame(f"bad option overload value {overload.hex()}")
        if overload[0] & 1:
            _parse_options(frame, b + 108, b + 236, opts, "file")
        if overload[0] & 2:
            _parse_options(frame, b + 44, b + 108, opts, "sname")
    for code, length in _FIXED_LENGTH.items():
        value = opts.get(code)
        if value is not None and len(value) != length:
            raise MalformedFrame(f"option {code} has length {len(value)}, expected {length}")
    if OPT_MESSAGE_TYPE not in opts:
        raise MalformedFrame("no DHCP message type (option 53)")
    return DhcpRequest(eth_src, ip_src, ip_dst, sport, op, htype, hlen, hops, xid, secs, flags,
                       ciaddr, yiaddr, siaddr, giaddr, chaddr, opts)


# ---------------------------------------------------------------------------------------- encoding

def tlv(code: int, value: bytes) -> bytes:
    """Encode one option; values longer than 255 bytes are split into several (RFC 3396)."""
    if len(value) <= 255:
        return bytes((code, len(value))) + value
    return b"".join(bytes((code, len(value[k:k + 255]))) + value[k:k + 255]
                    for k in range(0, len(value), 255))


def inet_checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum. The ones'-complement sum of 16-bit words is the big-endian
    integer of the data modulo 0xffff (2**16 == 1 mod 0xffff), which CPython does in C."""
    if len(data) & 1:
        data += b"\0"
    n = int.from_bytes(data, "big")
    s = n % 0xFFFF
    if s == 0 and n:
        s = 0xFFFF
    return 0xFFFF - s


def build_reply(*, eth_dst: bytes, eth_src: bytes, ip_src: bytes, ip_dst: bytes, udp_dport: int,
                htype: int, hlen: int, xid: int, flags: int, ciaddr: bytes, yiaddr: bytes,
                siaddr: bytes, giaddr: bytes, chaddr: bytes, options: bytes) -> bytes:
    """Ethernet/IPv4/UDP/BOOTREPLY frame. ``options`` are encoded TLVs without END; END and
    padding up to BOOTP_MIN_LEN are added. IP and UDP checksums are computed; TTL 64."""
    pad = BOOTP_MIN_LEN - BOOTP_HEADER_LEN - 1 - len(options)
    tail = _ZERO_SNAME_FILE + MAGIC_COOKIE + options + (b"\xff" + bytes(pad) if pad > 0 else b"\xff")
    bootp_len = 44 + len(tail)  # op..chaddr (44) + sname/file + cookie + options
    udp_len = 8 + bootp_len
    ip_len = 20 + udp_len
    ip_csum = inet_checksum(struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, 0, 0, TTL, IPPROTO_UDP,
                                        0, ip_src, ip_dst))
    head = _REPLY_HEAD.pack(
        eth_dst, eth_src, ETH_P_IP,
        0x45, 0, ip_len, 0, 0, TTL, IPPROTO_UDP, ip_csum, ip_src, ip_dst,
        SERVER_PORT, udp_dport, udp_len, 0,
        BOOTREPLY, htype, hlen, 0, xid, 0, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr)
    # UDP checksum over pseudo-header + UDP header + payload (0 is sent as 0xffff, RFC 768)
    pseudo = ip_src + ip_dst + struct.pack("!BBH", 0, IPPROTO_UDP, udp_len)
    ucsum = inet_checksum(pseudo + head[_UDP_OFFSET:] + tail) or 0xFFFF
    return head[:40] + struct.pack("!H", ucsum) + head[42:] + tail


def classless_routes(routes) -> bytes:
    """Option 121 value (RFC 3442 §3): per route the prefix length, the significant octets of
    the destination, then the router. ``routes`` is [(cidr, router)]."""
    out = bytearray()
    for cidr, router in routes:
        address, _, length = cidr.partition("/")
        width = int(length or 32)
        out.append(width)
        out += socket.inet_aton(address)[:(width + 7) // 8]
        out += socket.inet_aton(router)
    return bytes(out)
