"""RFC 2131 server decisions for one VIF: request frame + binding + now -> reply frame + lease event.

Pure: no I/O, no clock, no globals. The controller calls ``DhcpResponder.handle`` on every
packet-in from a VIF's DHCP punt flow, packet-outs ``Decision.reply`` (if any) to that VIF and
records ``Decision.event`` (if any).

Every VIF has exactly one fixed address per network (nova-network), so there is no pool: the
server only ever offers/acknowledges ``binding.address`` and only to ``binding.mac``. Requests
whose chaddr is not the VIF's MAC get no answer at all, so a guest cycling random chaddrs
(DHCP starvation) gets nothing and can exhaust nothing.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from sdn.dhcp import packet as p
from sdn.view import NetworkView, VifView

_inet_aton = socket.inet_aton
_inet_ntoa = socket.inet_ntoa
_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")
_XID_WORDS = struct.Struct("!HH")
#: reply[40:50] of a memoised reply: UDP checksum, op/htype/hlen/hops, xid (raw request bytes)
_CSUM_MID_XID = struct.Struct("!H4s4s")
_IPV4 = b"\x08\x00"


#: IPv4 MTU assumed when the network sets none (Ethernet, RFC 894)
DEFAULT_MTU = 1500


def mac_bytes(mac: str) -> bytes:
    """``"fa:16:3e:12:34:56"`` (``:`` or ``-`` separated, any case) -> its 6 bytes.

    Raises ValueError when the text is not hex or not 6 bytes long."""
    raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    if len(raw) != 6:
        raise ValueError(f"MAC {mac!r} is not a 6-byte Ethernet address")
    return raw


@dataclass(frozen=True)
class DhcpBinding:
    """What the controller knows about the VIF a frame came from."""

    mac: str  #: the VIF's MAC; only this chaddr gets an answer
    address: str | None  #: its fixed IP on this network (None -> never answer)
    hostname: str
    network: NetworkView

    @classmethod
    def for_vif(cls, vif: VifView, network: NetworkView) -> DhcpBinding:
        """The binding of ``vif`` on ``network``: its MAC, its first fixed IP (None when it
        has none: such a VIF is never answered), its hostname."""
        return cls(mac=vif.mac, address=vif.addresses[0] if vif.addresses else None,
                   hostname=vif.hostname, network=network)


@dataclass(frozen=True)
class LeaseEvent:
    kind: str  #: "lease" (ACK of a REQUEST), "release", "decline"
    address: str
    mac: str


class Reason(str):
    """Why a decision is what it is: the text for logs (it *is* the string, e.g. ``"ACK
    10.0.0.5 to fa:16:3e:..:.. (SELECTING)"``) plus what happened, for counters:

    - ``message``: the client's message type (``DISCOVER``, ``REQUEST``, ``DECLINE``,
      ``RELEASE``, ``INFORM``), ``unknown`` when it has none we serve, ``malformed`` when the
      frame did not decode;
    - ``outcome``: ``offer``, ``ack``, ``nak``, ``release``, ``decline``, ``inform`` (an ACK
      to an INFORM), ``ignored`` (nothing sent), ``malformed``, ``error``;
    - ``cause``: why it was ignored or NAKed, one of :data:`CAUSES` (``""`` otherwise).
    """

    message: str
    outcome: str
    cause: str

    def __new__(cls, text: str, message: str, outcome: str, cause: str = "") -> Reason:
        self = super().__new__(cls, text)
        self.message, self.outcome, self.cause = message, outcome, cause
        return self


#: every ``Reason.cause`` (a bounded set: they are metric label values)
CAUSES = ("", "malformed", "not_bootrequest", "server_message", "no_binding", "bad_binding",
          "chaddr_mismatch", "no_fixed_ip", "other_server", "incomplete_request",
          "wrong_address", "bug")


@dataclass(frozen=True)
class Decision:
    reply: bytes | None  #: full Ethernet frame to packet-out to the VIF, or None
    event: LeaseEvent | None
    reason: Reason  #: short human-readable reason (a str), with what happened


class _Prepared:
    """Per-(binding) constant parts of replies, computed once and cached by the responder."""

    __slots__ = ("mac", "mac_bytes", "address", "address_bytes", "server_id", "server_mac",
                 "lease_opts", "mandatory", "optional", "on_request", "all_optional", "nak_head",
                 "memo", "mtu")

    def __init__(self, b: DhcpBinding):
        net = b.network
        self.mac = b.mac.lower()
        self.mac_bytes = mac_bytes(self.mac)
        # the largest IP datagram the segment carries: a reply never exceeds it (RFC 2131 §2)
        self.mtu = max(p.MIN_MAX_MESSAGE_SIZE, min(int(net.mtu or DEFAULT_MTU), 0xFFFF))
        self.address = b.address
        self.address_bytes = _inet_aton(b.address) if b.address else None
        self.server_id = _inet_aton(net.server_address)
        self.server_mac = mac_bytes(net.gateway_mac)
        lease = max(0, min(int(net.lease_time), 0xFFFFFFFF))
        self.lease_opts = (p.tlv(p.OPT_LEASE_TIME, _U32.pack(lease))
                           + p.tlv(p.OPT_T1, _U32.pack(lease // 2))
                           + p.tlv(p.OPT_T2, _U32.pack(lease * 7 // 8)))
        mandatory = p.tlv(p.OPT_SERVER_ID, self.server_id) + p.tlv(p.OPT_SUBNET_MASK,
                                                                     _inet_aton(net.netmask))
        if net.gateway:
            mandatory += p.tlv(p.OPT_ROUTER, _inet_aton(net.gateway))
        self.mandatory = mandatory
        optional: dict[int, bytes] = {}
        if net.dns:
            optional[p.OPT_DNS] = p.tlv(p.OPT_DNS, b"".join(_inet_aton(a) for a in net.dns))
        if net.domain:
            optional[p.OPT_DOMAIN] = p.tlv(p.OPT_DOMAIN, net.domain.encode())
        if b.hostname:
            optional[p.OPT_HOSTNAME] = p.tlv(p.OPT_HOSTNAME, b.hostname.encode())
        if net.broadcast:
            optional[p.OPT_BROADCAST] = p.tlv(p.OPT_BROADCAST, _inet_aton(net.broadcast))
        if net.mtu:
            optional[p.OPT_MTU] = p.tlv(p.OPT_MTU, _U16.pack(net.mtu))
        self.optional = optional  # insertion order = default priority
        # Sent only to clients that ask: a client given option 121 ignores option 3 (RFC 3442
        # §2), so the default route is part of it.
        on_request: dict[int, bytes] = {}
        if net.host_routes and net.gateway:
            routes = list(net.host_routes) + [("0.0.0.0/0", net.gateway)]
            on_request[p.OPT_CLASSLESS_ROUTES] = p.tlv(p.OPT_CLASSLESS_ROUTES,
                                                       p.classless_routes(routes))
        self.on_request = on_request
        self.all_optional = {**optional, **on_request}
        self.memo: dict[bytes, tuple] = {}  # _memo_key(request) -> _template(reply, ...)
        self.nak_head = p.tlv(p.OPT_SERVER_ID, self.server_id)


def _mt(code: int) -> bytes:
    return bytes((p.OPT_MESSAGE_TYPE, 1, code))


_MT_OFFER = _mt(p.OFFER)
_MT_ACK = _mt(p.ACK)
_MT_NAK = _mt(p.NAK)


class DhcpResponder:
    """Stateless RFC 2131 responder. Its only state are caches of pure functions: per-binding
    constants and, per binding, reply templates keyed by the request's relevant bytes."""

    #: bindings whose constants are kept: above the VIFs one server answers (a network host
    #: serving a /18 answered 5,000 clients ~2x slower with 4,096, rebuilding on every request)
    _CACHE_MAX = 16384
    #: reply templates kept per binding (DISCOVER, REQUEST in each client state, INFORM ...);
    #: a guest that varies its requests only churns its own
    _MEMO_MAX = 8

    def __init__(self) -> None:
        self._cache: dict[DhcpBinding, _Prepared] = {}
        # id(binding) -> (binding, prep): long-lived bindings (raw socket) skip hashing the
        # frozen dataclass and its NetworkView; holding the binding keeps its id from reuse
        self._by_id: dict[int, tuple[DhcpBinding, _Prepared]] = {}

    def _prepared(self, binding: DhcpBinding) -> _Prepared:
        hit = self._by_id.get(id(binding))
        if hit is not None and hit[0] is binding:
            return hit[1]
        prep = self._cache.get(binding)
        if prep is None:
            if len(self._cache) >= self._CACHE_MAX:
                self._cache.clear()
            prep = self._cache[binding] = _Prepared(binding)
        if len(self._by_id) >= self._CACHE_MAX:
            self._by_id.clear()
        self._by_id[id(binding)] = (binding, prep)
        return prep

    def handle(self, frame: bytes, binding: DhcpBinding | None, now: float) -> Decision:
        """Decide what to answer to ``frame`` received from the VIF described by ``binding``.

        Total: any ``frame`` gives a Decision, never an exception. Undecodable input gives
        ``Decision(None, None, "malformed: ...")``; a reply is an Ethernet frame whose IP
        datagram fits both the network's MTU (1500 when unset) and the client's maximum
        message size (option 57, at least 576: RFC 2131 §2, RFC 2132 §9.10). ``now`` is
        accepted for the controller's bookkeeping contract; the decision itself does not depend
        on time (fixed addresses, no pool to expire).
        """
        return Decision(*self.answer(frame, binding))

    def answer(self, frame: bytes, binding: DhcpBinding | None
               ) -> tuple[bytes | None, LeaseEvent | None, Reason]:
        """``handle`` as a plain (reply, event, reason) tuple, for batch loops; total as well.

        A request that equals an earlier one for the same binding except in fields no reply
        depends on (xid, secs, IP id/TTL/checksum/source, UDP checksum: see ``_memo_key``) gets
        that earlier decision, its reply patched with this xid and the UDP checksum updated
        incrementally (RFC 1624): the same bytes as deciding afresh, without parse or encode.
        """
        try:
            return self._answer(frame, binding)
        except Exception as exc:  # a bug must cost one request, never the caller's thread
            return (None, None, Reason(f"error: {type(exc).__name__}: {exc}", "unknown",
                                       "error", "bug"))

    def _answer(self, frame: bytes, binding: DhcpBinding | None
                ) -> tuple[bytes | None, LeaseEvent | None, str]:
        key = _memo_key(frame)
        if key is None or binding is None:
            return self._decide(frame, binding)
        try:
            prep = self._prepared(binding)
        except (ValueError, TypeError, OSError):
            return self._decide(frame, binding)
        hit = prep.memo.get(key)
        if hit is not None:
            head, mid, tail, base, event, reason = hit
            hi, lo = _XID_WORDS.unpack_from(frame, 46)
            s = base + hi + lo
            s = (s & 0xFFFF) + (s >> 16)
            s = (s & 0xFFFF) + (s >> 16)
            return (head + _CSUM_MID_XID.pack((0xFFFF - s) or 0xFFFF, mid, frame[46:50]) + tail,
                    event, reason)
        out = self._decide(frame, binding)
        if out[0] is not None:
            memo = prep.memo
            if len(memo) >= self._MEMO_MAX:
                memo.clear()
            memo[key] = _template(*out)
        return out

    def _decide(self, frame: bytes, binding: DhcpBinding | None
                ) -> tuple[bytes | None, LeaseEvent | None, str]:
        try:
            req = p.parse_request(frame)
        except p.MalformedFrame as exc:
            return (None, None, Reason(f"malformed: {exc}", "malformed", "malformed",
                                       "malformed"))
        except Exception as exc:  # belt and braces: a decoder bug must not kill the controller
            return (None, None, Reason(f"malformed: {type(exc).__name__}: {exc}", "malformed",
                                       "malformed", "bug"))
        mtype = req.message_type
        name = p.MESSAGE_TYPE_NAMES.get(mtype)
        served = name if name is not None and mtype not in (p.OFFER, p.ACK, p.NAK) else None

        def ignored(text: str, cause: str) -> tuple[None, None, Reason]:
            return (None, None, Reason(f"ignored: {text}", served or "unknown", "ignored",
                                       cause))

        if req.op != p.BOOTREQUEST:
            return ignored(f"BOOTP op {req.op} is not BOOTREQUEST", "not_bootrequest")
        if served is None:
            return ignored(f"message type {mtype} ({name or 'unknown'})", "server_message")
        if binding is None:
            return ignored(f"{name} from a port with no VIF binding", "no_binding")
        try:
            prep = self._prepared(binding)
        except (ValueError, TypeError, OSError) as exc:  # controller data, not the guest's
            return (None, None, Reason(f"error: unusable binding for {binding.mac!r}: {exc}",
                                       name, "error", "bad_binding"))
        if req.htype != 1 or req.hlen != 6 or req.chaddr[:6] != prep.mac_bytes:
            return ignored(f"{name} chaddr {_mac(req)} is not the VIF's MAC {prep.mac}",
                           "chaddr_mismatch")
        if prep.address_bytes is None:
            return ignored(f"{name} from {prep.mac}: VIF has no fixed address", "no_fixed_ip")
        opts = req.options
        server_id = opts.get(p.OPT_SERVER_ID)
        if server_id is not None and server_id != prep.server_id and mtype != p.DISCOVER:
            return ignored(f"{name} for server {_inet_ntoa(server_id)} "
                           f"(not us, {_inet_ntoa(prep.server_id)})", "other_server")

        if mtype == p.DISCOVER:
            return (self._reply(req, prep, _MT_OFFER, True), None,
                    Reason(f"OFFER {prep.address} to {prep.mac}", name, "offer"))

        if mtype == p.REQUEST:
            requested = opts.get(p.OPT_REQUESTED_IP)
            if server_id is not None:
                state = "SELECTING"
                wanted = requested if requested is not None else (
                    req.ciaddr if req.ciaddr != p.ZERO_IP else None)
            elif req.ciaddr != p.ZERO_IP:
                state = "REBINDING" if req.ip_dst == p.BROADCAST_IP else "RENEWING"
                wanted = req.ciaddr
            elif requested is not None:
                state = "INIT-REBOOT"
                wanted = requested
            else:
                return ignored("REQUEST with neither ciaddr, requested address nor server id",
                               "incomplete_request")
            if wanted == prep.address_bytes:
                return (self._reply(req, prep, _MT_ACK, True),
                        LeaseEvent("lease", prep.address, prep.mac),
                        Reason(f"ACK {prep.address} to {prep.mac} ({state})", name, "ack"))
            shown = _inet_ntoa(wanted) if wanted is not None else "nothing"
            return (self._nak(req, prep, f"requested {shown}, lease is {prep.address}"), None,
                    Reason(f"NAK {shown} to {prep.mac} ({state}, VIF has {prep.address})", name,
                           "nak", "wrong_address"))

        if mtype == p.RELEASE:
            if req.ciaddr != prep.address_bytes:
                return ignored(f"RELEASE of {_inet_ntoa(req.ciaddr)}, VIF has {prep.address}",
                               "wrong_address")
            return (None, LeaseEvent("release", prep.address, prep.mac),
                    Reason(f"RELEASE {prep.address} by {prep.mac}", name, "release"))

        if mtype == p.DECLINE:
            declined = opts.get(p.OPT_REQUESTED_IP)
            if declined != prep.address_bytes:
                shown = _inet_ntoa(declined) if declined is not None else "nothing"
                return ignored(f"DECLINE of {shown}, VIF has {prep.address}", "wrong_address")
            return (None, LeaseEvent("decline", prep.address, prep.mac),
                    Reason(f"DECLINE {prep.address} by {prep.mac} (address in use on the "
                           "wire?)", name, "decline"))

        # INFORM (RFC 2131 §4.3.5): configuration only, to the address the client already has
        if req.ciaddr != prep.address_bytes:
            return ignored(f"INFORM from ciaddr {_inet_ntoa(req.ciaddr)}, VIF has {prep.address}",
                           "wrong_address")
        return (self._reply(req, prep, _MT_ACK, False), None,
                Reason(f"ACK (INFORM) to {prep.address} at {prep.mac}", name, "inform"))

    # ------------------------------------------------------------------------------- replies

    @staticmethod
    def _limit(req: p.DhcpRequest, prep: _Prepared) -> int:
        """Largest BOOTP payload (bytes) a reply may have: the client's maximum DHCP message
        size (option 57 counts the IP datagram, never below 576: RFC 2131 §2, RFC 2132 §9.10)
        capped by the network's MTU, minus the IP and UDP headers."""
        raw = req.options.get(p.OPT_MAX_MESSAGE_SIZE)
        size = _U16.unpack(raw)[0] if raw is not None else p.MIN_MAX_MESSAGE_SIZE
        return min(max(size, p.MIN_MAX_MESSAGE_SIZE), prep.mtu) - p.IP_UDP_HEADERS_LEN

    @staticmethod
    def _echo(req: p.DhcpRequest, budget: int) -> tuple[bytes, bytes]:
        """Client identifier (RFC 6842 §3) and relay agent information (RFC 3046 §2.2) to echo,
        each only if it fits ``budget`` bytes (what the reply has left after its mandatory
        options and END): relay information first, as the relay needs it to reach the client.
        What does not fit is left out whole (RFC 3046 §2.1 does the same for a relay: never
        exceed the message size); a truncated option 82 would be a different one."""
        opts = req.options
        rai = opts.get(p.OPT_RELAY_AGENT)
        rai = p.tlv(p.OPT_RELAY_AGENT, rai) if rai is not None else b""
        if len(rai) > budget:
            rai = b""
        cid = opts.get(p.OPT_CLIENT_ID)
        cid = p.tlv(p.OPT_CLIENT_ID, cid) if cid is not None else b""
        if len(cid) > budget - len(rai):
            cid = b""
        return cid, rai

    def _reply(self, req: p.DhcpRequest, prep: _Prepared, mt: bytes, lease: bool) -> bytes:
        """OFFER/ACK (lease=True: yiaddr + lease times) or the ACK to an INFORM (lease=False).

        Size: mandatory options, then the echoed relay information and client identifier,
        then the optional ones in the client's order, each only while the whole message stays
        within ``_limit`` (so the reply's IP datagram is at most the MTU / option 57)."""
        options = mt + prep.mandatory + (prep.lease_opts if lease else b"")
        budget = self._limit(req, prep) - p.BOOTP_HEADER_LEN - 1 - len(options)
        cid, rai = self._echo(req, budget)
        budget -= len(cid) + len(rai)
        optional = prep.all_optional
        prl = req.options.get(p.OPT_PARAM_REQUEST)
        if prl:  # requested options first, in the client's order, then the rest
            order = [c for c in dict.fromkeys(prl) if c in optional]
            order += [c for c in prep.optional if c not in order]
        else:
            order = prep.optional
        extra = []
        for code in order:
            enc = optional[code]
            if len(enc) <= budget:
                extra.append(enc)
                budget -= len(enc)
        options += b"".join(extra) + cid + rai
        yiaddr = prep.address_bytes if lease else p.ZERO_IP
        eth_dst, ip_dst, port = _destination(req, yiaddr, nak=False)
        return p.build_reply(eth_dst=eth_dst, eth_src=prep.server_mac, ip_src=prep.server_id,
                             ip_dst=ip_dst, udp_dport=port, htype=req.htype, hlen=req.hlen,
                             xid=req.xid, flags=req.flags, ciaddr=req.ciaddr, yiaddr=yiaddr,
                             siaddr=p.ZERO_IP, giaddr=req.giaddr, chaddr=req.chaddr,
                             options=options)

    def _nak(self, req: p.DhcpRequest, prep: _Prepared, message: str) -> bytes:
        """DHCPNAK (RFC 2131 §4.3.2), within ``_limit`` as every reply."""
        options = _MT_NAK + prep.nak_head + p.tlv(p.OPT_MESSAGE, message.encode()[:200])
        cid, rai = self._echo(req, self._limit(req, prep) - p.BOOTP_HEADER_LEN - 1 - len(options))
        options += cid + rai
        flags = req.flags
        if req.giaddr != p.ZERO_IP:  # §4.3.2: make the relay broadcast the NAK
            flags |= p.BROADCAST_FLAG
        eth_dst, ip_dst, port = _destination(req, p.ZERO_IP, nak=True)
        return p.build_reply(eth_dst=eth_dst, eth_src=prep.server_mac, ip_src=prep.server_id,
                             ip_dst=ip_dst, udp_dport=port, htype=req.htype, hlen=req.hlen,
                             xid=req.xid, flags=flags, ciaddr=p.ZERO_IP, yiaddr=p.ZERO_IP,
                             siaddr=p.ZERO_IP, giaddr=req.giaddr, chaddr=req.chaddr,
                             options=options)


