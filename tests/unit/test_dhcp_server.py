"""RFC 2131 decisions of DhcpResponder; every reply is parsed and checksum-checked with Scapy."""

from __future__ import annotations

import dataclasses
import random
from struct import error as struct_error

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from sdn.dhcp import Decision, DhcpBinding, DhcpResponder, LeaseEvent
from sdn.view import NetworkView
from tests.unit.test_dhcp_packet import MAC, craft, dissect, mutations, option_codes, options_of

NET = NetworkView(id=1, label="private", cidr="10.0.0.0/24", netmask="255.255.255.0",
                  gateway="10.0.0.1", broadcast="10.0.0.255", dns=("8.8.8.8", "8.8.4.4"),
                  domain="novalocal", lease_time=120, mtu=1450)
SERVER = "10.0.0.1"
SERVER_MAC = "0a:58:0a:00:00:01"
ADDR = "10.0.0.5"
BINDING = DhcpBinding(mac=MAC.upper(), address=ADDR, hostname="vm-1", network=NET)
NOW = 1_700_000_000.0


@pytest.fixture
def responder():
    return DhcpResponder()


def handle(responder, frame, binding=BINDING) -> Decision:
    d = responder.handle(frame, binding, NOW)
    assert isinstance(d, Decision) and d.reason
    return d


def reply_of(d: Decision):
    assert d.reply is not None, d.reason
    return dissect(d.reply)


def assert_from_server(pkt):
    assert pkt[Ether].src == SERVER_MAC
    assert pkt[IP].src == SERVER and pkt[IP].ttl == 64
    assert pkt[UDP].sport == 67
    assert pkt[BOOTP].op == 2 and pkt[BOOTP].chaddr[:6] == bytes.fromhex(MAC.replace(":", ""))
    assert len(pkt[BOOTP]) >= 300


def assert_unicast_to(pkt, ip, mac=MAC, port=68):
    assert (pkt[Ether].dst, pkt[IP].dst, pkt[UDP].dport) == (mac, ip, port)


def assert_broadcast(pkt):
    assert_unicast_to(pkt, "255.255.255.255", "ff:ff:ff:ff:ff:ff")


SELECTING = [("requested_addr", ADDR), ("server_id", SERVER)]


# ------------------------------------------------------------------------------------- DISCOVER

def test_discover_offers_the_fixed_address_with_all_options(responder):
    d = handle(responder, craft("discover", xid=0xCAFE, options=[("requested_addr", "10.0.0.99")]))
    assert d.event is None and d.reason == f"OFFER {ADDR} to {MAC}"
    pkt = reply_of(d)
    assert_from_server(pkt)
    assert_unicast_to(pkt, ADDR)  # no broadcast flag, giaddr/ciaddr 0: unicast to yiaddr/chaddr
    b = pkt[BOOTP]
    assert (b.xid, b.flags, b.ciaddr, b.yiaddr, b.siaddr, b.giaddr) == (
        0xCAFE, 0, "0.0.0.0", ADDR, "0.0.0.0", "0.0.0.0")
    assert options_of(pkt) == {
        "message-type": 2, "server_id": SERVER, "lease_time": 120, "renewal_time": 60,
        "rebinding_time": 105, "subnet_mask": "255.255.255.0", "router": "10.0.0.1",
        "name_server": ("8.8.8.8", "8.8.4.4"), "domain": b"novalocal", "hostname": b"vm-1",
        "interface-mtu": 1450, "broadcast_address": "10.0.0.255",
    }
    assert option_codes(d.reply)[-1] == 255


def test_discover_broadcast_flag(responder):
    d = handle(responder, craft("discover", flags=0x8000))
    pkt = reply_of(d)
    assert_broadcast(pkt)
    assert pkt[BOOTP].flags == 0x8000


