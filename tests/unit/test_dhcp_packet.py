"""The struct codec against Scapy, the protocol definition: constants, parsing, building, checksums,
and that malformed input only ever raises MalformedFrame."""

from __future__ import annotations

import random

import pytest
from scapy.layers.dhcp import BOOTP, DHCP, DHCPOptions, DHCPTypes
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.utils import checksum as scapy_checksum

from sdn.dhcp import packet as p

MAC = "fa:16:3e:12:34:56"
MAC_BYTES = bytes.fromhex(MAC.replace(":", ""))


# ------------------------------------------------------------------------ helpers (shared by tests)

def craft(mtype, *, chaddr: str = MAC, eth_src: str | None = None, src: str = "0.0.0.0",
          dst: str = "255.255.255.255", ciaddr: str = "0.0.0.0", giaddr: str = "0.0.0.0",
          flags: int = 0, xid: int = 0x12345678, sport: int = 68, options=(), bootp=None,
          vlan: int | None = None) -> bytes:
    """A client request crafted with Scapy. ``options`` are Scapy DHCP option tuples."""
    ether = Ether(src=eth_src or chaddr, dst="ff:ff:ff:ff:ff:ff")
    if vlan is not None:
        ether = ether / Dot1Q(vlan=vlan)
    hdr = bootp if bootp is not None else BOOTP(
        op=1, chaddr=bytes.fromhex(chaddr.replace(":", "")), xid=xid, flags=flags, ciaddr=ciaddr,
        giaddr=giaddr)
    opts = ([("message-type", mtype)] if mtype is not None else []) + list(options) + ["end"]
    return bytes(ether / IP(src=src, dst=dst) / UDP(sport=sport, dport=67) / hdr
                 / DHCP(options=opts))


def dissect(frame: bytes):
    """Parse a reply with Scapy and check that Scapy, rebuilding it with its own checksums, gets
    exactly the same bytes (so IP and UDP checksums and every length field are right)."""
    pkt = Ether(frame)
    assert pkt.haslayer(DHCP), pkt.summary()
    clone = Ether(frame)
    del clone[IP].chksum, clone[IP].len, clone[UDP].chksum, clone[UDP].len
    assert bytes(clone) == frame, "Scapy rebuilds different bytes (checksum or length wrong)"
    return pkt


def options_of(pkt) -> dict:
    """Scapy's DHCP options as a dict name -> value (tuples of >1 values kept as tuples)."""
    out = {}
    for opt in pkt[DHCP].options:
        if isinstance(opt, tuple):
            out[opt[0]] = opt[1] if len(opt) == 2 else opt[1:]
    return out


def option_codes(frame: bytes) -> list[int]:
    """Option codes in wire order (own walk, to check ordering and END placement)."""
    bootp = frame[42:]
    i, codes = 240, []
    while i < len(bootp):
        code = bootp[i]
        if code == 0:
            i += 1
            continue
        codes.append(code)
        if code == 255:
            break
        i += 2 + bootp[i + 1]
    return codes


# ------------------------------------------------------------------------------------- constants

def test_message_types_match_scapy():
    for code, name in p.MESSAGE_TYPE_NAMES.items():
        assert DHCPTypes[code] == name.lower()


@pytest.mark.parametrize("code,name", [
    (p.OPT_PAD, "pad"), (p.OPT_SUBNET_MASK, "subnet_mask"), (p.OPT_ROUTER, "router"),
    (p.OPT_DNS, "name_server"), (p.OPT_HOSTNAME, "hostname"), (p.OPT_DOMAIN, "domain"),
    (p.OPT_MTU, "interface-mtu"), (p.OPT_BROADCAST, "broadcast_address"),
    (p.OPT_REQUESTED_IP, "requested_addr"), (p.OPT_LEASE_TIME, "lease_time"),
    (p.OPT_OVERLOAD, "dhcp-option-overload"), (p.OPT_MESSAGE_TYPE, "message-type"),
    (p.OPT_SERVER_ID, "server_id"), (p.OPT_PARAM_REQUEST, "param_req_list"),
    (p.OPT_MESSAGE, "error_message"), (p.OPT_MAX_MESSAGE_SIZE, "max_dhcp_size"),
    (p.OPT_T1, "renewal_time"), (p.OPT_T2, "rebinding_time"), (p.OPT_CLIENT_ID, "client_id"),
    (p.OPT_RELAY_AGENT, "relay_agent_information"), (p.OPT_END, "end"),
])
def test_option_codes_match_scapy(code, name):
    entry = DHCPOptions[code]
    assert (entry if isinstance(entry, str) else entry.name) == name


