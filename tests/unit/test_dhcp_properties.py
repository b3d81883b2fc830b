"""Property-based tests (Hypothesis) of the DHCP codec and decisions (issue 10).

Any bytes in -> a Decision whose reply fits the MTU and the client's maximum message size, or
no reply; never an exception. Requests generated from the protocol (Scapy) get replies that
Scapy parses with right checksums and lengths, and lease events only for the binding."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether

from sdn.apps import ofmsgs
from sdn.dhcp import DhcpResponder, LeaseEvent
from sdn.dhcp import packet as p
from sdn.dhcp.rawsocket import BatchHandler
from sdn.dhcp.relay import request_fields, with_tag
from tests.unit.test_dhcp_packet import MAC, dissect
from tests.unit.test_dhcp_server import ADDR, BINDING, NET, SERVER

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
RESPONDER = DhcpResponder()
MTU = NET.mtu


def client_limit(frame: bytes) -> int:
    """The largest reply IP datagram allowed for ``frame``: option 57 (>= 576) capped by the
    MTU (RFC 2131 §2); 576 when the frame does not even parse."""
    try:
        raw = p.parse_request(frame).options.get(p.OPT_MAX_MESSAGE_SIZE)
    except p.MalformedFrame:
        return 576
    size = struct.unpack("!H", raw)[0] if raw is not None else 576
    return min(max(size, 576), MTU)


def assert_within_limit(frame: bytes, reply: bytes | None) -> None:
    if reply is None:
        return
    ip_len = struct.unpack_from("!H", reply, 16)[0]
    assert ip_len == len(reply) - 14
    assert ip_len <= client_limit(frame), (ip_len, client_limit(frame))


def assert_event_is_the_bindings(event) -> None:
    if event is not None:
        assert event.address == ADDR and event.mac == MAC.lower()
        assert event.kind in ("lease", "release", "decline")


# ---- generated requests ------------------------------------------------------------------

ips = st.sampled_from(["0.0.0.0", ADDR, SERVER, "10.0.0.77", "255.255.255.255", "192.0.2.1"])
blobs = st.binary(min_size=0, max_size=1200)
options = st.lists(st.one_of(
    st.tuples(st.just("relay_agent_information"), blobs),
    st.tuples(st.just("client_id"), blobs),
    st.tuples(st.just("max_dhcp_size"), st.integers(0, 65535)),
    st.tuples(st.just("requested_addr"), ips),
    st.tuples(st.just("server_id"), ips),
    st.tuples(st.just("param_req_list"), st.lists(st.integers(0, 255), max_size=40)),
    st.tuples(st.just("hostname"), st.binary(min_size=1, max_size=255)),
), max_size=8)


@st.composite
def requests(draw) -> bytes:
    mtype = draw(st.sampled_from(["discover", "request", "decline", "release", "inform"]))
    chaddr = draw(st.sampled_from([MAC, "02:00:00:00:00:99"]))
    giaddr = draw(st.sampled_from(["0.0.0.0", "10.0.0.9"]))
    ether = Ether(src=chaddr, dst="ff:ff:ff:ff:ff:ff")
    if draw(st.booleans()):
        ether = ether / Dot1Q(vlan=draw(st.integers(1, 4094)))
    opts = [("message-type", mtype), *draw(options), "end"]
    return bytes(ether / IP(src=draw(ips), dst=draw(ips)) / UDP(sport=68, dport=67)
                 / BOOTP(op=1, chaddr=bytes.fromhex(chaddr.replace(":", "")),
                         xid=draw(st.integers(0, 2**32 - 1)), flags=draw(st.sampled_from([0, 0x8000])),
                         ciaddr=draw(ips), giaddr=giaddr)
                 / DHCP(options=opts))


@SETTINGS
@given(requests())
def test_valid_requests_get_replies_scapy_parses_within_the_limit(frame):
    d = RESPONDER.handle(frame, BINDING, 0.0)
    assert d.reason
    assert_within_limit(frame, d.reply)
    assert_event_is_the_bindings(d.event)
    if d.reply is not None:
        assert d.reply[12:14] == b"\x08\x00"   # untagged: the caller adds the request's tag
        pkt = dissect(d.reply)       # lengths and checksums as Scapy computes them
        assert pkt[BOOTP].op == 2 and pkt[BOOTP].xid == p.parse_request(frame).xid
        assert pkt[BOOTP].chaddr[:6] == p.parse_request(frame).chaddr[:6]
        assert pkt[DHCP].options[0][0] == "message-type"


@SETTINGS
@given(requests(), st.data())
def test_mutated_requests_never_raise_and_stay_within_the_limit(frame, data):
    frame = bytearray(frame)
    for _ in range(data.draw(st.integers(0, 8))):
        where = data.draw(st.integers(0, len(frame) - 1))
        frame[where] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(frame))))
    tail = data.draw(st.one_of(st.just(b""), st.binary(max_size=64)))
    frame = bytes(frame[:cut]) + tail
    d = RESPONDER.handle(frame, BINDING, 0.0)
    assert d.reason
    assert_within_limit(frame, d.reply)
    assert_event_is_the_bindings(d.event)


@SETTINGS
@given(st.binary(max_size=2000))
def test_any_bytes_decode_or_are_malformed(frame):
    try:
        req = p.parse_request(frame)
    except p.MalformedFrame:
        return
    assert len(req.chaddr) == 16 and p.OPT_MESSAGE_TYPE in req.options


@SETTINGS
@given(st.binary(max_size=2000), st.sampled_from([None, BINDING]))
def test_any_bytes_give_a_decision(frame, binding):
    d = RESPONDER.handle(frame, binding, 0.0)
    assert d.reason
    assert_within_limit(frame, d.reply)
    if binding is None:
        assert d.reply is None and d.event is None


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(requests(), st.integers(60_000, 65_535))
def test_requests_up_to_65535_bytes_never_raise(frame, size):
    """Issue 10: 65,500-65,535-byte requests raised struct.error. Stuffed with option 82."""
    try:
        opts = p.parse_request(frame).options
    except p.MalformedFrame:      # e.g. two option 57s concatenated to 4 bytes (RFC 3396)
        return
    if p.OPT_RELAY_AGENT in opts or p.OPT_CLIENT_ID in opts:
        return
    head = frame[:-1]                      # drop END, stuff 255-byte relay options, END, pad
    room = size - len(head) - 1
    stuff = b"".join(bytes((p.OPT_RELAY_AGENT, 255)) + b"R" * 255 for _ in range(room // 257))
    big = head + stuff + b"\xff" + bytes(room - len(stuff))
    off = 18 if big[12:14] == b"\x81\x00" else 14
    ip_len = len(big) - off
    if ip_len > 0xFFFF:
        return
    big = (big[:off + 2] + struct.pack("!H", ip_len) + big[off + 4:off + 24]
           + struct.pack("!H", ip_len - 20) + big[off + 26:])
    d = RESPONDER.handle(big, BINDING, 0.0)
    assert not d.reason.startswith(("malformed", "error")), d.reason   # decoded, then decided
    assert_within_limit(big, d.reply)


# ---- the controller's relay path and the raw socket's batch handler ----------------------

@SETTINGS
@given(st.one_of(requests(), st.binary(max_size=1600)))
def test_relay_path_and_packet_out_never_raise(frame):
    """As sdn.apps.controller._on_dhcp does for a relay port: fields, binding, decision,
    packet-out of the reply with the request's tag."""
    fields = request_fields(frame)
    if fields is None:
        return
    tag, giaddr, chaddr = fields
    assert len(giaddr) == 4 and len(chaddr) == 6 and len(tag) in (0, 4)
    binding = BINDING if chaddr == bytes.fromhex(MAC.replace(":", "")) else None
    d = RESPONDER.handle(frame, binding, 0.0)
    if d.reply is not None:
        out = ofmsgs.packet_out_bytes(7, with_tag(d.reply, tag))
        assert len(out) == struct.unpack_from("!H", out, 2)[0]


@SETTINGS
@given(st.lists(st.one_of(requests(), st.binary(max_size=700)), max_size=6))
def test_batch_handler_never_raises_and_records_only_the_bindings_events(frames):
    handler = BatchHandler({bytes.fromhex(MAC.replace(":", "")): BINDING}, RESPONDER)
    now, events, after = handler.handle(frames, 0.0)
    assert all(isinstance(e, LeaseEvent) for e in events)
    for e in events:
        assert_event_is_the_bindings(e)
    assert len(after) <= len(events)
    for reply in now + [reply for _event, reply in after]:
        assert struct.unpack_from("!H", reply, 16)[0] <= MTU