def test_discover_via_relay_goes_to_giaddr_port_67(responder):
    d = handle(responder, craft("discover", giaddr="10.0.0.254", eth_src="02:00:00:00:00:fe",
                                flags=0x8000, src="10.0.0.254", dst=SERVER, sport=67,
                                options=[("relay_agent_information", b"\x01\x03abc")]))
    pkt = reply_of(d)
    assert_unicast_to(pkt, "10.0.0.254", "02:00:00:00:00:fe", port=67)
    assert pkt[BOOTP].giaddr == "10.0.0.254" and pkt[BOOTP].flags == 0x8000
    assert options_of(pkt)["relay_agent_information"] == b"\x01\x03abc"
    codes = option_codes(d.reply)
    assert codes[-2:] == [82, 255]  # RFC 3046 §2.2: echoed last


def test_long_lease_times():
    net = dataclasses.replace(NET, lease_time=86400, mtu=None, dns=(), domain="")
    d = handle(DhcpResponder(), craft("discover"), dataclasses.replace(BINDING, network=net,
                                                                      hostname=""))
    opts = options_of(reply_of(d))
    assert (opts["lease_time"], opts["renewal_time"], opts["rebinding_time"]) == (86400, 43200, 75600)
    for absent in ("interface-mtu", "name_server", "domain", "hostname"):
        assert absent not in opts


def test_dhcp_server_option_overrides_gateway():
    net = dataclasses.replace(NET, dhcp_server="10.0.0.2")
    d = handle(DhcpResponder(), craft("discover"), dataclasses.replace(BINDING, network=net))
    pkt = reply_of(d)
    assert pkt[IP].src == "10.0.0.2" and options_of(pkt)["server_id"] == "10.0.0.2"
    assert options_of(pkt)["router"] == "10.0.0.1"


def test_parameter_request_list_order_is_honoured(responder):
    d = handle(responder, craft("discover", options=[("param_req_list", [26, 12, 1, 6])]))
    codes = option_codes(d.reply)
    requested_optional = [c for c in codes if c in (26, 12, 6)]
    assert requested_optional == [26, 12, 6]
    assert {15, 28} <= set(codes)  # unrequested options are still sent


def test_client_identifier_is_echoed(responder):
    d = handle(responder, craft("discover", options=[("client_id", b"\x01" + b"\xfa\x16\x3e\x12\x34\x56")]))
    assert options_of(reply_of(d))["client_id"] == b"\x01\xfa\x16\x3e\x12\x34\x56"


@pytest.mark.parametrize("max_size", [None, 300, 576, 600])
def test_max_message_size_is_never_exceeded(max_size):
    net = dataclasses.replace(NET, dns=tuple(f"10.1.0.{i}" for i in range(1, 60)),
                              domain="d" * 200)
    binding = dataclasses.replace(BINDING, network=net, hostname="h" * 60)
    opts = [("max_dhcp_size", max_size)] if max_size else []
    d = handle(DhcpResponder(), craft("discover", options=opts))
    pkt = reply_of(d)
    limit = max(max_size or 576, 576)
    assert len(pkt[IP]) <= limit
    got = options_of(pkt)
    for name in ("message-type", "server_id", "lease_time", "subnet_mask", "router"):
        assert name in got


def test_big_datagram_allowed_by_option_57_carries_everything():
    net = dataclasses.replace(NET, dns=tuple(f"10.1.0.{i}" for i in range(1, 60)))
    d = handle(DhcpResponder(), craft("discover", options=[("max_dhcp_size", 1500)]),
               dataclasses.replace(BINDING, network=net))
    assert len(options_of(reply_of(d))["name_server"]) == 59


# -------------------------------------------------------------------------------------- REQUEST

def test_request_selecting_ack(responder):
    d = handle(responder, craft("request", options=SELECTING, flags=0x8000))
    assert d.event == LeaseEvent("lease", ADDR, MAC)
    assert "SELECTING" in d.reason and d.reason.startswith(f"ACK {ADDR}")
    pkt = reply_of(d)
    assert_from_server(pkt)
    assert_broadcast(pkt)
    assert pkt[BOOTP].yiaddr == ADDR
    opts = options_of(pkt)
    assert opts["message-type"] == 5 and opts["lease_time"] == 120 and opts["server_id"] == SERVER


