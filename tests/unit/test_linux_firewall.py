"""Security groups on the Linux backend, pure parts: rule text (iptables-save's canonical form),
order inside the per-VIF chains, chain name lengths, ipsets, and the conntrack deletions."""

from __future__ import annotations

from types import SimpleNamespace

from sdn import firewall
from sdn.linux import desired, ipset
from sdn.linux import iptables_firewall as fw
from sdn.linux.iptables import IptablesManager
from sdn.view import (FloatingView, NetworkView, ProviderRuleView, RuleView, SecurityGroupView,
                      StateView, VifView)

NET = NetworkView(id=1, label="net", cidr="10.1.0.0/24", netmask="255.255.255.0", gateway="10.1.0.1",
                  broadcast="10.1.0.255", vlan=100, project_id="p")
EGRESS_ALL = (RuleView(1, "egress", "IPv4"), RuleView(2, "egress", "IPv6"))


def vif(n: int, groups=(10,), address=None, **kw) -> VifView:
    return VifView(uuid=f"{n:02d}23456789abcdef", mac=f"fa:16:3e:00:00:{n:02x}", network_id=1,
                   instance=f"i{n}", hostname=f"i{n}", addresses=(address or f"10.1.0.{n}",),
                   project_id="p", id=n, security_groups=tuple(groups), **kw)


def group(gid: int, *rules: RuleView, stateful: bool = True) -> SecurityGroupView:
    return SecurityGroupView(gid, f"g{gid}", "p", stateful, tuple(EGRESS_ALL) + rules)


def view(vifs, groups, **kw) -> StateView:
    return StateView(revision=1, networks={1: NET}, vifs=tuple(vifs),
                     security_groups={g.id: g for g in groups}, **kw)


def conf(**kw):
    base = dict(fixed_range="10.0.0.0/8", routing_source_ip="192.0.2.1", metadata_host="192.0.2.9",
                metadata_port=8775, dmz_cidr=[], flat_network_bridge=None, flat_interface=None,
                vlan_interface=None, public_interface="pub0", use_ipv6=False, forward_bridge_interface=[],
                iptables_binary_name="sdn-agent")
    base.update(kw)
    return SimpleNamespace(**base)


def plan(v: StateView, present=None, **conf_kw) -> desired.HostPlan:
    present = {x.port_name for x in v.vifs} if present is None else present
    return desired.plan(v, {}, conf(**conf_kw), present_ports=present, dhcp=True, vlan_mode=True)


def chain(p: desired.HostPlan, family: str, name: str, table: str = "filter") -> list[str]:
    return [r.rule for r in p.rules if (r.family, r.table, r.chain) == (family, table, name)]


V1 = vif(5)
IN, OUT = fw.inbound_chain(V1.port_name), fw.outbound_chain(V1.port_name)


# -- rule text per kind -------------------------------------------------------------------

def test_rule_text_of_each_kind():
    def text(rule, family="ipv4", set_name=None):
        return fw.tenant_rule(rule, family, set_name)
    assert text(RuleView(1, "ingress", "IPv4", 6, 22, 22, "10.0.0.0/8")) == \
        "-s 10.0.0.0/8 -p tcp -m tcp --dport 22 -j RETURN"
    assert text(RuleView(1, "ingress", "IPv4", 17, 1000, 2000, "10.9.8.7/8")) == \
        "-s 10.0.0.0/8 -p udp -m udp --dport 1000:2000 -j RETURN"          # canonical network
    assert text(RuleView(1, "ingress", "IPv4", 1, 8, None, "192.0.2.7/32")) == \
        "-s 192.0.2.7/32 -p icmp -m icmp --icmp-type 8 -j RETURN"
    assert text(RuleView(1, "ingress", "IPv4", 1, 3, 4)) == "-p icmp -m icmp --icmp-type 3/4 -j RETURN"
    assert text(RuleView(1, "ingress", "IPv4", 1)) == "-p icmp -j RETURN"
    assert text(RuleView(1, "ingress", "IPv4")) == "-j RETURN"                # any, everyone
    assert text(RuleView(1, "egress", "IPv4", 6, 80, 80, "203.0.113.0/24")) == \
        "-d 203.0.113.0/24 -p tcp -m tcp --dport 80 -j RETURN"
    assert text(RuleView(1, "ingress", "IPv4", 132, 5, 6)) == "-p sctp -m sctp --dport 5:6 -j RETURN"
    assert text(RuleView(1, "ingress", "IPv4", 6, 22, 22, remote_group=3), set_name="sdn-agent-sg3-v4") == \
        "-p tcp -m tcp --dport 22 -m set --match-set sdn-agent-sg3-v4 src -j RETURN"
    assert text(RuleView(1, "egress", "IPv4", remote_group=3), set_name="S") == \
        "-m set --match-set S dst -j RETURN"
    assert text(RuleView(1, "ingress", "IPv6", 58, 128, 0, "fd00::/64"), "ipv6") == \
        "-s fd00::/64 -p ipv6-icmp -m icmp6 --icmpv6-type 128/0 -j RETURN"
    assert text(RuleView(1, "ingress", "IPv6", 6, None, None, "::/0"), "ipv6") == "-p tcp -j RETURN"