# --------------------------------------------------------------------------------------- parsing

def test_parse_request_fields():
    frame = craft("request", ciaddr="10.0.0.5", giaddr="10.9.0.1", flags=0x8000, xid=0xDEADBEEF,
                  src="10.0.0.5", dst="10.0.0.1", eth_src="02:00:00:00:00:99",
                  options=[("requested_addr", "10.0.0.5"), ("server_id", "10.0.0.1"),
                           ("max_dhcp_size", 1500), ("param_req_list", [1, 3, 6])])
    req = p.parse_request(frame)
    assert req.message_type == p.REQUEST
    assert req.op == p.BOOTREQUEST and req.htype == 1 and req.hlen == 6
    assert req.xid == 0xDEADBEEF and req.flags == 0x8000
    assert req.ciaddr == bytes([10, 0, 0, 5]) and req.giaddr == bytes([10, 9, 0, 1])
    assert req.yiaddr == req.siaddr == p.ZERO_IP
    assert req.ip_src == bytes([10, 0, 0, 5]) and req.ip_dst == bytes([10, 0, 0, 1])
    assert req.eth_src == bytes.fromhex("020000000099")
    assert req.client_mac == MAC_BYTES and len(req.chaddr) == 16
    assert req.options[p.OPT_REQUESTED_IP] == bytes([10, 0, 0, 5])
    assert req.options[p.OPT_SERVER_ID] == bytes([10, 0, 0, 1])
    assert req.options[p.OPT_MAX_MESSAGE_SIZE] == (1500).to_bytes(2, "big")
    assert req.options[p.OPT_PARAM_REQUEST] == bytes([1, 3, 6])


def test_parse_vlan_tagged():
    assert p.parse_request(craft("discover", vlan=100)).message_type == p.DISCOVER


def test_parse_repeated_options_are_concatenated():
    frame = craft("discover", options=[("param_req_list", [1, 3]), ("param_req_list", [6])])
    assert p.parse_request(frame).options[p.OPT_PARAM_REQUEST] == bytes([1, 3, 6])


def test_parse_option_overload_in_file_and_sname():
    file_opts = bytes([p.OPT_REQUESTED_IP, 4, 10, 0, 0, 7, 255])
    sname_opts = bytes([p.OPT_HOSTNAME, 2]) + b"vm" + b"\xff"
    bootp = BOOTP(op=1, chaddr=MAC_BYTES, file=file_opts, sname=sname_opts)
    req = p.parse_request(craft("request", bootp=bootp, options=[("dhcp-option-overload", 3)]))
    assert req.options[p.OPT_REQUESTED_IP] == bytes([10, 0, 0, 7])
    assert req.options[p.OPT_HOSTNAME] == b"vm"


def test_parse_tolerates_missing_end_when_options_fill_payload():
    frame = craft("discover")
    assert frame.endswith(b"\xff")
    req = p.parse_request(_reudp(frame[:-1]))
    assert req.message_type == p.DISCOVER


def _reudp(frame: bytes) -> bytes:
    """Fix IP/UDP lengths after editing the BOOTP payload, byte-exactly (Scapy would re-encode a
    deliberately broken option list)."""
    f = bytearray(frame)
    f[16:18] = (len(f) - 14).to_bytes(2, "big")
    f[38:40] = (len(f) - 34).to_bytes(2, "big")
    return bytes(f)