def test_request_selecting_wrong_address_naks_broadcast(responder):
    d = handle(responder, craft("request", options=[("requested_addr", "10.0.0.9"),
                                                    ("server_id", SERVER)]))
    assert d.event is None and d.reason.startswith("NAK 10.0.0.9")
    pkt = reply_of(d)
    assert_from_server(pkt)
    assert_broadcast(pkt)  # giaddr 0: NAK is always broadcast, even without the flag
    b = pkt[BOOTP]
    assert (b.ciaddr, b.yiaddr, b.siaddr) == ("0.0.0.0", "0.0.0.0", "0.0.0.0")
    opts = options_of(pkt)
    assert set(opts) == {"message-type", "server_id", "error_message"}
    assert opts["message-type"] == 6 and opts["server_id"] == SERVER


def test_request_for_another_server_is_silently_ignored(responder):
    d = handle(responder, craft("request", options=[("requested_addr", ADDR),
                                                    ("server_id", "10.0.0.77")]))
    assert d.reply is None and d.event is None
    assert d.reason.startswith("ignored") and "10.0.0.77" in d.reason


def test_request_init_reboot_right_address_acks(responder):
    d = handle(responder, craft("request", options=[("requested_addr", ADDR)]))
    assert d.event == LeaseEvent("lease", ADDR, MAC) and "INIT-REBOOT" in d.reason
    pkt = reply_of(d)
    assert_unicast_to(pkt, ADDR)
    assert options_of(pkt)["message-type"] == 5


def test_request_init_reboot_wrong_address_naks(responder):
    d = handle(responder, craft("request", options=[("requested_addr", "192.168.1.50")]))
    assert d.event is None and "INIT-REBOOT" in d.reason
    pkt = reply_of(d)
    assert_broadcast(pkt)
    assert options_of(pkt)["message-type"] == 6


def test_request_renewing_unicast(responder):
    d = handle(responder, craft("request", ciaddr=ADDR, src=ADDR, dst=SERVER))
    assert d.event == LeaseEvent("lease", ADDR, MAC) and "RENEWING" in d.reason
    pkt = reply_of(d)
    assert_unicast_to(pkt, ADDR)
    assert pkt[BOOTP].ciaddr == ADDR and pkt[BOOTP].yiaddr == ADDR


def test_request_rebinding_broadcast(responder):
    d = handle(responder, craft("request", ciaddr=ADDR, src=ADDR, flags=0x8000))
    assert d.event == LeaseEvent("lease", ADDR, MAC) and "REBINDING" in d.reason
    assert_unicast_to(reply_of(d), ADDR)  # ciaddr set: unicast even with the broadcast flag


@pytest.mark.parametrize("dst", [SERVER, "255.255.255.255"])
def test_request_renewing_or_rebinding_wrong_ciaddr_naks(responder, dst):
    d = handle(responder, craft("request", ciaddr="10.0.0.66", src="10.0.0.66", dst=dst))
    assert d.event is None
    pkt = reply_of(d)
    assert_broadcast(pkt)
    assert options_of(pkt)["message-type"] == 6


def test_nak_via_relay_sets_broadcast_flag(responder):
    d = handle(responder, craft("request", giaddr="10.0.0.254", eth_src="02:00:00:00:00:fe",
                                options=[("requested_addr", "10.0.0.9")]))
    pkt = reply_of(d)
    assert_unicast_to(pkt, "10.0.0.254", "02:00:00:00:00:fe", port=67)
    assert pkt[BOOTP].flags & 0x8000 and options_of(pkt)["message-type"] == 6


def test_request_without_any_address_is_ignored(responder):
    d = handle(responder, craft("request"))
    assert d.reply is None and d.event is None and d.reason.startswith("ignored")