def test_provider_rules_drop_in_their_family_chain():
    v = view([V1], [group(10)], provider_rules=(ProviderRuleView(1, "198.51.100.0/24", 6, 25, 25),
                                                ProviderRuleView(2, "2001:db8::/32"),
                                                ProviderRuleView(3, "not-a-cidr")))
    p = plan(v)
    assert chain(p, "ipv4", "provider") == ["-s 198.51.100.0/24 -p tcp -m tcp --dport 25 -j DROP"]
    assert chain(p, "ipv6", "provider") == ["-s 2001:db8::/32 -j DROP"]


# -- chains and their order ---------------------------------------------------------------

def test_inbound_and_outbound_chain_order_stateful():
    v = view([V1], [group(10, RuleView(7, "ingress", "IPv4", 6, 22, 22, "10.0.0.0/8"),
                          RuleView(8, "ingress", "IPv6", 6, 22, 22))])
    p = plan(v)
    assert chain(p, "ipv4", IN) == [
        "-p udp -m udp --sport 67 --dport 68 -j RETURN",
        "-m state --state INVALID -j DROP",
        "-m state --state RELATED,ESTABLISHED -j RETURN",
        "-p tcp -m tcp ! --tcp-flags FIN,SYN,RST,ACK SYN -m state --state NEW -j DROP",
        "-j $provider",
        "-s 10.1.0.0/24 -j RETURN",                     # allow_same_net_traffic
        "-s 10.0.0.0/8 -p tcp -m tcp --dport 22 -j RETURN",
        "-j $sg-fallback"]
    assert chain(p, "ipv4", OUT) == [
        "-p udp -m udp --sport 68 --dport 67 -j RETURN",
        "-m state --state INVALID -j DROP",
        "-m state --state RELATED,ESTABLISHED -j RETURN",
        "-p tcp -m tcp ! --tcp-flags FIN,SYN,RST,ACK SYN -m state --state NEW -j DROP",
        "-j RETURN",                                    # the group's egress IPv4 allow-all
        "-j $sg-fallback"]
    # IPv6: ND/MLD/DHCPv6 always, same-net is the link-local prefix (the network is IPv4),
    # only IPv6 rules
    v6_in = chain(p, "ipv6", IN)
    assert v6_in[:5] == [f"-p ipv6-icmp -m icmp6 --icmpv6-type {t} -j RETURN" for t in (134, 135, 136, 130)] + \
        ["-p udp -m udp --sport 547 --dport 546 -j RETURN"]
    assert v6_in[5:] == ["-m state --state INVALID -j DROP", "-m state --state RELATED,ESTABLISHED -j RETURN",
                         "-p tcp -m tcp ! --tcp-flags FIN,SYN,RST,ACK SYN -m state --state NEW -j DROP",
                         "-j $provider", "-s fe80::/64 -j RETURN", "-p tcp -m tcp --dport 22 -j RETURN",
                         "-j $sg-fallback"]
    assert "--icmpv6-type 133" in chain(p, "ipv6", OUT)[0]
    assert chain(p, "ipv4", "sg-fallback") == ["-j DROP"]


