"""Security groups in flows (sdn/flows/security_groups.py), by tracing packets through the
compiled pipeline, and the flow-count formula of its module docstring."""

import dataclasses

import pytest

from sdn.flows import security_groups as sg
from sdn.flows.compiler import CompileSettings, bind_ports, compile_datapath
from sdn.flows.model import (CT_EST, CT_INV, CT_NEW, CT_REL, CT_RPL, CT_TRK, Conjunction, Ct,
                             Feature, Table)
from sdn.flows.trace import trace
from sdn.view import (NetworkView, ProviderRuleView, RuleView, SecurityGroupView, StateView,
                      VifView)

NET = NetworkView(1, "alpha", "10.10.0.0/24", "255.255.255.0", "10.10.0.1", "10.10.0.255",
                  vlan=100, project_id="alpha")
DEFAULT = SecurityGroupView(1, "default", "alpha", rules=(
    RuleView(1, "egress", "IPv4"), RuleView(2, "egress", "IPv6")))
WEB = SecurityGroupView(2, "web", "alpha", rules=(
    RuleView(3, "egress", "IPv4"), RuleView(4, "egress", "IPv6"),
    RuleView(5, "ingress", "IPv4", 6, 22, 22, remote_cidr="192.0.2.0/24"),
    RuleView(6, "ingress", "IPv4", 6, 80, 80, remote_group=1),
    RuleView(7, "ingress", "IPv4", 1, 8, None)))
WEB_VIF = VifView("aaaa1111-0000", "fa:16:3e:00:00:a1", 1, "a1", "a1", ("10.10.0.4",), "alpha",
                  id=11, security_groups=(2,))
PLAIN = VifView("aaaa2222-0000", "fa:16:3e:00:00:a2", 1, "a2", "a2", ("10.10.0.5",), "alpha",
                id=12, security_groups=(1,))
OPEN = VifView("aaaa3333-0000", "fa:16:3e:00:00:a3", 1, "a3", "a3", ("10.10.0.6",), "alpha",
               id=13, port_security=False)
# a VIF of the network on another hypervisor (behind the trunk): what our VIFs talk to
FAR = VifView("ffff0000-0000", "fa:16:3e:99:99:99", 1, "far", "far", ("10.10.0.99",), "alpha",
              id=14)
TRUNK = 9
PORTS = {WEB_VIF.port_name: 1, PLAIN.port_name: 2, OPEN.port_name: 3, "trunk": TRUNK}
NEW = CT_NEW | CT_TRK
EST = CT_EST | CT_TRK
VIEW = StateView(1, {1: NET}, (WEB_VIF, PLAIN, OPEN, FAR), security_groups={1: DEFAULT, 2: WEB})


def desired(view=VIEW, ports=PORTS):
    return compile_datapath(view, bind_ports(view, ports, frozenset({"trunk"})), CompileSettings())


def tcp_in(src_ip, dst_vif, dport, ct=NEW, **extra):
    """A TCP segment arriving on the trunk (tagged with the network's VLAN) for ``dst_vif``."""
    return {"in_port": TRUNK, "vlan_vid": 0x1000 | 100, "eth_src": "fa:16:3e:99:99:99",
            "eth_dst": dst_vif.mac, "eth_type": 0x0800, "ip_proto": 6, "ipv4_src": src_ip,
            "ipv4_dst": dst_vif.addresses[0], "tcp_src": 40000, "tcp_dst": dport, "ct_state": ct,
            **extra}


def from_vif(vif, port, dst_ip, proto=6, ct=NEW, **extra):
    return {"in_port": port, "eth_src": vif.mac, "eth_dst": "fa:16:3e:99:99:99",
            "eth_type": 0x0800, "ip_proto": proto, "ipv4_src": vif.addresses[0],
            "ipv4_dst": dst_ip, "tcp_src": 40000, "tcp_dst": 443, "ct_state": ct, **extra}


def labels(result):
    return [m.value for ct in result.cts if ct.commit for m in ct.marks if m.field == "ct_label"]


def test_a_cidr_rule_admits_exactly_its_port_and_sources_and_labels_the_connection():
    d = desired()
    ok = trace(d, tcp_in("192.0.2.7", WEB_VIF, 22))
    assert ok.outputs == [(1, None)] and labels(ok) == [5]
    assert trace(d, tcp_in("192.0.2.7", WEB_VIF, 23)).dropped
    assert trace(d, tcp_in("198.51.100.7", WEB_VIF, 22)).dropped


