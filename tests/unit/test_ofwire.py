"""sdn.apps.ofwire packs the same bytes os-ken serialises (sdn.apps.ofmsgs is the reference)."""

import dataclasses

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from tests.unit.views import open_view
from sdn.apps import ofmsgs, ofwire
from sdn.flows import model as m
from sdn.flows.compiler import CompileSettings, bind_ports, compile_datapath
from sdn.flows.model import Feature, Table, flow
from sdn.flows.router import RouterSettings
from sdn.view import (FloatingView, NetworkView, ProviderRuleView, RuleView, SecurityGroupView,
                      StateView, VifView)
from tests.unit.fakeswitch import DatapathApi

XID = 0x12345678
BUNDLE = 77
GEN = 0x0000123456789ABC

ALPHA = NetworkView(1, "alpha", "10.34.0.0/26", "255.255.255.192", "10.34.0.1", "10.34.0.63",
                    ("8.8.4.4",), vlan=400, project_id="alpha", vpn_public_address="172.30.0.3",
                    vpn_public_port=5000, vpn_private_address="10.34.0.2")
BETA = NetworkView(2, "beta", "10.34.0.64/26", "255.255.255.192", "10.34.0.65", "10.34.0.127",
                   vlan=401, project_id="beta")
FLAT = NetworkView(3, "flat", "10.35.0.0/24", "255.255.255.0", "10.35.0.1", "10.35.0.255",
                   project_id="gamma")
A1 = VifView("aaaa1111-0000", "fa:16:3e:00:00:a1", 1, "a1", "a1", ("10.34.0.3",), "alpha")
A2 = VifView("aaaa2222-0000", "fa:16:3e:00:00:a2", 1, "a2", "a2", ("10.34.0.4", "10.34.0.8"),
             "alpha", allowed_address_pairs=(("fa:16:3e:00:00:77", "10.34.0.32/28"),
                                             ("fa:16:3e:00:00:a2", "10.34.0.9")))
A3 = VifView("aaaa3333-0000", "FA:16:3E:00:00:A3", 1, "a3", "a3", ("10.34.0.5",), "alpha",
             port_security=False)
# beta's VIFs are in a stateful group with every kind of rule (conjunctions, ct labels/marks)
WEB = SecurityGroupView(50, "web", "beta", rules=(
    RuleView(51, "ingress", "IPv4", 6, 80, 80, remote_group=50),
    RuleView(52, "ingress", "IPv4", 6, 1000, 2000, remote_cidr="192.0.2.0/24"),
    RuleView(53, "ingress", "IPv4", 1, 8, None),
    RuleView(54, "egress", "IPv4"), RuleView(55, "egress", "IPv6"),
    RuleView(56, "ingress", "IPv6", 58, 128, 0, remote_cidr="2001:db8::/32")))
B1 = VifView("bbbb1111-0000", "fa:16:3e:00:00:b1", 2, "b1", "b1", ("10.34.0.67",), "beta",
             id=7, security_groups=(50,))
B2 = VifView("bbbb2222-0000", "fa:16:3e:00:00:b2", 2, "b2", "b2", ("10.34.0.68",), "beta",
             id=8, security_groups=(50,))
C1 = VifView("cccc1111-0000", "fa:16:3e:00:00:c1", 3, "c1", "c1", ("10.35.0.7",), "gamma")
F1 = FloatingView("172.30.0.65", "10.34.0.3", 1, "alpha")
F2 = FloatingView("172.30.0.66", "10.35.0.7", 3, "gamma")
VIEW = open_view(1, {1: ALPHA, 2: BETA, 3: FLAT}, (A1, A2, A3, B1, B2, C1), (F1, F2),
                 security_groups={50: WEB},
                 provider_rules=(ProviderRuleView(1, "198.51.100.0/24", 17, 53, 53),))
RS = RouterSettings("172.30.0.2", "172.30.0.1", "02:00:00:00:00:01",
                    metadata_host="172.30.0.1", metadata_port=8775)
# b2 lives behind the trunks; the public port is here
PORTS = {A1.port_name: 1, A2.port_name: 2, B1.port_name: 3, A3.port_name: 4, C1.port_name: 5,
         "pub": 9, "trunk1": 10, "trunk2": 11}


class Dp:
    ofproto = ofp
    ofproto_parser = parser
    id = 1
    xid = 0


