"""sdn.flows.explain on recorded ``ovs-appctl ofproto/trace`` texts (OVS 3.1, userspace).

The traces in ``tests/unit/traces/`` were recorded on the L3 set-up of
tests/integration/test_l3.py (VLAN manager; alpha: a1 10.34.0.3 port 2 and a2 10.34.0.4
port 3 on VLAN 400; beta: b1 10.34.0.67 port 4 on VLAN 401; the public port 1; floating IPs
172.30.0.65 -> a1 and 172.30.0.66 -> b1; alpha's default group open to icmp/tcp/udp, beta's
admits nothing inbound; for egress_drop/provider_drop beta's egress IPv4 rule was deleted and a
provider rule dropped tcp 2222 from 172.30.0.0/24). ``CTX`` is that state as ``sdn trace``
builds it; trunk.txt comes from the demo (see its test).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sdn import exception, tracecmd
from sdn.flows import explain as ex
from sdn.flows.model import Table
from sdn.view import FloatingView, NetworkView, RuleView, SecurityGroupView, StateView, VifView

TRACES = Path(__file__).parent / "traces"
A1, A2, B1 = "tap23a70839-7e", "tapb23c1ba3-9b", "tapf0ac1156-8d"

CTX = ex.Context(
    ports={1: ex.Port(1, "sdnpbd1164b", "public"),
           2: ex.Port(2, A1, "vif", "a1", "fa:16:3e:47:00:6d", ("10.34.0.3",),
                      groups=("default",), segment=400),
           3: ex.Port(3, A2, "vif", "a2", "fa:16:3e:1d:31:c1", ("10.34.0.4",),
                      groups=("default",), segment=400),
           4: ex.Port(4, B1, "vif", "b1", "fa:16:3e:27:80:8b", ("10.34.0.67",),
                      groups=("default",), segment=401)},
    segments={400: "VLAN 400", 401: "VLAN 401"},
    macs={"fa:16:3e:47:00:6d": ("a1", 400), "fa:16:3e:1d:31:c1": ("a2", 400),
          "fa:16:3e:27:80:8b": ("b1", 401)},
    rules={1: "rule 1 of default: egress IPv4 any to 0.0.0.0/0",
           4: "rule 4 of default: ingress IPv4 tcp 1-65535 from 0.0.0.0/0"},
    floating={"172.30.0.65": "10.34.0.3", "172.30.0.66": "10.34.0.67"})


def explained(name: str, ctx: ex.Context = CTX) -> ex.Explanation:
    return ex.explain((TRACES / f"{name}.txt").read_text(), ctx)


@pytest.mark.parametrize("name, outcome, verdict", [
    ("spoof", "dropped", f"dropped by port security: port {A1} (instance a1) may send from "
                         "10.34.0.3 only; this packet's source is 10.34.0.9"),
    ("ping", "delivered", f"delivered to a2 on {A2}"),
    ("cross", "dropped", "cross-project: VLAN 400 and VLAN 401 do not meet (the router does not "
                         "route between tenant networks; a floating IP does)"),
    ("l2_cross", "dropped", "cross-project: VLAN 400 and VLAN 401 do not meet "
                            "(fa:16:3e:27:80:8b is b1's, on VLAN 401)"),
    ("floating", "delivered", f"DNAT 172.30.0.65 to 10.34.0.3 (a1's fixed IP), then delivered "
                              f"to a1 on {A1}"),
    ("sgdrop", "dropped", "dropped by security group: no ingress rule of b1's groups (default) "
                          "admits tcp/23 from 172.30.0.1"),
    ("snat", "output", "SNAT to 172.30.0.2 and out of the public port sdnpbd1164b"),
    ("dhcp", "controller", "answered by the controller (DHCP)"),
    ("arp_gw", "answered", "answered by the gateway ARP responder: 10.34.0.1 is at "
                           "0a:58:0a:22:00:01"),
    ("arp_nb", "delivered", f"flooded in VLAN 400: delivered to a2 on {A2}"),
    ("public_fixed", "dropped", "dropped by the router: the outside may not open connections "
                                "to fixed IP 10.34.0.3 (only to a floating IP)"),
    ("rogue_dhcp", "dropped", f"dropped by port security: port {A1} (instance a1) may not "
                              "answer DHCP (it sends from a DHCP server port)"),
    ("egress_drop", "dropped", "dropped by security group: no egress rule of b1's groups "
                               "(default) admits tcp/80 to 172.30.0.10"),
    ("provider_drop", "dropped", "dropped by a provider rule (sdn provider-rule list): tcp/2222 "
                                 "from 172.30.0.1 matches tcp,nw_src=172.30.0.0/24,tp_dst=2222"),
    ("hairpin", "delivered", "DNAT 172.30.0.65 to 10.34.0.3 (a1's fixed IP), then SNAT to "
                             f"172.30.0.2, delivered to a1 on {A1}"),
    ("metadata", "output", "DNAT 169.254.169.254 to 172.30.0.1 (the metadata host), then out of "
                           "the public port sdnpbd1164b"),
    ("tagged", "dropped", f"dropped at classify: port {A1} (instance a1) takes untagged frames "
                          "only; this frame is tagged VLAN 5"),
])
def test_verdicts_of_recorded_traces(name, outcome, verdict):
    result = explained(name)
    assert (result.outcome, result.verdict) == (outcome, verdict)


def test_frame_for_another_switch_leaves_tagged_on_the_trunk():
    # recorded on the demo's s1 (topology/demo.toml): a1 -> a2, which is on s2
    ctx = ex.Context(ports={1: ex.Port(1, "s1-trunk", "trunk"),
                            2: ex.Port(2, "tapbe25ab85-d5", "vif", "a1", "fa:16:3e:40:04:ba",
                                       ("10.10.0.3",), groups=("default",), segment=100)},
                     segments={100: "VLAN 100"}, macs={"fa:16:3e:66:4a:b0": ("a2", 100)})
    result = explained("trunk", ctx)
    assert (result.outcome, result.verdict) == (
        "output", "out of trunk s1-trunk tagged VLAN 100 toward a2 (on another switch)")
    assert result.steps[-1]["note"] == "fa:16:3e:66:4a:b0 is a2's, behind trunk s1-trunk"


def test_steps_name_table_feature_and_state():
    steps = explained("ping").steps
    assert [(s["table"], s["table_name"], s["feature"]) for s in steps][:4] == [
        (0, "classify", "classifier"), (10, "port_security", "port_security"),
        (20, "egress_acl", "security_groups"), (21, "egress_acl_state", "security_groups")]
    notes = {s["table_name"]: s["note"] for s in steps}
    assert notes["classify"] == f"from port {A1} (instance a1), segment VLAN 400 -> port_security"
    assert notes["egress_acl"] == "conntrack zone 10001, then egress_acl_state"
    assert notes["egress_acl_rules"].startswith("admitted by rule 1 of default: egress IPv4 any")
    assert notes["ingress_acl_rules"].startswith("admitted by its own network "
                                                 "(allow_same_net_traffic)")
    assert notes["l2_lookup"] == "fa:16:3e:1d:31:c1 is a2's: reg7 := 3 -> ingress_acl"
    assert notes["output"] == f"out of port {A2} (instance a2)"
    # the steps after a recirculation carry the conntrack state the trace assumed
    assert {s["ct_state"] for s in steps if s["pass"]} == {"new connection (trk|new)"}


def test_assumed_conntrack_states_are_said():
    new = explained("ping")
    assert new.assumptions == ["conntrack state new connection (trk|new) assumed "
                               "(OVS's default for a trace)"]
    reply = explained("reply_est")
    assert reply.assumptions == ["conntrack state established reply (est|rpl|trk) assumed "
                                 "(given with --ct-next)"]
    # the trace cannot carry the connection's ct_label: no verdict is invented
    assert reply.outcome == "undetermined"
    assert "cannot give the connection's ct_label" in reply.verdict
    assert explained("spoof").assumptions == []   # no conntrack on the way


def test_nat_simulated_by_the_trace_is_shown_per_pass():
    steps = explained("floating").steps
    routed = next(s for s in steps if s["table"] == Table.L3_ROUTE)
    assert routed["ct_state"] == "new connection (trk|new); NAT nw_dst 172.30.0.65 -> 10.34.0.3"
    assert routed["note"] == "next hop fa:16:3e:47:00:6d in VLAN 400 -> l3_undnat"
    commit = next(s for s in steps if s["table"] == Table.L3_DNAT_COMMIT)
    assert commit["note"] == "new connection: DNAT to 10.34.0.3, committed"


def test_parse_trace_passes_and_steps():
    passes = ex.parse_trace((TRACES / "floating.txt").read_text())
    assert len(passes) == 5
    assert passes[0].ct_state is None and passes[1].ct_state == "trk|new"
    assert not passes[1].ct_assumed
    assert [s.table for s in passes[0].steps] == [0, 35, 40]
    assert passes[3].nat is not None and "nw_dst=10.34.0.3" in passes[3].nat[1]
    assert passes[-1].datapath_actions == "ct(commit,zone=10001,label=0x4),5"
    hit = passes[0].steps[0]
    assert (hit.priority, hit.cookie, hit.match) == (100, 0x5d0701a22c435815,
                                                     "in_port=1,vlan_tci=0x0000/0x1fff")
    # an output to the input port that OVS skipped is not an output
    flood = ex.parse_trace((TRACES / "arp_nb.txt").read_text())[0].steps[-1]
    assert flood.skipped_outputs == 1 and "output:3" in flood.actions
    assert "output:2" not in flood.actions


@pytest.mark.parametrize("text", ["", "garbage\nmore", "Bad openflow flow syntax: x",
                                  "Flow: icmp,in_port=2\n 7. nonsense"])
def test_odd_text_is_explained_without_an_exception(text):
    result = ex.explain(text, CTX)
    assert result.outcome in ("undetermined", "dropped")
    assert result.verdict


def test_unknown_ports_and_segments_are_named_by_number():
    bare = ex.Context()
    assert explained("spoof", bare).verdict == (
        "dropped by port security: port #2 is not a VIF sdn filters")
    assert explained("cross", bare).verdict.startswith("cross-project: its segment and VLAN")\
        is False   # a bare context names the key
    assert "segment 0x191" in explained("cross", bare).verdict


def test_allowed_address_pairs_are_listed_in_a_spoof_verdict():
    port = ex.Port(2, A1, "vif", "a1", "fa:16:3e:47:00:6d", ("10.34.0.3",),
                   allowed_pairs=(("fa:16:3e:47:00:6d", "10.34.0.32/28"),), segment=400)
    ctx = ex.Context(ports={**CTX.ports, 2: port}, segments=CTX.segments)
    assert explained("spoof", ctx).verdict.endswith(
        "may send from 10.34.0.3 or 10.34.0.32/28 only; this packet's source is 10.34.0.9")


@pytest.mark.parametrize("proto, kw, want", [
    ("icmp", {}, "in_port=tap1,icmp,dl_src=fa:16:3e:00:00:01,dl_dst=fa:16:3e:00:00:02,"
                 "nw_src=10.0.0.5,nw_dst=10.0.0.6,nw_ttl=64,icmp_type=8,icmp_code=0"),
    ("tcp", {"dport": 22}, "in_port=tap1,tcp,dl_src=fa:16:3e:00:00:01,dl_dst=fa:16:3e:00:00:02,"
                           "nw_src=10.0.0.5,nw_dst=10.0.0.6,nw_ttl=64,tcp_src=40000,tcp_dst=22,"
                           "tcp_flags=syn"),
    ("udp", {"dport": 53}, "in_port=tap1,udp,dl_src=fa:16:3e:00:00:01,dl_dst=fa:16:3e:00:00:02,"
                           "nw_src=10.0.0.5,nw_dst=10.0.0.6,nw_ttl=64,udp_src=40000,udp_dst=53"),
    ("arp", {}, "in_port=tap1,arp,dl_src=fa:16:3e:00:00:01,dl_dst=ff:ff:ff:ff:ff:ff,arp_op=1,"
                "arp_spa=10.0.0.5,arp_tpa=10.0.0.6,arp_sha=fa:16:3e:00:00:01"),
    ("dhcp", {}, "in_port=tap1,udp,dl_src=fa:16:3e:00:00:01,dl_dst=ff:ff:ff:ff:ff:ff,"
                 "nw_src=0.0.0.0,nw_dst=255.255.255.255,nw_ttl=64,udp_src=68,udp_dst=67"),
])
def test_packet_spec(proto, kw, want):
    assert ex.packet_spec("tap1", proto, src_mac="fa:16:3e:00:00:01", src_ip="10.0.0.5",
                          dst_mac="fa:16:3e:00:00:02", dst_ip="10.0.0.6", **kw) == want


@pytest.mark.parametrize("proto, kw, why", [
    ("tcp", {}, "tcp needs --dport"),
    ("icmp", {"dst_ip": None}, "icmp needs a destination"),
    ("gre", {}, "unknown protocol 'gre'"),
])
def test_packet_spec_refuses_what_it_cannot_build(proto, kw, why):
    args = {"src_mac": "fa:16:3e:00:00:01", "src_ip": "10.0.0.5", "dst_mac": "fa:16:3e:00:00:02",
            "dst_ip": "10.0.0.6", **kw}
    with pytest.raises(ValueError, match=why):
        ex.packet_spec("tap1", proto, **args)


DUMP = """\
OFPST_FLOW reply (OF1.3) (xid=0x2):
 cookie=0x5d0201a22c435815, duration=282.066s, table=0, n_packets=18, n_bytes=3024, priority=100,in_port=2,vlan_tci=0x0000/0x1fff actions=set_field:0x2->reg5,set_field:0x190->reg6,goto_table:10
 cookie=0x5d0101a22c435815, duration=282.115s, table=0, n_packets=0, n_bytes=0, priority=0 actions=drop
 cookie=0x5d0601a22c435815, duration=282.114s, table=70, n_packets=7, n_bytes=0, priority=100,reg7=0x2 actions=output:2
 cookie=0x5d0601a22c435815, duration=282.114s, table=50, n_packets=0, n_bytes=0, priority=100,reg6=0x190,dl_dst=fa:16:3e:47:00:6d actions=set_field:0x2->reg7,goto_table:60
 cookie=0x1234, duration=1.0s, table=0, n_packets=0, n_bytes=0, priority=1,in_port=999 actions=drop