def test_a_remote_group_rule_admits_members_only():
    # all in one network: without allow_same_net_traffic only the grant admits
    d = desired(dataclasses.replace(VIEW, allow_same_net_traffic=False))
    member = trace(d, tcp_in(PLAIN.addresses[0], WEB_VIF, 80))
    assert member.outputs == [(1, None)] and labels(member) == [6]
    assert trace(d, tcp_in(OPEN.addresses[0], WEB_VIF, 80)).dropped      # in no group
    assert trace(d, tcp_in(PLAIN.addresses[0], WEB_VIF, 81)).dropped      # another port


def test_the_same_network_is_admitted_while_allow_same_net_traffic():
    d = desired()
    r = trace(d, tcp_in(OPEN.addresses[0], PLAIN, 5000))
    assert r.outputs == [(2, None)] and labels(r) == [sg.LABEL_SAME_NET]
    view = dataclasses.replace(VIEW, allow_same_net_traffic=False)
    assert trace(desired(view), tcp_in(OPEN.addresses[0], PLAIN, 5000)).dropped
    # established same-net connections are cut when the option goes off
    est = tcp_in(OPEN.addresses[0], PLAIN, 5000, ct=EST, ct_label=sg.LABEL_SAME_NET)
    assert trace(d, est).outputs == [(2, None)]
    assert trace(desired(view), est).dropped


def test_icmp_type_rule():
    d = desired()
    ping = {**tcp_in("203.0.113.9", WEB_VIF, 0), "ip_proto": 1, "icmpv4_type": 8,
            "icmpv4_code": 0}
    assert trace(d, ping).outputs == [(1, None)]
    assert trace(d, {**ping, "icmpv4_type": 13}).dropped


def test_established_connections_live_while_their_rule_applies_and_are_cut_after():
    d = desired()
    est = tcp_in("192.0.2.7", WEB_VIF, 22, ct=EST, ct_label=5)
    assert trace(d, est).outputs == [(1, None)] and not labels(trace(d, est))
    # the rule is deleted: the connection is marked blocked and dropped
    web = dataclasses.replace(WEB, rules=tuple(r for r in WEB.rules if r.id != 5))
    cut = trace(desired(dataclasses.replace(VIEW, security_groups={1: DEFAULT, 2: web})), est)
    assert cut.dropped
    assert [m.value for c in cut.cts for m in c.marks if m.field == "ct_mark"] == [sg.MARK_BLOCKED]
    # the VIF leaves the group: same
    moved = dataclasses.replace(WEB_VIF, security_groups=(1,))
    view = dataclasses.replace(VIEW, vifs=(moved, PLAIN, OPEN))
    assert trace(desired(view), est).dropped
    # another VIF's rule does not vouch for this one's connection
    assert trace(d, tcp_in("192.0.2.7", PLAIN, 22, ct=EST, ct_label=5)).dropped


def test_replies_to_own_connections_return_and_blocked_or_invalid_never_do():
    d = desired()
    out = trace(d, from_vif(PLAIN, 2, "203.0.113.9"))
    assert out.outputs == [(TRUNK, 100)] and labels(out) == [1]
    reply = tcp_in("203.0.113.9", PLAIN, 40000, ct=EST | CT_RPL, ct_label=1)
    assert trace(d, reply).outputs == [(2, None)]
    related = tcp_in("203.0.113.9", PLAIN, 40000, ct=CT_REL | CT_TRK, ct_label=1)
    assert trace(d, related).outputs == [(2, None)]
    assert trace(d, {**reply, "ct_mark": sg.MARK_BLOCKED}).dropped
    assert trace(d, {**reply, "ct_state": CT_INV | CT_TRK}).dropped


def test_an_egress_rule_restricts_outbound():
    only_dns = SecurityGroupView(1, "default", "alpha", rules=(
        RuleView(1, "egress", "IPv4", 17, 53, 53, remote_cidr="10.10.0.0/24"),))
    view = dataclasses.replace(VIEW, security_groups={1: only_dns, 2: WEB})
    d = desired(view)
    assert trace(d, from_vif(PLAIN, 2, "203.0.113.9")).dropped
    dns = {**from_vif(PLAIN, 2, "10.10.0.53", proto=17), "udp_src": 5353, "udp_dst": 53}
    dns.pop("tcp_src"), dns.pop("tcp_dst")
    assert trace(d, dns).outputs == [(TRUNK, 100)]