def test_same_net_off_and_stateless_have_no_same_net_and_no_state_rules():
    v = view([V1], [group(10, RuleView(7, "ingress", "IPv4", 6, 22, 22), stateful=False)],
             allow_same_net_traffic=False)
    p = plan(v)
    assert chain(p, "ipv4", IN) == ["-p udp -m udp --sport 67 --dport 68 -j RETURN", "-j $provider",
                                    "-p tcp -m tcp --dport 22 -j RETURN", "-j $sg-fallback"]
    assert not [r for r in p.rules if r.table == "filter" and "state" in r.rule]
    assert "-s fe80::/64 -j RETURN" not in chain(p, "ipv6", IN)


def test_jumps_come_before_the_bridge_accept_and_only_for_filtered_present_vifs():
    off = vif(6, port_security=False)
    absent = vif(7)
    v = view([V1, off, absent], [group(10)])
    p = plan(v, present={V1.port_name, off.port_name})
    fwd = chain(p, "ipv4", "FORWARD")
    assert fwd[0] == "-j $sg-chain" and fwd.index("-i br100 -o br100 -j ACCEPT") > 0
    assert chain(p, "ipv4", "INPUT")[0] == "-j $sg-chain"
    assert chain(p, "ipv4", "sg-chain") == [
        f"-m physdev --physdev-out {V1.port_name} --physdev-is-bridged -j ${IN}",
        f"-d 10.1.0.5/32 -o br100 -m physdev ! --physdev-is-bridged -j ${IN}",     # routed to it
        f"-m physdev --physdev-in {V1.port_name} -j ${OUT}"]
    assert set(p.firewall.vifs) == {V1.port_name}
    # no filtered VIF here: no firewall rule at all
    bare = plan(view([off], [group(10)]), present={off.port_name})
    assert not [r for r in bare.rules if "sg-chain" in r.rule or r.table == "raw"]


def test_chain_names_fit_iptables_limit_with_the_longest_binary_name():
    binary = "b" * 16
    p = plan(view([V1], [group(10)]), iptables_binary_name=binary)
    mgr = IptablesManager(binary, use_ipv6=True, runner=None)
    desired.fill_manager(mgr, p)
    for tables in (mgr.ipv4, mgr.ipv6):
        for t in tables.values():
            assert all(len(c) <= 28 for c in t.owned_chains()), t.owned_chains()
    assert fw.inbound_chain("tap0123456789a") == "i0123456789"
    assert fw.ipset_name(binary, 123456, "IPv6") == binary + "-sg123456-v6"


def test_zones_are_directional_per_vif_and_dhcp_untracked():
    v = view([V1], [group(10)], floating_ips=(FloatingView("203.0.113.9", "10.1.0.5", 1),))
    p = plan(v)
    zone = firewall.acl_zone(V1)
    pre = chain(p, "ipv4", "PREROUTING", "raw")
    assert pre == ["-p udp -m udp --sport 68 --dport 67 -j CT --notrack",
                   "-p udp -m udp --sport 67 --dport 68 -j CT --notrack",
                   f"-m physdev --physdev-in {V1.port_name} -j CT --zone-orig {zone}",
                   f"-d 10.1.0.5/32 -j CT --zone-orig {zone}",
                   f"-d 203.0.113.9/32 -j CT --zone-orig {zone}"]
    assert f"-d 10.1.0.5/32 -j CT --zone-orig {zone}" in chain(p, "ipv4", "OUTPUT", "raw")


# -- remote groups: ipsets ----------------------------------------------------------------

def test_remote_group_rule_matches_an_ipset_of_the_members():
    web = group(10, RuleView(7, "ingress", "IPv4", 6, 22, 22, remote_group=20))
    clients = group(20)
    a, b = vif(5, groups=(10,)), vif(6, groups=(20,), allowed_address_pairs=(("fa:16:3e:00:00:99", "10.1.0.64/28"),))
    p = plan(view([a, b], [web, clients]), present={a.port_name})
    name = "sdn-agent-sg20-v4"
    assert p.firewall.ipsets == {name: fw.IpSet(name, "inet", ("10.1.0.6", "10.1.0.64/28"))}
    assert f"-p tcp -m tcp --dport 22 -m set --match-set {name} src -j RETURN" in chain(p, "ipv4", IN)
    # a new member changes the set only, not one rule
    c = vif(7, groups=(20,))
    p2 = plan(view([a, b, c], [web, clients]), present={a.port_name})
    assert p2.rules == p.rules and p2.firewall.ipsets[name].members == ("10.1.0.6", "10.1.0.7", "10.1.0.64/28")