MALFORMED = {
    "shorter than an Ethernet header": lambda f: f[:10],
    "not IPv4": lambda f: f[:12] + b"\x86\xdd" + f[14:],
    "truncated IPv4 header": lambda f: f[:20],
    "IP version": lambda f: f[:14] + b"\x65" + f[15:],
    "IP header length": lambda f: f[:14] + b"\x44" + f[15:],
    "IP total length": lambda f: f[:200],
    "fragmented": lambda f: f[:20] + b"\x20\x00" + f[22:],
    "not UDP": lambda f: f[:23] + b"\x06" + f[24:],
    "destination port": lambda f: f[:36] + b"\x00\x44" + f[38:],
    "UDP length": lambda f: f[:38] + b"\x00\x04" + f[40:],
    "magic cookie": lambda f: f[:42 + 236] + b"\x00\x00\x00\x00" + f[42 + 240:],
    "hlen": lambda f: f[:44] + b"\x11" + f[45:],
}


@pytest.mark.parametrize("needle", sorted(MALFORMED))
def test_parse_malformed(needle):
    with pytest.raises(p.MalformedFrame, match=needle):
        p.parse_request(MALFORMED[needle](craft("discover")))


def test_parse_short_bootp():
    pkt = Ether(craft("discover"))
    pkt[UDP].remove_payload()
    frame = _reudp(bytes(pkt / (b"\0" * 100)))
    with pytest.raises(p.MalformedFrame, match="shorter than 240"):
        p.parse_request(frame)


@pytest.mark.parametrize("raw,needle", [
    (bytes([53, 1, 1, 12, 200, 1, 2]), "overruns"),
    (bytes([53, 1, 1, 12]), "no length byte"),
    (bytes([12, 2]) + b"vm" + b"\xff", "no DHCP message type"),
    (bytes([53, 2, 1, 1, 255]), "option 53 has length 2"),
    (bytes([53, 1, 1, 50, 3, 1, 2, 3, 255]), "option 50 has length 3"),
    (bytes([53, 1, 1, 52, 1, 9, 255]), "overload"),
])
def test_parse_bad_options(raw, needle):
    pkt = Ether(craft("discover"))
    pkt[BOOTP].remove_payload()
    pkt[BOOTP].options = b""
    frame = _reudp(bytes(pkt / (p.MAGIC_COOKIE + raw)))
    # BOOTP() puts the magic cookie in its own 'options' field; keep exactly one
    assert frame.count(p.MAGIC_COOKIE) == 1
    with pytest.raises(p.MalformedFrame, match=needle):
        p.parse_request(frame)


def test_parse_rejects_non_bytes():
    with pytest.raises(p.MalformedFrame):
        p.parse_request("not bytes")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- building

@pytest.mark.parametrize("n", [0, 1, 2, 3, 20, 21, 299, 300, 331])
def test_checksum_matches_scapy(n):
    rng = random.Random(n)
    for _ in range(50):
        data = bytes(rng.randrange(256) for _ in range(n))
        assert p.inet_checksum(data) == scapy_checksum(data)
    assert p.inet_checksum(bytes(n)) == scapy_checksum(bytes(n))
    if n >= 2:  # words summing to 0xffff exactly
        data = b"\xff\xff" + bytes(n - 2)
        assert p.inet_checksum(data) == scapy_checksum(data) == 0


def test_tlv_splits_long_values():
    value = bytes(range(256)) * 2  # 512 bytes -> 255 + 255 + 2
    enc = p.tlv(15, value)
    assert enc[:2] == bytes([15, 255]) and enc[257:259] == bytes([15, 255])
    assert enc[514:516] == bytes([15, 2]) and len(enc) == 518
    assert p.tlv(1, b"\1\2\3\4") == bytes([1, 4, 1, 2, 3, 4])


def _build(options: bytes, **kw) -> bytes:
    args = dict(eth_dst=MAC_BYTES, eth_src=bytes.fromhex("0a580a000001"),
                ip_src=bytes([10, 0, 0, 1]), ip_dst=bytes([10, 0, 0, 5]), udp_dport=68, htype=1,
                hlen=6, xid=42, flags=0x8000, ciaddr=p.ZERO_IP, yiaddr=bytes([10, 0, 0, 5]),
                siaddr=p.ZERO_IP, giaddr=p.ZERO_IP, chaddr=MAC_BYTES + bytes(10))
    args.update(kw)
    return p.build_reply(options=options, **args)