# --------------------------------------------------------------------- RELEASE / DECLINE / INFORM

def test_release(responder):
    d = handle(responder, craft("release", ciaddr=ADDR, src=ADDR, dst=SERVER,
                                options=[("server_id", SERVER)]))
    assert d.reply is None and d.event == LeaseEvent("release", ADDR, MAC)


def test_release_of_another_address_is_ignored(responder):
    d = handle(responder, craft("release", ciaddr="10.0.0.66", options=[("server_id", SERVER)]))
    assert d.reply is None and d.event is None and d.reason.startswith("ignored")


def test_decline(responder):
    d = handle(responder, craft("decline", options=[("requested_addr", ADDR),
                                                    ("server_id", SERVER)]))
    assert d.reply is None and d.event == LeaseEvent("decline", ADDR, MAC)


def test_decline_of_another_address_is_ignored(responder):
    d = handle(responder, craft("decline", options=[("requested_addr", "10.0.0.66")]))
    assert d.reply is None and d.event is None


def test_inform_acks_without_lease(responder):
    d = handle(responder, craft("inform", ciaddr=ADDR, src=ADDR, dst="255.255.255.255",
                                flags=0x8000))
    assert d.event is None and "INFORM" in d.reason
    pkt = reply_of(d)
    assert_from_server(pkt)
    assert_unicast_to(pkt, ADDR)  # §4.3.5: to ciaddr
    b = pkt[BOOTP]
    assert b.yiaddr == "0.0.0.0" and b.ciaddr == ADDR
    opts = options_of(pkt)
    assert opts["message-type"] == 5 and opts["server_id"] == SERVER
    assert opts["subnet_mask"] == "255.255.255.0" and opts["router"] == "10.0.0.1"
    for absent in ("lease_time", "renewal_time", "rebinding_time"):
        assert absent not in opts


def test_inform_from_another_address_is_ignored(responder):
    d = handle(responder, craft("inform", ciaddr="10.0.0.66", src="10.0.0.66"))
    assert d.reply is None and d.reason.startswith("ignored")


@pytest.mark.parametrize("mtype", ["offer", "ack", "nak", "force_renew", "lease_query", 99])
def test_server_and_unknown_message_types_are_ignored(responder, mtype):
    d = handle(responder, craft(mtype))
    assert d.reply is None and d.event is None and d.reason.startswith("ignored")


def test_bootreply_op_is_ignored(responder):
    frame = craft("discover", bootp=BOOTP(op=2, chaddr=bytes.fromhex(MAC.replace(":", ""))))
    d = handle(responder, frame)
    assert d.reply is None and "BOOTREQUEST" in d.reason


# ---------------------------------------------------------------------- who gets an answer at all

@pytest.mark.parametrize("mtype,opts", [("discover", []), ("request", SELECTING),
                                         ("inform", []), ("release", [])])
def test_other_chaddr_gets_nothing(responder, mtype, opts):
    d = handle(responder, craft(mtype, chaddr="fa:16:3e:99:99:99", ciaddr=ADDR, options=opts))
    assert d.reply is None and d.event is None
    assert "not the VIF's MAC" in d.reason


def test_starvation_random_chaddrs_get_nothing(responder):
    rng = random.Random(7)
    for _ in range(200):
        mac = ":".join(f"{rng.randrange(256):02x}" for _ in range(6))
        if mac == MAC:
            continue
        assert handle(responder, craft("discover", chaddr=mac, eth_src=MAC)).reply is None


def test_mac_comparison_is_case_insensitive(responder):
    for mac in (MAC.upper(), MAC.lower()):
        d = handle(responder, craft("discover"), dataclasses.replace(BINDING, mac=mac))
        assert d.reply is not None


def test_no_address_means_no_answer(responder):
    for mtype, opts in (("discover", []), ("request", SELECTING)):
        d = handle(responder, craft(mtype, options=opts), dataclasses.replace(BINDING, address=None))
        assert d.reply is None and d.event is None and "no fixed address" in d.reason