def _memo_key(frame: bytes) -> bytes | None:
    """What of a request its reply can depend on, for untagged IPv4 without IP options (None
    otherwise): Ethernet source and type, IP version..total length, fragment field, protocol
    and destination, UDP ports and length, BOOTP op..hops, then flags to the frame's end
    (ciaddr, giaddr, chaddr, sname, file, options, trailing bytes). Left out: Ethernet
    destination, IP id/TTL/checksum/source, UDP checksum, xid, secs."""
    if type(frame) is not bytes or len(frame) < 52 or frame[12:14] != _IPV4 or frame[14] != 0x45:
        return None
    return b"".join((frame[6:18], frame[20:22], frame[23:24], frame[30:40], frame[42:46],
                     frame[52:]))


def _template(reply: bytes, event: LeaseEvent | None, reason: str) -> tuple:
    """(reply[:40], reply[42:46], reply[50:], base, event, reason) of an untagged reply:
    ``base`` is the ones'-complement sum (RFC 1071) of the UDP pseudo header and datagram with
    checksum and xid zeroed, so another xid only adds its two 16-bit words (RFC 1624)."""
    data = (reply[26:34] + b"\0\x11" + reply[38:40]             # pseudo header
            + reply[34:40] + b"\0\0" + reply[42:46] + b"\0\0\0\0" + reply[50:])
    if len(data) & 1:
        data += b"\0"
    return reply[:40], reply[42:46], reply[50:], int.from_bytes(data, "big") % 0xFFFF, event, reason


def _destination(req: p.DhcpRequest, yiaddr: bytes, nak: bool) -> tuple[bytes, bytes, int]:
    """(Ethernet dst, IP dst, UDP dst port) per RFC 2131 §4.1 and §4.3.2."""
    if req.giaddr != p.ZERO_IP:
        return req.eth_src, req.giaddr, p.SERVER_PORT
    if nak:
        return p.BROADCAST_MAC, p.BROADCAST_IP, p.CLIENT_PORT
    if req.ciaddr != p.ZERO_IP:
        return req.chaddr[:6], req.ciaddr, p.CLIENT_PORT
    if req.flags & p.BROADCAST_FLAG or yiaddr == p.ZERO_IP:
        return p.BROADCAST_MAC, p.BROADCAST_IP, p.CLIENT_PORT
    return req.chaddr[:6], yiaddr, p.CLIENT_PORT


def _mac(req: p.DhcpRequest) -> str:
    return ":".join(f"{x:02x}" for x in req.chaddr[: min(req.hlen, 16)]) or "(empty)"
