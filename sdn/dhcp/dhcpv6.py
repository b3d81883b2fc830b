"""DHCPv6 server for one VIF (RFC 8415): pure decisions, Ethernet frame in -> Ethernet frame out.

    reply = handle(frame, net, vif)                   # bytes, or None: nothing to send
    reply, reason = answer(frame, net, vif)           # the same, with a short reason for logs

Like the DHCPv4 responder (``sdn.dhcp.server``) there is no pool: a VIF's global IPv6 address is
derived from its MAC (``vif.addresses_v6[0]``, ``sdn.ipv6``), so the server only ever hands out
that address, only to the VIF's own MAC, and keeps no state (a "binding" is the derived address).

By the network's mode (``sdn.dhcp.ra.address_mode``):

* ``slaac``: nothing is answered (the RA's O and M flags are clear; no client asks).
* ``dhcpv6-stateless``: INFORMATION-REQUEST -> REPLY with DNS servers (option 23, RFC 3646) and
  the domain search list (option 24) (RFC 8415 §18.3.6).
* ``dhcpv6-stateful``: the above, and SOLICIT -> ADVERTISE (preference 255, so the client requests
  at once) or, with Rapid Commit, REPLY (§18.3.1); REQUEST, RENEW, REBIND -> REPLY with an IA_NA
  holding the derived address (§18.3.2, §18.3.4, §18.3.5); CONFIRM -> REPLY Success or NotOnLink
  (§18.3.3); RELEASE, DECLINE -> REPLY Success (§18.3.7, §18.3.8; nothing to free: the address is
  the VIF's for its life). Status codes (§21.13) where §18.3 requires them: NoAddrsAvail (the VIF
  has no address; IA_TA always), NoPrefixAvail (IA_PD), NotOnLink (an address outside cidr_v6),
  NoBinding (RENEW of a VIF without address, RELEASE/DECLINE of another address).

Messages are validated as §16 says (Client/Server Identifier presence and match) and answered from
the gateway (``gateway_mac``, ``gateway_lla``, port 547) to the client's MAC and source address,
port 546 (§7.2, §18.3.10). The server DUID is DUID-LL (§11.4) of ``gateway_mac`` unless the
caller passes one. Relay messages are not handled (every VIF is on the controller's link).
Never an exception out: undecodable or unwanted input is ``None`` with its reason.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import struct
from typing import NamedTuple

from sdn.dhcp import ra
from sdn.dhcp.server import mac_bytes
from sdn.view import NetworkView, VifView

CLIENT_PORT = 546
SERVER_PORT = 547
#: RFC 8415 §7.1: All_DHCP_Relay_Agents_and_Servers (link-scoped) and All_DHCP_Servers
ALL_DHCP_RELAY_AGENTS_AND_SERVERS = socket.inet_pton(socket.AF_INET6, "ff02::1:2")
ALL_DHCP_SERVERS = socket.inet_pton(socket.AF_INET6, "ff05::1:3")

# Message types (RFC 8415 §7.3); names as scapy.layers.dhcp6.dhcp6types, upper-cased.
SOLICIT = 1
ADVERTISE = 2
REQUEST = 3
CONFIRM = 4
RENEW = 5
REBIND = 6
REPLY = 7
RELEASE = 8
DECLINE = 9
RECONFIGURE = 10
INFORMATION_REQUEST = 11
RELAY_FORW = 12
RELAY_REPL = 13
MESSAGE_TYPE_NAMES = {
    SOLICIT: "SOLICIT", ADVERTISE: "ADVERTISE", REQUEST: "REQUEST", CONFIRM: "CONFIRM",
    RENEW: "RENEW", REBIND: "REBIND", REPLY: "REPLY", RELEASE: "RELEASE", DECLINE: "DECLINE",
    RECONFIGURE: "RECONFIGURE", INFORMATION_REQUEST: "INFORMATION-REQUEST",
    RELAY_FORW: "RELAY-FORW", RELAY_REPL: "RELAY-REPL",
}
#: what a server sends: dropped when an instance sends it (port security), ignored here
SERVER_MESSAGES = frozenset((ADVERTISE, REPLY, RECONFIGURE, RELAY_REPL))

# Option codes (RFC 8415 §21, RFC 3646 §3-4); cross-checked against Scapy in the tests.
OPT_CLIENTID = 1
OPT_SERVERID = 2
OPT_IA_NA = 3
OPT_IA_TA = 4
OPT_IAADDR = 5
OPT_ORO = 6
OPT_PREFERENCE = 7
OPT_ELAPSED_TIME = 8
OPT_STATUS_CODE = 13
OPT_RAPID_COMMIT = 14
OPT_DNS_SERVERS = 23
OPT_DOMAIN_LIST = 24
OPT_IA_PD = 25
OPT_IAPREFIX = 26

# Status codes (RFC 8415 §21.13)
SUCCESS = 0
UNSPEC_FAIL = 1
NO_ADDRS_AVAIL = 2
NO_BINDING = 3
NOT_ON_LINK = 4
USE_MULTICAST = 5
NO_PREFIX_AVAIL = 6
STATUS_NAMES = {SUCCESS: "Success", UNSPEC_FAIL: "UnspecFail", NO_ADDRS_AVAIL: "NoAddrsAvail",
                NO_BINDING: "NoBinding", NOT_ON_LINK: "NotOnLink",
                USE_MULTICAST: "UseMulticast", NO_PREFIX_AVAIL: "NoPrefixAvail"}

#: RFC 8415 §11.1: a DUID is a 2-octet type and at most 128 octets more
MAX_DUID_LEN = 130
DUID_LL = 3
HWTYPE_ETHERNET = 1
#: shortest address lifetime handed out (seconds), whatever the network's lease_time
MIN_LIFETIME = 60

_OPT = struct.Struct("!HH")
_IA = struct.Struct("!III")
_IAADDR = struct.Struct("!16sII")
_UDP = struct.Struct("!HHHH")


class MalformedMessage(ValueError):
    """The bytes are not a well-formed DHCPv6 client message; the message says why."""


class Dhcp6Message(NamedTuple):
    """A decoded client message (RFC 8415 §8). ``options``: code -> list of values, in order."""

    msg_type: int
    transaction_id: bytes  # 3 bytes
    options: dict[int, list[bytes]]

    def first(self, code: int) -> bytes | None:
        values = self.options.get(code)
        return values[0] if values else None


class IdentityAssociation(NamedTuple):
    """An IA_NA or IA_TA (RFC 8415 §21.4, §21.5) of a client message: its type, IAID (4 bytes)
    and the addresses it holds (16 bytes each)."""

    code: int
    iaid: bytes
    addresses: tuple[bytes, ...]


# ------------------------------------------------------------------------------ decoding

def parse_options(data: bytes) -> dict[int, list[bytes]]:
    """RFC 8415 §21.1 option TLVs (2-octet code, 2-octet length) -> {code: [values]}.
    Raises MalformedMessage when an option header or value overruns ``data``."""
    options: dict[int, list[bytes]] = {}
    i, n = 0, len(data)
    while i < n:
        if i + 4 > n:
            raise MalformedMessage(f"option header at offset {i} overruns the message")
        code, length = _OPT.unpack_from(data, i)
        j = i + 4 + length
        if j > n:
            raise MalformedMessage(f"option {code} of length {length} overruns the message")
        options.setdefault(code, []).append(data[i + 4:j])
        i = j
    return options


def parse_message(data: bytes) -> Dhcp6Message:
    """A client/server message (RFC 8415 §8): type, transaction id, options. Raises
    MalformedMessage on anything else (relay messages, §9, included: they are not decoded)."""
    if len(data) < 4:
        raise MalformedMessage(f"message of {len(data)} bytes is shorter than its 4-byte header")
    if data[0] in (RELAY_FORW, RELAY_REPL):
        raise MalformedMessage(f"{MESSAGE_TYPE_NAMES[data[0]]} (relay messages are not served)")
    return Dhcp6Message(data[0], data[1:4], parse_options(data[4:]))


def identity_associations(message: Dhcp6Message) -> list[IdentityAssociation]:
    """The IA_NAs and IA_TAs of ``message`` with their IA Address options (§21.4-21.6).
    Raises MalformedMessage when one is too short or its options are malformed."""
    out = []
    for code, head in ((OPT_IA_NA, 12), (OPT_IA_TA, 4)):
        for value in message.options.get(code, ()):
            if len(value) < head:
                raise MalformedMessage(f"option {code} of {len(value)} bytes < {head}")
            addresses = []
            for address in parse_options(value[head:]).get(OPT_IAADDR, ()):
                if len(address) < 24:
                    raise MalformedMessage(f"IA Address option of {len(address)} bytes < 24")
                parse_options(address[24:])
                addresses.append(address[:16])
            out.append(IdentityAssociation(code, value[:4], tuple(addresses)))
    return out


def is_server_message(frame: bytes) -> bool:
    """Whether ``frame`` is an Ethernet/IPv6/UDP DHCPv6 message a server or relay sends (UDP
    source port 547, or ADVERTISE, REPLY, RECONFIGURE, RELAY-REPL to port 546), however
    malformed otherwise; for backends that must drop these from instances."""
    packet = ra.parse_ipv6(frame)
    if packet is None or packet.next_header != ra.IPPROTO_UDP or len(packet.payload) < 9:
        return False
    sport, dport = struct.unpack_from("!HH", packet.payload)
    return sport == SERVER_PORT or (dport == CLIENT_PORT and packet.payload[8] in SERVER_MESSAGES)


# ------------------------------------------------------------------------------ encoding

def option(code: int, value: bytes = b"") -> bytes:
    """One option TLV (RFC 8415 §21.1)."""
    return _OPT.pack(code, len(value)) + value


def status(code: int, message: str = "") -> bytes:
    """Status Code option (RFC 8415 §21.13): 2-octet code, UTF-8 message."""
    return option(OPT_STATUS_CODE, struct.pack("!H", code) + message.encode())


def duid_ll(mac: str) -> bytes:
    """DUID-LL (RFC 8415 §11.4): type 3, hardware type 1 (Ethernet), the 6-byte MAC."""
    return struct.pack("!HH", DUID_LL, HWTYPE_ETHERNET) + mac_bytes(mac)


class _Link(NamedTuple):
    """What the decisions need of the network and VIF, in wire form."""

    mode: str
    prefix: ipaddress.IPv6Network
    address: bytes | None          # the VIF's derived address
    lifetime: int                  # preferred = valid lifetime of the address, seconds
    server_duid: bytes
    config: bytes                  # encoded DNS (23) and domain list (24) options


@functools.lru_cache(maxsize=4096)
def _network(net: NetworkView) -> tuple[ra.Gateway, int, bytes, bytes]:
    """(gateway, address lifetime, default server DUID, DNS and domain options) of ``net``."""
    gw = ra.gateway(net)
    config = option(OPT_DNS_SERVERS, gw.dns) if gw.dns else b""
    if gw.domains:
        config += option(OPT_DOMAIN_LIST, gw.domains)
    lifetime = max(MIN_LIFETIME, min(int(net.lease_time), 0xFFFFFFFE))
    return gw, lifetime, duid_ll(net.gateway_mac), config


def _ia_na(iaid: bytes, body: bytes, t1: int = 0, t2: int = 0) -> bytes:
    return option(OPT_IA_NA, iaid + struct.pack("!II", t1, t2) + body)


def _iaaddr(address: bytes, lifetime: int) -> bytes:
    return option(OPT_IAADDR, _IAADDR.pack(address, lifetime, lifetime))


def _assigned(link: _Link, iaid: bytes) -> bytes:
    """IA_NA with the VIF's address; T1 and T2 at 0.5 and 0.8 of its lifetime (§21.4)."""
    return _ia_na(iaid, _iaaddr(link.address, link.lifetime),
                  link.lifetime // 2, link.lifetime * 4 // 5)


def _other_ias(message: Dhcp6Message, code_ta: int, code_pd: int) -> bytes:
    """IA_TAs and IA_PDs, which this server never serves, returned with a status (§18.3.1)."""
    out = b""
    for value in message.options.get(OPT_IA_TA, ()):
        out += option(OPT_IA_TA, value[:4] + status(code_ta, "no temporary addresses here"))
    for value in message.options.get(OPT_IA_PD, ()):
        if len(value) >= 12:
            out += option(OPT_IA_PD, value[:4] + bytes(8)
                          + status(code_pd, "no prefix delegation here"))
    return out


def _on_link(link: _Link, address: bytes) -> bool:
    return ipaddress.IPv6Address(address) in link.prefix


# ------------------------------------------------------------------------------ decisions

def handle(frame: bytes, net: NetworkView, vif: VifView, *,
           server_duid: bytes | None = None) -> bytes | None:
    """The reply frame to ``frame`` received from ``vif`` on ``net``, or None (see the module
    docstring for what is answered). Untagged Ethernet/IPv6/UDP from ``gateway_mac`` /
    ``gateway_lla`` port 547 to the client's MAC / source address port 546; never raises."""
    return answer(frame, net, vif, server_duid=server_duid)[0]


def answer(frame: bytes, net: NetworkView, vif: VifView, *,
           server_duid: bytes | None = None) -> tuple[bytes | None, str]:
    """``handle`` with a short human-readable reason (for logs); never raises."""
    try:
        return _answer(frame, net, vif, server_duid)
    except Exception as exc:  # a bug must cost one message, never the caller's thread
        return None, f"error: {type(exc).__name__}: {exc}"


def _answer(frame: bytes, net: NetworkView, vif: VifView,
            server_duid: bytes | None) -> tuple[bytes | None, str]:
    packet = ra.parse_ipv6(frame)
    if packet is None or packet.next_header != ra.IPPROTO_UDP or len(packet.payload) < 8:
        return None, "malformed: not an IPv6/UDP frame"
    _sport, dport, length, _csum = _UDP.unpack_from(packet.payload)
    if dport != SERVER_PORT:
        return None, f"ignored: UDP port {dport} is not {SERVER_PORT}"
    if length < 8 or length > len(packet.payload):
        return None, f"malformed: UDP length {length} for {len(packet.payload)} bytes"
    try:
        message = parse_message(packet.payload[8:length])
        ias = identity_associations(message)
    except MalformedMessage as exc:
        return None, f"malformed: {exc}"
    name = MESSAGE_TYPE_NAMES.get(message.msg_type, f"type {message.msg_type}")
    if message.msg_type in SERVER_MESSAGES or message.msg_type not in MESSAGE_TYPE_NAMES:
        return None, f"ignored: {name} is not a client message"
    if packet.eth_src != mac_bytes(vif.mac):
        return None, f"ignored: {name} from {packet.eth_src.hex(':')}, not the VIF's MAC {vif.mac}"
    if vif.network_id != net.id or not net.cidr_v6:
        return None, f"ignored: {name}: network {net.label!r} has no IPv6 prefix for this VIF"
    if packet.src == ra.UNSPECIFIED or packet.src[0] == 0xFF:
        return None, f"ignored: {name} from source {socket.inet_ntop(socket.AF_INET6, packet.src)}"
    gw, lifetime, default_duid, config = _network(net)
    if packet.dst not in (ALL_DHCP_RELAY_AGENTS_AND_SERVERS, ALL_DHCP_SERVERS, gw.lla, gw.address):
        return None, f"ignored: {name} to {socket.inet_ntop(socket.AF_INET6, packet.dst)}, not us"
    address = socket.inet_pton(socket.AF_INET6, vif.addresses_v6[0]) if vif.addresses_v6 else None
    link = _Link(gw.mode, gw.prefix, address, lifetime, server_duid or default_duid, config)
    body, reason = _decide(message, ias, link, name)
    if body is None:
        return None, reason
    udp = _UDP.pack(SERVER_PORT, CLIENT_PORT, 8 + len(body), 0) + body
    return ra.ipv6_frame(eth_dst=packet.eth_src, eth_src=gw.mac, src=gw.lla, dst=packet.src,
                         next_header=ra.IPPROTO_UDP, message=udp, checksum_at=6), reason


def _decide(message: Dhcp6Message, ias: list[IdentityAssociation], link: _Link,
            name: str) -> tuple[bytes | None, str]:
    """The reply's DHCPv6 message (header + options) to ``message``, or None; with a reason."""
    mtype = message.msg_type
    if link.mode == ra.SLAAC:
        return None, f"ignored: {name} on a slaac network (no DHCPv6 there)"
    if link.mode != ra.DHCPV6_STATEFUL and mtype != INFORMATION_REQUEST:
        return None, f"ignored: {name} on a {link.mode} network (INFORMATION-REQUEST only)"
    client_ids = message.options.get(OPT_CLIENTID, ())
    server_ids = message.options.get(OPT_SERVERID, ())
    client_id = client_ids[0] if client_ids else None
    if client_id is not None and not 3 <= len(client_id) <= MAX_DUID_LEN:
        return None, f"malformed: client identifier of {len(client_id)} bytes"
    # RFC 8415 §16: which identifiers each message must (not) carry
    if mtype == INFORMATION_REQUEST:
        if server_ids and server_ids[0] != link.server_duid:
            return None, f"ignored: {name} for another server"
        if any(c in message.options for c in (OPT_IA_NA, OPT_IA_TA, OPT_IA_PD)):
            return None, f"ignored: {name} with IA options (RFC 8415 §16.12)"
    else:
        if client_id is None:
            return None, f"ignored: {name} without a client identifier"
        needs_server_id = mtype in (REQUEST, RENEW, RELEASE, DECLINE)
        if needs_server_id and (not server_ids or server_ids[0] != link.server_duid):
            return None, f"ignored: {name} for another server (or none named)"
        if not needs_server_id and server_ids:
            return None, f"ignored: {name} names a server (RFC 8415 §16)"

    head = option(OPT_SERVERID, link.server_duid) + (option(OPT_CLIENTID, client_id)
                                                     if client_id is not None else b"")
    shown = (socket.inet_ntop(socket.AF_INET6, link.address) if link.address is not None
             else "no address")
    ia_nas = [ia for ia in ias if ia.code == OPT_IA_NA]

    if mtype == INFORMATION_REQUEST:  # §18.3.6
        return _message(REPLY, message, head + link.config), "REPLY (INFORMATION-REQUEST)"

    if mtype == SOLICIT:  # §18.3.1
        rapid = OPT_RAPID_COMMIT in message.options
        if link.address is None:
            ia = b"".join(_ia_na(ia.iaid, status(NO_ADDRS_AVAIL, "this VIF has no IPv6 address"))
                          for ia in ia_nas)
            top = status(NO_ADDRS_AVAIL, "this VIF has no IPv6 address")  # RFC 3315 clients
        else:
            ia, top = b"".join(_assigned(link, ia.iaid) for ia in ia_nas), b""
        ia += _other_ias(message, NO_ADDRS_AVAIL, NO_PREFIX_AVAIL)
        if rapid:
            return (_message(REPLY, message, head + ia + option(OPT_RAPID_COMMIT) + link.config),
                    f"REPLY (rapid commit) {shown}")
        return (_message(ADVERTISE, message, head + ia + top + option(OPT_PREFERENCE, b"\xff")
                         + link.config), f"ADVERTISE {shown}")

    if mtype == REQUEST:  # §18.3.2
        out = b""
        for ia in ia_nas:
            if not all(_on_link(link, a) for a in ia.addresses):
                out += _ia_na(ia.iaid, status(NOT_ON_LINK, f"not on link {link.prefix}"))
            elif link.address is None:
                out += _ia_na(ia.iaid, status(NO_ADDRS_AVAIL, "this VIF has no IPv6 address"))
            else:
                out += _assigned(link, ia.iaid)
        out += _other_ias(message, NO_ADDRS_AVAIL, NO_PREFIX_AVAIL)
        return _message(REPLY, message, head + out + link.config), f"REPLY (REQUEST) {shown}"

    if mtype in (RENEW, REBIND):  # §18.3.4, §18.3.5
        out = b""
        for ia in ia_nas:
            stale = b"".join(_iaaddr(a, 0) for a in ia.addresses if a != link.address)
            if link.address is not None:
                out += _ia_na(ia.iaid, _iaaddr(link.address, link.lifetime) + stale,
                              link.lifetime // 2, link.lifetime * 4 // 5)
            elif stale:
                out += _ia_na(ia.iaid, stale)
            else:
                out += _ia_na(ia.iaid, status(NO_BINDING, "this VIF has no IPv6 address"))
        out += _other_ias(message, NO_BINDING, NO_BINDING)
        return _message(REPLY, message, head + out + link.config), f"REPLY ({name}) {shown}"

    if mtype == CONFIRM:  # §18.3.3
        addresses = [a for ia in ias for a in ia.addresses]
        if not addresses:
            return None, f"ignored: {name} without addresses (RFC 8415 §18.3.3)"
        if all(_on_link(link, a) for a in addresses):
            return _message(REPLY, message, head + status(SUCCESS, "on link")), "REPLY Success"
        return (_message(REPLY, message, head + status(NOT_ON_LINK, f"not on link {link.prefix}")),
                "REPLY NotOnLink")

    if mtype in (RELEASE, DECLINE):  # §18.3.7, §18.3.8
        unbound = b"".join(_ia_na(ia.iaid, status(NO_BINDING, "not this VIF's address"))
                           for ia in ia_nas
                           if link.address is None or link.address not in ia.addresses)
        return (_message(REPLY, message, head + status(SUCCESS, f"{name.lower()}d") + unbound),
                f"REPLY ({name}) {shown}")

    return None, f"ignored: {name}"


def _message(mtype: int, request: Dhcp6Message, options: bytes) -> bytes:
    return bytes((mtype,)) + request.transaction_id + options