def test_no_binding_means_no_answer(responder):
    d = handle(responder, craft("discover"), None)
    assert d.reply is None and d.event is None and d.reason.startswith("ignored")


def test_unusable_binding_is_reported_not_raised(responder):
    d = handle(responder, craft("discover"), dataclasses.replace(BINDING, mac="nonsense"))
    assert d.reply is None and d.reason.startswith("error")


def test_vlan_tagged_request_is_answered_untagged(responder):
    d = handle(responder, craft("discover", vlan=42))
    assert reply_of(d)[Ether].type == 0x0800


def test_decisions_are_immutable(responder):
    d = handle(responder, craft("discover"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.reply = None  # type: ignore[misc]


def test_responder_is_deterministic_and_time_independent():
    frame = craft("request", options=SELECTING)
    a = DhcpResponder().handle(frame, BINDING, 0.0)
    b = DhcpResponder().handle(frame, BINDING, 1e9)
    assert a == b


# ------------------------------------------------------------------------------------------ fuzz

def test_fuzz_handle_never_raises(responder):
    """Seeded random, truncated, bit-flipped and spliced frames: never an exception; malformed
    frames say so; any reply that still comes out is a valid frame for Scapy."""
    replies = malformed = 0
    for frame in mutations(seed=4361, count=6000):
        d = responder.handle(frame, BINDING, NOW)
        assert isinstance(d, Decision) and d.reason
        if d.reason.startswith("malformed"):
            malformed += 1
            assert d.reply is None and d.event is None
        if d.reply is not None:
            replies += 1
            if replies % 10 == 0:
                dissect(d.reply)
    assert malformed > 3000 and replies > 50


def test_fuzz_garbage_types_never_raise(responder):
    for junk in (None, 12, "x" * 400, bytearray(300), memoryview(bytes(400)), b""):
        d = responder.handle(junk, BINDING, NOW)  # type: ignore[arg-type]
        assert d.reply is None and d.reason.startswith("malformed")


def test_classless_routes_only_when_asked_and_with_the_default_route():
    routed = dataclasses.replace(NET, host_routes=(("169.254.169.254/32", "10.0.0.1"),))
    binding = dataclasses.replace(BINDING, network=routed)
    responder = DhcpResponder()
    asked = handle(responder, craft("discover", options=[("param_req_list", [1, 3, 121])]),
                   binding)
    value = options_of(reply_of(asked)).get("classless_static_routes")
    # RFC 3442: 32 169.254.169.254 -> 10.0.0.1, then 0 (default) -> 10.0.0.1
    assert value == ["169.254.169.254/32:10.0.0.1", "0.0.0.0/0:10.0.0.1"], value
    not_asked = handle(responder, craft("discover", options=[("param_req_list", [1, 3])]), binding)
    assert 121 not in option_codes(not_asked.reply)
    plain = handle(responder, craft("discover", options=[("param_req_list", [1, 3, 121])]))
    assert 121 not in option_codes(plain.reply)   # no host routes on this network


# ------------------------------------------------- reply templates (repeat requests, RFC 1624)

TEMPLATE_CASES = [
    ("discover", dict()),
    ("discover", dict(flags=0x8000, options=[("param_req_list", [1, 3, 6, 12, 15, 26, 28])])),
    ("request", dict(options=SELECTING)),
    ("request", dict(src=ADDR, dst=SERVER, ciaddr=ADDR)),                      # RENEWING
    ("request", dict(src=ADDR, ciaddr=ADDR)),                                  # REBINDING
    ("request", dict(options=[("requested_addr", "10.0.0.9")])),               # NAK
    ("request", dict(giaddr="10.0.0.254", eth_src="02:00:00:00:00:fe", sport=67,
                     options=[("requested_addr", "10.0.0.9")])),               # NAK via relay
    ("discover", dict(giaddr="10.0.0.254", eth_src="02:00:00:00:00:fe", sport=67,
                      options=[("client_id", b"\x01abc"), ("relay_agent_information", b"\x01\x02ab")])),
    ("inform", dict(src=ADDR, ciaddr=ADDR)),
]


@pytest.mark.parametrize("mtype,kw", TEMPLATE_CASES)
def test_repeated_requests_get_the_bytes_a_fresh_decision_gives(mtype, kw):
    """The template path (second and later requests of a binding) must equal deciding afresh,
    for every xid (incremental checksum, including the 0 -> 0xffff edge) and client state."""
    warm = DhcpResponder()
    rng = random.Random(7)
    xids = [0, 0xFFFFFFFF, 0xFFFF0000, 0x0000FFFF, 0x12345678] + [rng.getrandbits(32) for _ in range(40)]
    for n, xid in enumerate(xids):
        frame = craft(mtype, xid=xid, **kw)
        got = warm.handle(frame, BINDING, NOW)
        fresh = DhcpResponder().handle(frame, BINDING, NOW)
        assert got == fresh, (n, got.reason, fresh.reason)
        if n < 6:
            assert dissect(got.reply)[BOOTP].xid == xid
    assert len(warm._prepared(BINDING).memo) == 1


def test_every_udp_checksum_value_through_templates():
    """Walk the xid so the patched UDP checksum takes every value it can: each equals the one
    computed from scratch (ones'-complement zero is sent as 0xffff, RFC 768)."""
    from sdn.dhcp import packet as p

    responder = DhcpResponder()
    frame = bytearray(craft("discover"))
    seen = set()
    for lo in range(0x10000):
        frame[48:50] = lo.to_bytes(2, "big")
        reply = responder.handle(bytes(frame), BINDING, NOW).reply
        udp = reply[34:]
        pseudo = reply[26:34] + b"\0\x11" + reply[38:40]
        zeroed = udp[:6] + b"\0\0" + udp[8:]
        assert int.from_bytes(reply[40:42], "big") == (p.inet_checksum(pseudo + zeroed) or 0xFFFF)
        seen.add(reply[40:42])
    assert len(seen) >= 0xFFFF - 1


def test_templates_are_per_binding_and_per_request_shape():
    responder = DhcpResponder()
    other = dataclasses.replace(BINDING, address="10.0.0.6")
    frame = craft("discover")
    assert reply_of(handle(responder, frame))[BOOTP].yiaddr == ADDR
    assert reply_of(handle(responder, frame, other))[BOOTP].yiaddr == "10.0.0.6"
    # a field that changes the reply (broadcast flag) is part of the key
    assert_broadcast(reply_of(handle(responder, craft("discover", flags=0x8000))))
    assert_unicast_to(reply_of(handle(responder, frame)), ADDR)
    # no reply, no template: ignored requests are decided afresh every time
    stranger = craft("discover", chaddr="02:00:00:00:00:99")
    for _ in range(3):
        assert handle(responder, stranger).reply is None
    assert all(len(k) > 0 for k in responder._prepared(BINDING).memo)
    assert len(responder._prepared(BINDING).memo) == 2


# ---- issue 10: replies stay within the MTU / the client's size, whatever the request echoes ----

def _stuffed(mtype, size, code_name="relay_agent_information", extra=(), **kw):
    """A request of exactly ``size`` frame bytes: ``extra`` options plus ``code_name`` options
    (255-byte chunks, RFC 3396) filling the rest; padded with PAD to the byte."""
    base = len(craft(mtype, options=list(extra), **kw))
    opts, room = list(extra), size - base
    while room >= 3:
        chunk = min(255, room - 2)
        opts.append((code_name, b"R" * chunk))
        room -= chunk + 2
    opts += ["pad"] * room
    frame = craft(mtype, options=opts, **kw)
    assert len(frame) == size
    return frame


SELECTING = [("server_id", SERVER), ("requested_addr", ADDR)]


@pytest.mark.parametrize("mtype,extra,size", [
    ("discover", [], 1514), ("request", SELECTING, 1508),       # the sizes of issue 10
    ("discover", [], 65535), ("request", SELECTING, 65500), ("request", SELECTING, 65535)])
@pytest.mark.parametrize("stuffing", ["relay_agent_information", "client_id"])
def test_echoed_options_never_push_a_reply_past_the_size_limit(responder, mtype, extra, size,
                                                                stuffing):
    d = handle(responder, _stuffed(mtype, size, stuffing, extra))
    pkt = reply_of(d)
    assert len(pkt[IP]) <= 576, (len(pkt[IP]), d.reason)  # no option 57: 576 (RFC 2131 §2)
    opts = options_of(pkt)
    assert opts["message-type"] == (2 if mtype == "discover" else 5)
    assert opts["server_id"] == SERVER and opts["subnet_mask"] == "255.255.255.0"
    assert stuffing not in opts            # too big to echo: left out whole, never truncated


def test_relay_information_that_fits_is_echoed_and_costs_optional_options_first(responder):
    rai = b"\x01\x04port"
    d = handle(responder, craft("discover", giaddr="10.0.0.9",
                                options=[("relay_agent_information", rai)]))
    assert options_of(reply_of(d))["relay_agent_information"] == rai


@pytest.mark.parametrize("max_size,mtu,limit", [(65535, 1450, 1450), (65535, None, 1500),
                                                (1000, 1450, 1000), (100, 1450, 576)])
def test_reply_fits_the_smaller_of_mtu_and_max_message_size(responder, max_size, mtu, limit):
    """Option 57 raises the limit above 576, the MTU caps it (RFC 2131 §2, RFC 2132 §9.10)."""
    net = dataclasses.replace(NET, mtu=mtu, domain="d" * 250,
                              dns=tuple(f"10.1.{i}.{j}" for i in range(2) for j in range(1, 60)))
    binding = dataclasses.replace(BINDING, network=net, hostname="h" * 250)
    d = handle(responder, _stuffed("discover", 3000, extra=[("max_dhcp_size", max_size)]), binding)
    size = len(reply_of(d)[IP])
    assert size <= limit
    assert size > limit - 260     # and the options that fit were sent (each is < 260 bytes)


def test_nak_with_huge_echoes_stays_within_576(responder):
    d = handle(responder, _stuffed("request", 65535, "client_id",
                                   extra=[("server_id", SERVER), ("requested_addr", "10.0.0.77")]))
    pkt = reply_of(d)
    assert options_of(pkt)["message-type"] == 6 and len(pkt[IP]) <= 576


def test_handle_is_total_even_when_a_bug_raises(responder, monkeypatch):
    """An encoder bug costs one request (a Decision with reason 'error: ...'), not the caller."""
    from sdn.dhcp import packet as p

    def broken(**_fields):
        raise struct_error("simulated encoder bug")
    monkeypatch.setattr(p, "build_reply", broken)
    d = handle(responder, craft("discover"))
    assert d.reply is None and d.event is None
    assert d.reason == "error: error: simulated encoder bug"


def test_binding_for_vif_and_mac_bytes():
    from sdn.dhcp.server import mac_bytes
    from sdn.view import VifView

    vif = VifView(uuid="0123456789abcdef", mac="FA-16-3E-00-00-01", network_id=1, instance="i",
                  hostname="vm", addresses=("10.0.0.7", "10.0.0.8"))
    assert DhcpBinding.for_vif(vif, NET) == DhcpBinding(mac="FA-16-3E-00-00-01",
                                                        address="10.0.0.7", hostname="vm",
                                                        network=NET)
    assert DhcpBinding.for_vif(dataclasses.replace(vif, addresses=()), NET).address is None
    assert mac_bytes("FA-16-3E-00-00-01") == bytes.fromhex("fa163e000001")
    with pytest.raises(ValueError, match="6-byte"):
        mac_bytes("fa:16:3e")