def _flows():
    binding = bind_ports(VIEW, PORTS, frozenset({"trunk1", "trunk2"}), "pub")
    desired = [compile_datapath(VIEW, binding, CompileSettings(dhcp_rate_pps=100, router=RS)),
               # no router, no learned gateway: other branches of the compiler
               compile_datapath(VIEW, binding, CompileSettings(
                   router=dataclasses.replace(RS, metadata_host=None))),
               compile_datapath(dataclasses.replace(VIEW, floating_ips=()), binding)]
    flows = [f for d in desired for f in d.flows]
    groups = {g.group_id: g for d in desired for g in d.groups.values()}
    return list(dict.fromkeys(flows)), list(groups.values())


FLOWS, GROUPS = _flows()
EXTRA = [
    flow(Feature.L2, Table.L2_LOOKUP, 5, {"eth_dst": ("01:00:00:00:00:00", "01:00:00:00:00:00"),
                                          "reg6": 7}, [m.Output(3), m.Group(m.entry_id(Feature.L2, 7))]),
    flow(Feature.L2, Table.L2_LOOKUP, 5, {"eth_dst": ("01:23:45:67:89:ab", "ff:ff:ff:00:00:00")}),
    flow(Feature.L2, Table.L2_LOOKUP, 6, {"reg6": 7},
         [m.SetField("reg7", 3), m.Resubmit(Table.INGRESS_ACL), m.SetField("reg7", 0xFFFFFFFF),
          m.Resubmit(Table.CLASSIFY), m.Group(0xFFFFFFFF), m.Resubmit(Table.OUTPUT)]),
    flow(Feature.ROUTER, Table.L3_ROUTE, 9, {"eth_type": 0x0800, "ipv4_dst": ("10.1.2.3", "255.255.0.0")},
         [m.SetField("ipv4_src", "1.2.3.4"), m.SetField("eth_src", "02:00:00:00:00:09")], Table.L3_OUTPUT),
    flow(Feature.ROUTER, Table.L3_ROUTE, 9, {"eth_type": 0x86DD, "ipv6_src": "fe80::1",
                                             "ip_proto": 58, "icmpv6_type": 135,
                                             "ipv6_nd_target": "fe80::f816:3eff:fe00:a1"}),
    flow(Feature.ROUTER, Table.L3_DNAT, 3, {"ct_state": m.ct_state(plus=m.CT_TRK, minus=m.CT_NEW),
                                            "reg3": (1, 1), "reg7": 0xFFFFFFFF},
         [m.Meter(12), m.Ct(5002, None, True, m.Nat("dst", "10.0.0.1", 80)), m.Controller(128),
          m.PushVlan(), m.SetField("vlan_vid", m.vlan_vid(42)), m.Output(m.OFPP_IN_PORT),
          m.Move("reg5", "reg7", 32)]),
    flow(Feature.ROUTER, Table.L3_ROUTE, 8, {"eth_type": 0x0800, "ipv4_src": "10.9.0.0/16",
                                             "ip_proto": 6, "tcp_src": 80, "reg0": 1, "reg1": 2,
                                             "reg2": 3, "reg7": 4},
         [m.SetField("arp_tha", "00:00:00:00:00:01"), m.SetField("arp_tpa", "10.0.0.1"),
          m.PopVlan(), m.DecTtl(), m.Ct(5001), m.Ct(5002, Table.L3_SNAT, nat=m.Nat())]),
    flow(Feature.GATEWAY_ARP, Table.SERVICES, 8, {"eth_type": 0x0806, "arp_op": 2,
                                                  "arp_tha": "02:00:00:00:00:02",
                                                  "arp_tpa": ("10.0.0.0", "255.0.0.0"),
                                                  "eth_src": ("02:00:00:00:00:00", "ff:ff:00:00:00:00"),
                                                  "vlan_vid": (0x1000, 0x1000)}),
    flow(Feature.PIPELINE, Table.CLASSIFY, 0, {}),
    flow(Feature.PIPELINE, Table.CLASSIFY, 0, {}, [m.Meter(1)], Table.OUTPUT),
]


def _reference(msg) -> bytes:
    bm = ofmsgs.bundle_add(Dp(), BUNDLE, msg)
    bm.set_xid(XID)
    bm.serialize()
    return bytes(bm.buf)


def _plain(msg) -> bytes:
    msg.set_xid(XID)
    msg.serialize()
    return bytes(msg.buf)