def test_ipset_save_parse_update_and_stale():
    saved = ("create sdn-agent-sg20-v4 hash:net family inet hashsize 1024 maxelem 65536 bucketsize 12\n"
             "add sdn-agent-sg20-v4 10.1.0.6\nadd sdn-agent-sg20-v4 10.1.0.9\n"
             "create sdn-agent-sg21-v4 hash:net family inet hashsize 1024 maxelem 65536\n"
             "create other hash:ip family inet hashsize 1024 maxelem 65536\n")
    current = ipset.parse_save(saved)
    assert current["sdn-agent-sg20-v4"] == ("inet", {"10.1.0.6", "10.1.0.9"})
    want = {"sdn-agent-sg20-v4": fw.IpSet("sdn-agent-sg20-v4", "inet", ("10.1.0.6", "10.1.0.7")),
            "sdn-agent-sg30-v6": fw.IpSet("sdn-agent-sg30-v6", "inet6", ("fd00::5",))}
    assert ipset.update_script(current, want).splitlines() == [
        "add sdn-agent-sg20-v4 10.1.0.7", "del sdn-agent-sg20-v4 10.1.0.9",
        "create sdn-agent-sg30-v6 hash:net family inet6", "add sdn-agent-sg30-v6 fd00::5"]
    assert ipset.stale_sets(current, want, "sdn-agent-sg") == ["sdn-agent-sg21-v4"]   # not "other"
    assert ipset.update_script({**current, "sdn-agent-sg30-v6": ("inet6", {"fd00::5"})},
                               {"sdn-agent-sg20-v4": fw.IpSet("sdn-agent-sg20-v4", "inet",
                                                              ("10.1.0.6", "10.1.0.9"))}) == ""


# -- cutting connections ------------------------------------------------------------------

R22 = RuleView(7, "ingress", "IPv4", 6, 22, 22, "10.0.0.0/8")
R24 = RuleView(8, "ingress", "IPv4", 6, 2224, 2224, "10.0.0.0/8")


def cuts(old_view, new_view, present=None):
    old, new = plan(old_view, present), plan(new_view, present)
    return fw.conntrack_cuts(old.firewall.vifs, new.firewall.vifs, set(new.ports),
                             old.floating_map, new.floating_map)


def argvs(cs):
    return [" ".join(c.argv()) for c in cs]


def test_deleted_ingress_rule_cuts_exactly_its_connections():
    before = view([V1], [group(10, R22, R24)], allow_same_net_traffic=False)
    after = view([V1], [group(10, R24)], allow_same_net_traffic=False)
    assert argvs(cuts(before, after)) == [
        "conntrack -D -f ipv4 --reply-src 10.1.0.5 -s 10.0.0.0/8 -p tcp --dport 22"]
    assert cuts(before, before) == []
    # the first plan of an agent cuts nothing
    assert fw.conntrack_cuts(None, plan(after).firewall.vifs, {V1.port_name}) == []


def test_egress_and_group_removal_and_coverage():
    egress = RuleView(9, "egress", "IPv4", 17, 53, 53, "192.0.2.53/32")
    narrow = SecurityGroupView(10, "g", "p", True, (egress,))
    before = view([V1], [narrow], allow_same_net_traffic=False)
    after = view([V1], [SecurityGroupView(10, "g", "p", True, ())], allow_same_net_traffic=False)
    zone = firewall.acl_zone(V1)
    assert argvs(cuts(before, after)) == [
        f"conntrack -D -f ipv4 --orig-zone {zone} -s 10.1.0.5 -d 192.0.2.53 -p udp --dport 53"]
    # removed from a group whose rule another group still covers (egress allow-all): nothing
    both = view([vif(5, groups=(10, 11))], [group(10), SecurityGroupView(11, "h", "p", True, (egress,))])
    only_default = view([vif(5, groups=(10,))], [group(10), SecurityGroupView(11, "h", "p", True, (egress,))])
    assert cuts(both, only_default) == []
    # same-network admission switched off: the network's connections to the VIF
    assert argvs(cuts(view([V1], [group(10)]), view([V1], [group(10)], allow_same_net_traffic=False))) == [
        "conntrack -D -f ipv4 --reply-src 10.1.0.5 -s 10.1.0.0/24"]