def test_a_provider_rule_beats_a_tenant_allow():
    view = dataclasses.replace(VIEW, provider_rules=(ProviderRuleView(1, "192.0.2.0/28", 6, 22, 22),))
    d = desired(view)
    assert trace(d, tcp_in("192.0.2.7", WEB_VIF, 22)).dropped
    assert trace(d, tcp_in("192.0.2.77", WEB_VIF, 22)).outputs == [(1, None)]


def test_dhcp_and_router_advertisements_always_pass_and_unfiltered_vifs_see_no_acl():
    d = desired()
    offer = {**tcp_in("10.10.0.1", PLAIN, 0), "ip_proto": 17, "udp_src": 67, "udp_dst": 68}
    assert trace(d, offer).outputs == [(2, None)] and not trace(d, offer).cts
    assert trace(d, tcp_in("203.0.113.9", OPEN, 5000)).outputs == [(3, None)]
    assert not [f for f in d.flows if f.feature == Feature.SECURITY_GROUPS
                and dict(f.match).get("reg7") == 3]


def test_a_stateless_group_uses_no_conntrack_and_needs_rules_for_replies():
    stateless = SecurityGroupView(3, "udp", "alpha", stateful=False, rules=(
        RuleView(8, "ingress", "IPv4", 17, 5000, 5000), RuleView(9, "egress", "IPv4", 17)))
    vif = dataclasses.replace(PLAIN, security_groups=(3,))
    view = dataclasses.replace(VIEW, vifs=(WEB_VIF, vif, OPEN, FAR), security_groups={
        1: DEFAULT, 2: WEB, 3: stateless}, allow_same_net_traffic=False)
    d = desired(view)
    udp = {**tcp_in("203.0.113.9", vif, 0, ct=0), "ip_proto": 17, "udp_src": 7, "udp_dst": 5000}
    ok = trace(d, udp)
    assert ok.outputs == [(2, None)] and not ok.cts
    assert trace(d, {**udp, "udp_dst": 5001}).dropped
    assert trace(d, tcp_in("203.0.113.9", vif, 22, ct=0)).dropped       # no TCP rule, no state


def test_ipv6_rules_are_compiled_with_the_ipv6_fields():
    v6 = SecurityGroupView(1, "default", "alpha", rules=(
        RuleView(1, "ingress", "IPv6", 58, 128, None, remote_cidr="2001:db8::/32"),))
    d = desired(dataclasses.replace(VIEW, security_groups={1: v6, 2: WEB}))
    rules = [dict(f.match) for f in d.flows if f.table == Table.INGRESS_ACL_RULES
             and dict(f.match).get("reg7") == 2 and dict(f.match).get("eth_type") == 0x86DD]
    assert sorted(rules, key=str) == sorted([
        {"reg7": 2, "eth_type": 0x86DD, "ip_proto": 58, "icmpv6_type": 128,
         "ipv6_src": ("2001:db8::", "ffff:ffff::")},
        # allow_same_net_traffic: link-local sources are the VIF's own segment
        {"reg7": 2, "eth_type": 0x86DD, "ipv6_src": ("fe80::", "ffff:ffff:ffff:ffff::")}],
        key=str)


def test_port_ranges_become_the_fewest_masks():
    assert sg.port_masks(22, 22) == [22]
    assert sg.port_masks(1000, 1999) == [(1000, 0xFFF8), (1008, 0xFFF0), (1024, 0xFE00),
                                         (1536, 0xFF00), (1792, 0xFF80), (1920, 0xFFC0),
                                         (1984, 0xFFF0)]
    assert len(sg.port_masks(1, 65535)) == 16


def _scale(n_ports: int, n_members: int, rules_per_group: int = 10):
    """``n_ports`` VIFs here, all in group 1; group 2 has ``n_members`` members elsewhere; group
    1's rules: half from group 2 (remote group), half from CIDRs, single ports."""
    rules = tuple(RuleView(100 + i, "ingress", "IPv4", 6, 1000 + i, 1000 + i,
                           remote_group=2 if i % 2 == 0 else None,
                           remote_cidr=None if i % 2 == 0 else "192.0.2.0/24")
                  for i in range(rules_per_group))
    groups = {1: SecurityGroupView(1, "app", "p", rules=rules), 2: SecurityGroupView(2, "db", "p")}
    local = [VifView(f"{i:08x}-0000", f"fa:16:3e:00:{i >> 8:02x}:{i & 255:02x}", 1, f"i{i}",
                     f"i{i}", (f"10.10.{i >> 8}.{i & 255}",), "p", id=i + 1, security_groups=(1,))
             for i in range(n_ports)]
    members = [VifView(f"{i:08x}-1111", f"fa:16:3e:01:{i >> 8:02x}:{i & 255:02x}", 1, f"m{i}",
                       f"m{i}", (f"10.11.{i >> 8}.{i & 255}",), "p", id=100000 + i,
                       security_groups=(2,))
               for i in range(n_members)]
    view = StateView(1, {1: dataclasses.replace(NET, cidr="10.0.0.0/8")}, tuple(local + members),
                     security_groups=groups)
    ports = {v.port_name: i + 1 for i, v in enumerate(local)}
    d = compile_datapath(view, bind_ports(view, ports, frozenset()), CompileSettings())
    return [f for f in d.flows if f.feature == Feature.SECURITY_GROUPS]