def test_fixture_is_rich():
    fields = {k for f in FLOWS for k, _ in f.match}
    kinds = {type(a).__name__ for f in FLOWS for a in f.actions}
    assert len(FLOWS) > 150
    assert {"in_port", "eth_src", "eth_dst", "eth_type", "vlan_vid", "ip_proto", "ipv4_src",
            "ipv4_dst", "udp_src", "udp_dst", "tcp_dst", "arp_op", "arp_spa", "arp_tpa",
            "arp_sha", "ipv6_src", "icmpv6_type", "ipv6_nd_target", "reg5", "reg6",
            "ct_state"} <= fields
    assert {t.__name__ for t in m.ACTION_TYPES} <= kinds | {
        type(a).__name__ for f in EXTRA for a in f.actions}
    assert GROUPS
    assert any(isinstance(v, tuple) for f in FLOWS for _, v in f.match)
    assert any(f.goto is None and not f.actions for f in FLOWS)


@pytest.mark.parametrize("f", FLOWS + EXTRA, ids=lambda f: f"t{int(f.table)}p{f.priority}")
def test_flow_add_and_delete_strict_bytes_equal_oskens(f):
    dp = Dp()
    add = ofwire.flow_add(f, GEN, XID)
    assert add == _plain(ofmsgs.flow_add(dp, f, GEN))
    assert ofwire.bundle_add(BUNDLE, ofwire.flow_add(f, GEN), XID) == _reference(
        ofmsgs.flow_add(dp, f, GEN))
    assert ofwire.bundle_add(BUNDLE, ofwire.flow_delete_strict(f), XID) == _reference(
        ofmsgs.flow_delete_strict(dp, f))


def test_delete_cookie_bytes_equal_oskens():
    c = m.cookie(Feature.L2, 5)
    assert ofwire.bundle_add(BUNDLE, ofwire.delete_cookie(c), XID) == _reference(
        ofmsgs.delete_cookie(Dp(), c))


def test_cached_encodings_do_not_leak_between_flows():
    # the same field value in a match (mask applied) and a set-field (as given) differ
    assert ofwire.oxm("reg3", (3, 1))[1] != ofwire.oxm("reg3", (3, 1), False)[1]
    f = EXTRA[5]   # meter, ct(nat), controller, push_vlan, set_field, IN_PORT, move
    assert ofwire.flow_add(f, GEN, XID) == ofwire.flow_add(f, GEN, XID)


def test_bundle_adds_allocate_fresh_xids_from_the_datapath_counter():
    dp = Dp()
    dp.xid = 0xFFFFFFFE
    msgs = [ofwire.flow_add(f, GEN) for f in FLOWS[:50]]
    stream = b"".join(ofwire.bundle_adds(dp, BUNDLE, msgs, chunk=1000))
    expected = []
    for i, f in enumerate(FLOWS[:50]):
        xid = (0xFFFFFFFE + 1 + i) & 0xFFFFFFFF
        expected.append(ofwire.bundle_add(BUNDLE, ofwire.flow_add(f, GEN), xid))
    assert stream == b"".join(expected)
    assert dp.xid == (0xFFFFFFFE + 50) & 0xFFFFFFFF


@pytest.mark.parametrize("chunk", [1, 1000, 1 << 18])
def test_bundled_flow_adds_equal_bundle_adds_of_flow_adds(chunk):
    """The fused hot loop packs the bytes of bundle_add(flow_add) for every compiled flow (all
    features, EXTRA's rich actions), with the same xids, across the xid wrap."""
    flows = FLOWS + EXTRA
    dp, ref_dp = Dp(), Dp()
    dp.xid = ref_dp.xid = 0xFFFFFFF0
    fused = list(ofwire.bundled_flow_adds(dp, BUNDLE, flows, GEN, chunk=chunk))
    ref = b"".join(ofwire.bundle_adds(ref_dp, BUNDLE, [ofwire.flow_add(f, GEN) for f in flows]))
    assert b"".join(fused) == ref and dp.xid == ref_dp.xid
    assert len(fused) == (len(flows) if chunk == 1 else len(fused))