def test_build_reply_is_valid_for_scapy():
    frame = _build(bytes([53, 1, 2]) + p.tlv(54, bytes([10, 0, 0, 1])))
    pkt = dissect(frame)
    assert pkt[Ether].src == "0a:58:0a:00:00:01" and pkt[Ether].dst == MAC
    assert pkt[IP].ttl == 64 and pkt[IP].src == "10.0.0.1" and pkt[IP].dst == "10.0.0.5"
    assert (pkt[UDP].sport, pkt[UDP].dport) == (67, 68)
    b = pkt[BOOTP]
    assert (b.op, b.htype, b.hlen, b.hops, b.xid, b.secs, b.flags) == (2, 1, 6, 0, 42, 0, 0x8000)
    assert b.yiaddr == "10.0.0.5" and b.chaddr[:6] == MAC_BYTES
    assert options_of(pkt) == {"message-type": 2, "server_id": "10.0.0.1"}
    assert len(frame) - 42 == p.BOOTP_MIN_LEN
    assert option_codes(frame) == [53, 54, 255]


def test_build_reply_longer_than_minimum_is_not_padded():
    frame = _build(bytes([53, 1, 2]) + p.tlv(15, b"x" * 200))
    assert len(frame) - 42 == 240 + 3 + 202 + 1
    dissect(frame)


# ------------------------------------------------------------------------------------------ fuzz

def _valid_frames() -> list[bytes]:
    return [
        craft("discover", options=[("param_req_list", [1, 3, 6, 15]), ("max_dhcp_size", 1500)]),
        craft("request", options=[("requested_addr", "10.0.0.5"), ("server_id", "10.0.0.1")]),
        craft("inform", ciaddr="10.0.0.5", src="10.0.0.5"),
        craft("release", ciaddr="10.0.0.5", src="10.0.0.5", dst="10.0.0.1"),
        craft("request", vlan=7, giaddr="10.1.0.1", options=[("relay_agent_information", b"\1\2ab")]),
        craft("request", bootp=BOOTP(op=1, chaddr=MAC_BYTES, file=bytes([50, 4, 10, 0, 0, 5, 255])),
              options=[("dhcp-option-overload", 1)]),
    ]


def mutations(seed: int, count: int):
    """Seeded stream of hostile frames: random bytes, truncations, bit flips, byte splices."""
    rng = random.Random(seed)
    valid = _valid_frames()
    for i in range(count):
        base = bytearray(rng.choice(valid))
        kind = i % 5
        if kind == 0:
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(0, 700)))
        elif kind == 1:
            yield bytes(base[: rng.randrange(0, len(base) + 1)])
        elif kind == 2:
            for _ in range(rng.randrange(1, 6)):
                pos = rng.randrange(len(base))
                base[pos] ^= 1 << rng.randrange(8)
            yield bytes(base)
        elif kind == 3:  # scribble over the options area, where TLV bugs live
            start = rng.randrange(42 + 240, len(base))
            for k in range(start, min(len(base), start + rng.randrange(1, 16))):
                base[k] = rng.randrange(256)
            yield bytes(base)
        else:  # splice random junk into the middle, lengths now lie
            pos = rng.randrange(len(base))
            yield bytes(base[:pos] + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
                        + base[pos + rng.randrange(0, 40):])


def test_fuzz_parse_only_raises_malformed():
    parsed = 0
    for frame in mutations(seed=2131, count=5000):
        try:
            req = p.parse_request(frame)
        except p.MalformedFrame:
            continue
        parsed += 1
        assert isinstance(req.options, dict) and len(req.chaddr) == 16
    assert parsed > 100  # the mutations do reach the deep paths


def test_every_truncation_of_a_valid_frame():
    frame = _valid_frames()[0]
    for n in range(len(frame)):
        try:
            p.parse_request(frame[:n])
        except p.MalformedFrame:
            pass