def test_wide_port_range_cuts_the_protocol_and_icmp_any_type():
    wide = RuleView(7, "ingress", "IPv4", 6, 1000, 2000)
    icmp = RuleView(8, "ingress", "IPv4", 1, 8, 0)
    before = view([V1], [group(10, wide, icmp)], allow_same_net_traffic=False)
    after = view([V1], [group(10)], allow_same_net_traffic=False)
    assert sorted(argvs(cuts(before, after))) == [
        "conntrack -D -f ipv4 --reply-src 10.1.0.5 -p icmp",
        "conntrack -D -f ipv4 --reply-src 10.1.0.5 -p tcp"]
    short = RuleView(7, "ingress", "IPv4", 6, 80, 81)
    assert argvs(cuts(view([V1], [group(10, short)], allow_same_net_traffic=False), after)) == [
        "conntrack -D -f ipv4 --reply-src 10.1.0.5 -p tcp --dport 80",
        "conntrack -D -f ipv4 --reply-src 10.1.0.5 -p tcp --dport 81"]


def test_remote_group_member_removed_cuts_that_member_only():
    web = group(10, RuleView(7, "ingress", "IPv4", 6, 22, 22, remote_group=20))
    a, b, c = vif(5, groups=(10,)), vif(6, groups=(20,)), vif(7, groups=(20,))
    before = view([a, b, c], [web, group(20)], allow_same_net_traffic=False)
    after = view([a, b, vif(7, groups=())], [web, group(20)], allow_same_net_traffic=False)
    assert argvs(cuts(before, after, present={a.port_name})) == [
        "conntrack -D -f ipv4 --reply-src 10.1.0.5 -s 10.1.0.7 -p tcp --dport 22"]


def test_stateless_vif_cuts_nothing_and_a_gone_vif_cuts_its_zone():
    before = view([V1], [group(10, R22, stateful=False)])
    after = view([V1], [group(10, stateful=False)])
    assert cuts(before, after) == []
    zone = firewall.acl_zone(V1)
    gone = fw.conntrack_cuts(plan(before).firewall.vifs, {}, set())
    assert argvs(gone) == [f"conntrack -D -f ipv4 --orig-zone {zone}", f"conntrack -D -f ipv6 --orig-zone {zone}",
                           "conntrack -D -f ipv4 --reply-src 10.1.0.5"]
    # port security turned off (the VIF is still here): nothing is cut
    assert fw.conntrack_cuts(plan(before).firewall.vifs, {}, {V1.port_name}) == []


def test_floating_ip_disassociated_forgets_its_connections():
    fip = FloatingView("203.0.113.9", "10.1.0.5", 1)
    before = view([V1], [group(10)], floating_ips=(fip,))
    after = view([V1], [group(10)])
    assert argvs(cuts(before, after)) == ["conntrack -D -f ipv4 --orig-dst 203.0.113.9",
                                          "conntrack -D -f ipv4 --reply-dst 203.0.113.9"]


def test_admission_coverage():
    a = fw.Admission("ingress", "IPv4", 6, 22, 22, "10.1.0.7/32")
    assert fw.Admission("ingress", "IPv4", None, None, None, "10.0.0.0/8").covers(a)
    assert fw.Admission("ingress", "IPv4", 6, 20, 30, "0.0.0.0/0").covers(a)
    assert not fw.Admission("ingress", "IPv4", 6, 23, 30, "0.0.0.0/0").covers(a)
    assert not fw.Admission("ingress", "IPv4", 17, None, None, "0.0.0.0/0").covers(a)
    assert not fw.Admission("egress", "IPv4", None, None, None, "0.0.0.0/0").covers(a)
    assert not fw.Admission("ingress", "IPv6", None, None, None, "::/0").covers(a)
    assert fw.Admission("ingress", "IPv4", 1, 8, None, "0.0.0.0/0").covers(
        fw.Admission("ingress", "IPv4", 1, 8, 0, "0.0.0.0/0"))