def test_plan_stream_is_what_the_os_ken_bundle_loop_sent():
    """The bytes DatapathSync._send_bundle sends equal the old os-ken loop: deletes, adds, stale cookies,
    each bundle-add with the next xid of the datapath."""
    deletes, adds, stale = FLOWS[:7], FLOWS[7:40], [m.cookie(Feature.L2, 3), m.cookie(Feature.DHCP, 4)]
    dp = Dp()
    dp.xid = 1000
    stream = b"".join(ofmsgs.plan_bundle_adds(dp, BUNDLE, deletes, adds, GEN, stale))
    ref_dp = Dp()
    ref_dp.xid = 1000
    msgs = [ofmsgs.flow_delete_strict(ref_dp, f) for f in deletes]
    msgs += [ofmsgs.flow_add(ref_dp, f, GEN) for f in adds]
    msgs += [ofmsgs.delete_cookie(ref_dp, c) for c in stale]
    ref = []
    for msg in msgs:
        bm = ofmsgs.bundle_add(ref_dp, BUNDLE, msg)
        ref_dp.xid = (ref_dp.xid + 1) & 0xFFFFFFFF   # Datapath.set_xid
        bm.set_xid(ref_dp.xid)
        bm.serialize()
        ref.append(bytes(bm.buf))
    assert stream == b"".join(ref) and dp.xid == ref_dp.xid


class _RecordingDp(DatapathApi, Dp):
    """Records what is sent; answers each barrier at once (through ``sync.on_barrier``)."""

    def __init__(self):
        self.xid = 500
        self.sent: list[bytes] = []
        self.barriers = 0
        self.sync = None

    def send_msg(self, msg):
        super().send_msg(msg)
        if isinstance(msg, parser.OFPBarrierRequest):
            self.barriers += 1
            self.sync.on_barrier(msg.xid)

    def send(self, buf):
        self.sent.append(bytes(buf))


def _sync(dp):
    from sdn.apps.datapath import DatapathSync
    dp.sync = DatapathSync(dp, lambda ports: m.Desired([], {}, {}), lambda: GEN, start=False,
                           reply_timeout=1)
    dp.sync.generation = GEN
    return dp.sync


def _send_plan(plan):
    from sdn.flows import reconcile
    dp = _RecordingDp()
    try:
        _sync(dp)._send_bundle(reconcile.Plan(**plan))
    finally:
        stream = b"".join(dp.sent)
    return dp, stream


def _ctrl_type(stream: bytes, offset: int) -> tuple[int, int]:
    """(message type, ONF bundle-ctrl type or -1) of the message at ``offset``."""
    kind = stream[offset + 1]
    if kind == ofp.OFPT_EXPERIMENTER and int.from_bytes(stream[offset + 12:offset + 16], "big") == 2300:
        return kind, int.from_bytes(stream[offset + 20:offset + 22], "big")
    return kind, -1


def _messages(stream: bytes):
    offset = 0
    while offset < len(stream):
        yield _ctrl_type(stream, offset)
        offset += int.from_bytes(stream[offset + 2:offset + 4], "big")


def test_send_plan_opens_adds_commits_then_waits_for_a_barrier():
    dp, stream = _send_plan(dict(adds=FLOWS[:30], deletes=FLOWS[30:33],
                                 stale_cookies=[m.cookie(Feature.L2, 1)]))
    kinds = list(_messages(stream))
    assert kinds[0] == (ofp.OFPT_EXPERIMENTER, ofp.ONF_BCT_OPEN_REQUEST)
    assert kinds[1:35] == [(ofp.OFPT_EXPERIMENTER, -1)] * 34
    assert kinds[35:] == [(ofp.OFPT_EXPERIMENTER, ofp.ONF_BCT_COMMIT_REQUEST),
                          (ofp.OFPT_BARRIER_REQUEST, -1)]
    assert dp.barriers == 1
    xids = [int.from_bytes(stream[o + 4:o + 8], "big") for o in _offsets(stream)]
    assert xids == list(range(501, 501 + len(xids)))   # unique, from the datapath's counter


def _offsets(stream):
    offset = 0
    while offset < len(stream):
        yield offset
        offset += int.from_bytes(stream[offset + 2:offset + 4], "big")


def test_send_plan_discards_the_bundle_when_a_flow_cannot_be_encoded():
    bad = dataclasses.replace(FLOWS[0], actions=(object(),))
    dp = _RecordingDp()
    from sdn.flows import reconcile
    with pytest.raises(TypeError, match="ofwire cannot encode"):
        _sync(dp)._send_bundle(reconcile.Plan(adds=[*FLOWS[:5], bad]))
    kinds = list(_messages(b"".join(dp.sent)))
    assert kinds[0][1] == ofp.ONF_BCT_OPEN_REQUEST and kinds[-1][1] == ofp.ONF_BCT_DISCARD_REQUEST
    assert (ofp.OFPT_EXPERIMENTER, ofp.ONF_BCT_COMMIT_REQUEST) not in kinds and not dp.barriers