@pytest.mark.parametrize("n_ports,n_members", [(10, 10), (100, 10), (100, 500), (1000, 1000)])
def test_flow_count_is_the_docstring_formula_linear_in_ports_and_members(n_ports, n_members):
    """Per VIF: 7 + 6 always-allowed and 2 x 2 conntrack entry flows, 10 rule flows, 2 same-net,
    1 group clause per direction; per rule of its group one label clause per direction; per
    group one conj_id flow per direction; 6 shared per direction; per member address one
    clause-1 flow; one conj_id flow per remote-group rule."""
    flows = _scale(n_ports, n_members)
    rules = 10
    expected = (n_ports * (7 + 6 + 2 * 2 + rules + 2 + 2)  # entry, rules, same-net, group clause
                + 2 * rules + 2 * 1 + 2 * 6               # label clauses, conj_id, shared
                + n_members + rules // 2)                 # member addresses, remote conj_ids
    assert len(flows) == expected
    # never ports x members: one more member costs exactly one flow
    assert len(_scale(n_ports, n_members + 1)) == expected + 1
    conj = [f for f in flows if f.actions and isinstance(f.actions[0], Conjunction)]
    assert conj and all(isinstance(a, Conjunction) for f in conj for a in f.actions)


def test_every_admission_commits_in_the_vifs_zone_register():
    zones = {a.zone for f in _scale(3, 2) for a in f.actions if isinstance(a, Ct)}
    assert zones == {"reg2", 10001, 10002, 10003}


def test_drops_are_sampled_to_the_controller_only_when_asked():
    from sdn.flows.model import Controller, Meter, MeterEntry
    quiet = desired()
    assert not [f for f in quiet.flows if f.table in (Table.EGRESS_ACL_DROP, Table.INGRESS_ACL_DROP)
                and f.feature == Feature.SECURITY_GROUPS]
    logged = compile_datapath(VIEW, bind_ports(VIEW, PORTS, frozenset({"trunk"})),
                              CompileSettings(acl_log_rate_pps=20))
    (meter,) = [m for m in logged.meters.values() if m.feature == Feature.SECURITY_GROUPS]
    assert meter == MeterEntry(Feature.SECURITY_GROUPS, meter.meter_id, 20)
    r = trace(logged, tcp_in("198.51.100.7", WEB_VIF, 22))
    assert r.dropped is False and r.to_controller and not r.outputs
    assert r.path[-1].table == Table.INGRESS_ACL_DROP
    assert r.path[-1].actions == (Meter(meter.meter_id), Controller(sg.LOG_BYTES))


def test_the_drop_log_line_names_the_packet_and_never_raises():
    import random

    from sdn.apps.acl_log import AclLog, describe
    from scapy.all import ICMP, IP, TCP, Ether
    frame = bytes(Ether() / IP(src="10.0.0.5", dst="10.0.0.6") / TCP(sport=40000, dport=22))
    assert describe(frame) == "tcp 10.0.0.5:40000 -> 10.0.0.6:22"
    ping = bytes(Ether() / IP(src="10.0.0.5", dst="10.0.0.6") / ICMP(type=8))
    assert describe(ping) == "icmp 10.0.0.5 -> 10.0.0.6 type 8 code 0"
    log = AclLog(lambda dp, port: "a1" if port == 1 else None)
    rnd = random.Random(5)
    for n in range(2000):
        junk = frame[:rnd.randrange(len(frame) + 1)] if n % 2 else bytes(
            rnd.randrange(256) for _ in range(rnd.randrange(80)))
        log.on_packet_in(None, rnd.choice([None, 1, 2]), junk)