"""


def test_dump_flows_grouped_by_feature_with_table_names():
    flows = ex.parse_dump_flows(DUMP)
    assert len(flows) == 5
    assert flows[1] == ex.DumpedFlow(0x5d0101a22c435815, 0, 0, "", "drop", 0)
    assert flows[2].match == "reg7=0x2" and flows[2].n_packets == 7
    groups = ex.group_flows(flows)
    assert list(groups) == ["pipeline", "classifier", "l2", "foreign"]
    assert groups["l2"]["count"] == 2
    assert groups["l2"]["tables"] == {"l2_lookup": 1, "output": 1}   # pipeline order
    assert groups["foreign"]["tables"] == {"classify": 1}


# --------------------------------------------------------------------------- state -> packet
# (sdn.tracecmd's resolution of --from/--in-port/--dst against a StateView; no switch)

NET_A = NetworkView(1, "tenants_0", "10.34.0.0/26", "255.255.255.192", "10.34.0.1",
                    "10.34.0.63", vlan=400, project_id="alpha")
NET_B = NetworkView(2, "tenants_1", "10.34.0.64/26", "255.255.255.192", "10.34.0.65",
                    "10.34.0.127", vlan=401, project_id="beta")
VA1 = VifView("23a70839-7ebc", "fa:16:3e:47:00:6d", 1, "a1", "a1", ("10.34.0.3",), "alpha",
              id=1, security_groups=(1,))
VA2 = VifView("b23c1ba3-9ba2", "fa:16:3e:1d:31:c1", 1, "a2", "a2", ("10.34.0.4",), "alpha", id=2)
VB1 = VifView("f0ac1156-8d9b", "fa:16:3e:27:80:8b", 2, "b1", "b1", ("10.34.0.67",), "beta", id=3)
VIEW = StateView(1, {1: NET_A, 2: NET_B}, (VA1, VA2, VB1),
                 (FloatingView("172.30.0.65", "10.34.0.3", 1, "alpha"),),
                 security_groups={1: SecurityGroupView(1, "default", "alpha", rules=(
                     RuleView(4, "ingress", "IPv4", 6, 22, 22, "0.0.0.0/0"),))})
PORTS = {"sdnpub": 1, VA1.port_name: 2, VA2.port_name: 3, VB1.port_name: 4, "sdntrunk": 5}


class Conf:
    public_interface = "sdnpub"
    routing_source_ip = "172.30.0.2"
    external_gateway = "172.30.0.1"

    class ovs:
        trunk_interfaces = ["sdntrunk"]


def resolve(**kw):
    args = argparse.Namespace(**{"bridge": "br", "from_instance": None, "in_port": None,
                                 "dst": None, "proto": None, "dport": None, "src_ip": None,
                                 "src_mac": None, **kw})
    return tracecmd.resolve_packet(args, VIEW, PORTS, Conf)[0]


def test_neighbour_gets_its_own_mac_and_a_routed_destination_the_gateway_mac():
    assert "dl_dst=fa:16:3e:1d:31:c1,nw_src=10.34.0.3,nw_dst=10.34.0.4" in resolve(
        from_instance="a1", dst="a2")
    assert f"dl_dst={NET_A.gateway_mac},nw_src=10.34.0.3,nw_dst=10.34.0.67" in resolve(
        from_instance="a1", dst="b1")
    assert f"dl_dst={NET_A.gateway_mac}" in resolve(from_instance="a1", dst="172.30.0.10",
                                                     proto="udp", dport=53)
    spoof = resolve(from_instance="a1", dst="a2", src_ip="10.34.0.9", src_mac="fa:16:3e:00:00:09")
    assert "dl_src=fa:16:3e:00:00:09" in spoof and "nw_src=10.34.0.9" in spoof
    assert "arp_tpa=10.34.0.1" in resolve(from_instance="a1", proto="arp")


def test_from_the_public_port_to_a_floating_ip_goes_to_the_router_mac():
    spec = resolve(in_port="sdnpub", dst="172.30.0.65", proto="tcp", dport=22)
    assert spec.startswith("in_port=sdnpub,tcp,dl_src=02:00:00:00:00:01,dl_dst=0a:58:ac:1e:00:02,"
                           "nw_src=172.30.0.1,nw_dst=172.30.0.65")
    # a trunk's frame carries the destination network's tag
    assert resolve(in_port="sdntrunk", dst="b1", src_ip="10.34.0.70").startswith(
        "in_port=sdntrunk,dl_vlan=401,icmp,dl_src=02:00:00:00:00:01,dl_dst=fa:16:3e:27:80:8b")
    assert resolve(in_port="2", dst="a2").startswith(f"in_port={VA1.port_name},icmp,"
                                                     "dl_src=fa:16:3e:47:00:6d")


@pytest.mark.parametrize("kw, error", [
    ({"from_instance": "zz", "dst": "a1"}, "no instance named zz"),
    ({"from_instance": "a1", "dst": "10.34.0.9"}, "no VIF of network tenants_0 (10.34.0.0/26) "
                                                  "holds 10.34.0.9"),
    ({"from_instance": "a1", "dst": "nonsense"}, "--dst 'nonsense' is neither an instance nor"),
    ({"from_instance": "a1"}, "give --dst (or --proto dhcp/arp)"),
    ({"from_instance": "a1", "dst": "a2", "proto": "udp"}, "--proto udp needs --dport"),
    ({"from_instance": "a1", "dst": "a2", "dport": 22}, "--dport applies to tcp and udp"),
    ({"in_port": "9", "dst": "a2"}, "bridge br has no port 9"),
    ({"in_port": "nope", "dst": "a2"}, "bridge br has no port nope"),
])
def test_packets_that_cannot_be_built_are_one_line_errors(kw, error):
    with pytest.raises(exception.SdnError) as err:
        resolve(**kw)
    assert str(err.value).startswith(error) and "\n" not in str(err.value)


def test_instance_not_on_this_bridge():
    with pytest.raises(exception.SdnError, match="instance a1 is not on bridge br: none of its "
                                                 r"ports \(tap23a70839-7e\) is there"):
        tracecmd.resolve_packet(argparse.Namespace(
            bridge="br", from_instance="a1", in_port=None, dst="a2", proto=None, dport=None,
            src_ip=None, src_mac=None), VIEW, {"other": 1}, Conf)


def test_context_from_state():
    ctx = tracecmd.build_context(VIEW, PORTS, public="sdnpub")
    assert ctx.ports[1] == ex.Port(1, "sdnpub", "public")
    assert ctx.ports[2].instance == "a1" and ctx.ports[2].groups == ("default",)
    assert ctx.ports[2].segment == 400 and ctx.segments == {400: "VLAN 400", 401: "VLAN 401"}
    assert ctx.rules == {4: "rule 4 of default: ingress IPv4 tcp 22-22 from 0.0.0.0/0"}
    assert ctx.macs["fa:16:3e:27:80:8b"] == ("b1", 401)
