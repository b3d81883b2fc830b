"""IPv6 on the Linux backend, without privileges: the rendered ebtables/ip6tables rules, the
host plan's IPv6 router, and the RA/DHCPv6 server on fake sockets (Scapy builds the guests'
frames and reads the answers).

The neighbour advertisement guard is an xt_u32 expression; :func:`u32_matches` evaluates the
rendered text on Scapy-built packets (the subset sdn renders: ``LOC[>>N][&MASK]=VALUE`` joined
by ``&&``), so a wrong offset or mask fails here, not only in the kernel.
"""

from __future__ import annotations

import dataclasses
import re
import socket
from types import SimpleNamespace

import pytest
from scapy.layers.dhcp6 import (
    DHCP6_InfoRequest,
    DHCP6_Reply,
    DHCP6OptClientId,
    DHCP6OptDNSServers,
    DHCP6OptElapsedTime,
    DUID_LLT,
)
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import Ether

from sdn.ipv6 import link_local, to_global
from sdn.linux import desired, iptables_firewall, ipv6_router
from sdn.linux.ipv6_router import Ipv6RouterServer
from sdn.view import NetworkView, StateView, VifView
from tests.unit.views import open_view
from tests.unit.test_dhcp_agent_supervision import crash_serving_thread

MAC = "fa:16:3e:00:00:05"
PAIR_MAC = "fa:16:3e:77:77:77"
PREFIX = "fd00:0:0:1::/64"
ADDRESS = to_global(PREFIX, MAC, "p")
NET = NetworkView(id=1, label="net", cidr="10.1.0.0/24", netmask="255.255.255.0",
                  gateway="10.1.0.1", broadcast="10.1.0.255", vlan=100, project_id="p",
                  cidr_v6=PREFIX, gateway_v6="fd00:0:0:1::1", ipv6_ra_mode="slaac",
                  ipv6_address_mode="slaac", dns_v6=("fd00::53",), ra_interval=10)
NET_V4 = dataclasses.replace(NET, id=2, vlan=101, cidr="10.2.0.0/24", gateway="10.2.0.1",
                             broadcast="10.2.0.255", cidr_v6=None, gateway_v6=None,
                             ipv6_ra_mode=None, ipv6_address_mode=None, dns_v6=())
VIF = VifView(uuid="0123456789abcdef", mac=MAC, network_id=1, instance="i1", hostname="i1",
              addresses=("10.1.0.5",), project_id="p", addresses_v6=(ADDRESS,),
              allowed_address_pairs=((PAIR_MAC, "10.1.0.40"), (PAIR_MAC, "fd00:0:0:1:8000::/80")))
VIF_V4 = VifView(uuid="89abcdef01234567", mac="fa:16:3e:00:00:06", network_id=2, instance="i2",
                 hostname="i2", addresses=("10.2.0.6",), project_id="p")


def conf(**kw):
    base = dict(fixed_range="10.0.0.0/8", routing_source_ip="192.0.2.1", metadata_host="192.0.2.9",
                metadata_port=8775, dmz_cidr=[], flat_network_bridge=None, flat_interface=None,
                vlan_interface=None, public_interface="pub0", use_ipv6=False,
                forward_bridge_interface=[], public_ip_v6="2001:db8:ff::2/64",
                external_gateway_v6="2001:db8:ff::1", external_gateway_v6_mac=None)
    base.update(kw)
    return SimpleNamespace(**base)


def host_plan(vifs=(VIF, VIF_V4), dhcp=True, **kw):
    view = open_view(1, {1: NET, 2: NET_V4}, vifs)
    return desired.plan(view, {}, conf(**kw), present_ports={v.port_name for v in vifs},
                        dhcp=dhcp, vlan_mode=True)


def rules_of(plan, family, table, chain):
    return [r.rule for r in plan.rules if (r.family, r.table, r.chain) == (family, table, chain)]


# ------------------------------------------------------------------------------ ebtables


def test_antispoof_ipv6_sources_are_the_derived_link_local_and_allowed_pairs():
    rules = desired.antispoof_rules(VIF, "I-x")
    drops = rules[1:4]
    assert drops == ["-p IPv6 --ip6-proto ipv6-icmp --ip6-icmp-type router-advertisement -j DROP",
                     "-p IPv6 --ip6-proto ipv6-icmp --ip6-icmp-type redirect -j DROP",
                     "-p IPv6 --ip6-proto udp --ip6-sport 547 -j DROP"]
    # the drops come before any RETURN: a legitimate source address does not excuse them
    assert not [r for r in rules[:4] if r.endswith("RETURN")]
    assert f"-p IPv6 -s {MAC} --ip6-src {ADDRESS} -j RETURN" in rules
    assert f"-p IPv6 -s {MAC} --ip6-src {link_local(MAC)} -j RETURN" in rules
    assert f"-p IPv6 -s {PAIR_MAC} --ip6-src fd00:0:0:1:8000::/80 -j RETURN" in rules
    assert f"-p IPv6 -s {PAIR_MAC} --ip6-src {link_local(PAIR_MAC)} -j RETURN" in rules
    # the global address belongs to the VIF's own MAC only
    assert f"-p IPv6 -s {PAIR_MAC} --ip6-src {ADDRESS} -j RETURN" not in rules
    # no blanket "any IPv6 from my MAC" any more; :: only for DAD, MLD reports and RS
    assert not [r for r in rules if r.startswith("-p IPv6 -s") and "--ip6-src" not in r]
    unspecified = [r for r in rules if "--ip6-src :: " in r]
    assert unspecified == [f"-p IPv6 -s {m} --ip6-src :: --ip6-proto ipv6-icmp --ip6-icmp-type {t} -j RETURN"
                           for m in (MAC, PAIR_MAC) for t in desired.UNSPECIFIED_SOURCE_ICMP6]
    assert rules[-1] == "-j DROP"


def test_antispoof_without_ipv6_prefix_keeps_link_local_only():
    rules = desired.antispoof_rules(VIF_V4, "I-y")
    v6_returns = [r for r in rules if r.startswith("-p IPv6") and r.endswith("RETURN")]
    assert v6_returns[0] == f"-p IPv6 -s {VIF_V4.mac} --ip6-src {link_local(VIF_V4.mac)} -j RETURN"
    assert all("--ip6-src :: " in r for r in v6_returns[1:])


# ------------------------------------------------------------------------------ NA guard


def u32_matches(expression: str, packet: bytes) -> bool:
    """Evaluate the subset of xt_u32 sdn renders on ``packet`` (from the IPv6 header on)."""
    for test in expression.split("&&"):
        found = re.fullmatch(r"(0x[0-9a-f]+)(?:>>(0x[0-9a-f]+))?(?:&(0x[0-9a-f]+))?=(0x[0-9a-f]+)",
                             test)
        assert found, f"not a test sdn renders: {test!r}"
        loc, shift, mask, value = (int(g, 16) if g else None for g in found.groups())
        if loc + 4 > len(packet):
            return False
        word = int.from_bytes(packet[loc:loc + 4], "big") >> (shift or 0)
        if word & (0xFFFFFFFF if mask is None else mask) != value:
            return False
    return True


def na(target, src=None, ext=False) -> bytes:
    """A neighbour advertisement (IPv6 header onward) as a guest's kernel sends it."""
    ip = IPv6(src=src or link_local(MAC), dst="ff02::1", hlim=255)
    if ext:
        ip = ip / IPv6ExtHdrHopByHop()
    return bytes(ip / ICMPv6ND_NA(tgt=target, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=MAC))


def admitted(rules, packet) -> bool:
    for rule in rules:
        if rule == "-j DROP":
            return False
        expression = re.search(r'--u32 "([^"]+)"', rule).group(1)
        if u32_matches(expression, packet):
            return True
    raise AssertionError("the NA chain does not end in DROP")


@pytest.mark.parametrize("target", [link_local(MAC), ADDRESS, link_local(PAIR_MAC),
                                    "fd00:0:0:1:8000::1", "fd00:0:0:1:8000:ffff:ffff:ffff"])
def test_na_guard_admits_own_targets(target):
    assert admitted(desired.na_guard_rules(VIF), na(target))


@pytest.mark.parametrize("target", ["fd00:0:0:1::1",                 # the gateway
                                    to_global(PREFIX, "fa:16:3e:00:00:09", "p"),  # a neighbour
                                    "fd00:0:0:1:8001::",             # just outside the /80 pair
                                    link_local("fa:16:3e:00:00:09"), "fd00:0:0:2::5"])
def test_na_guard_drops_other_targets(target):
    assert not admitted(desired.na_guard_rules(VIF), na(target))


def test_na_guard_drops_an_own_target_behind_an_extension_header():
    """The target's offset is only known without extension headers: such an NA is dropped
    (positive control: the same NA without the header passes)."""
    assert admitted(desired.na_guard_rules(VIF), na(ADDRESS))
    assert not admitted(desired.na_guard_rules(VIF), na(ADDRESS, ext=True))


def test_na_guard_chain_and_jump_in_the_plan():
    plan = host_plan()
    chain = desired.na_chain(VIF.port_name)
    assert chain == "n0123456789" and len(chain) <= 11
    assert ("ipv6", "raw", chain) in plan.chains
    assert (f"-p ipv6-icmp -m physdev --physdev-in {VIF.port_name} -m icmp6 --icmpv6-type 136 "
            f"-j ${chain}") in rules_of(plan, "ipv6", "raw", "PREROUTING")
    assert rules_of(plan, "ipv6", "raw", chain) == desired.na_guard_rules(VIF)
    # port security off: no guard, no anti-spoof chain
    off = host_plan(vifs=(dataclasses.replace(VIF, port_security=False),))
    assert not [c for c in off.chains if c[2] == chain]


# ------------------------------------------------------------------------------ plan


def test_bridges_get_the_gateway_addresses_and_ipv6_forward_rules():
    plan = host_plan()
    br = {b.name: b for b in plan.bridges}
    assert br["br100"].gateway_v6 == ("fd00:0:0:1::1/64", f"{NET.gateway_lla}/64")
    assert br["br101"].gateway_v6 == ()
    # ip6tables FORWARD: the /64's bridge to/from the public side and within, else dropped
    # (no forwarding between projects' /64s), even with use_ipv6 off in this process's config
    fwd = rules_of(plan, "ipv6", "filter", "FORWARD")
    assert fwd[fwd.index("-i br100 -o pub0 -j ACCEPT"):] == [
        "-i br100 -o pub0 -j ACCEPT", "-i pub0 -o br100 -j ACCEPT", "-i br100 -o br100 -j ACCEPT",
        "-i br100 -j DROP", "-o br100 -j DROP"]
    assert "-i br101 -j DROP" not in fwd
    assert not rules_of(plan, "ipv6", "nat", "POSTROUTING"), "no NAT66"
    # FlatManager (no network host): no gateway, no router
    flat = host_plan(dhcp=False)
    assert all(b.gateway_v6 == () for b in flat.bridges) and flat.ipv6 is None


def test_ipv6_router_serves_present_ports_of_networks_with_a_prefix():
    plan = host_plan()
    v6 = plan.ipv6
    assert (v6.public_interface, v6.public_ip, v6.gateway, v6.gateway_mac) == (
        "pub0", "2001:db8:ff::2/64", "2001:db8:ff::1", None)
    assert list(v6.ports) == [VIF.port_name]
    assert v6.ports[VIF.port_name].network == NET and v6.ports[VIF.port_name].vif.uuid == VIF.uuid
    assert host_plan(vifs=(VIF_V4,)).ipv6.ports == {}
    view = open_view(1, {2: NET_V4}, (VIF_V4,))
    assert desired.plan(view, {}, conf(), present_ports={VIF_V4.port_name}, dhcp=True,
                        vlan_mode=True).ipv6 is None


def test_security_groups_see_the_derived_address():
    """Routed IPv6 to the VIF meets its inbound chain; its zone covers the address."""
    plan = host_plan()
    addr = f"{ADDRESS}/128"
    ichain = iptables_firewall.inbound_chain(VIF.port_name)
    assert f"-d {addr} -o br100 -m physdev ! --physdev-is-bridged -j ${ichain}" in rules_of(
        plan, "ipv6", "filter", "sg-chain")
    assert f"-d {addr} -j CT --zone-orig {plan.firewall.vifs[VIF.port_name].zone}" in rules_of(
        plan, "ipv6", "raw", "PREROUTING")
    assert addr in plan.firewall.vifs[VIF.port_name].addresses


# ------------------------------------------------------------------------------ RA/DHCPv6 server


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class FakeTap:
    """One end of a socketpair standing for a tap's packet socket: what the guest sends is
    ``deliver``ed, what the server sends is in ``sent``; ``outgoing`` marks a frame this host
    sent (PACKET_OUTGOING), which the server must skip."""

    def __init__(self):
        self.mine, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.mine.setblocking(False)
        self.sent: list[bytes] = []
        self.kinds: list[int] = []
        self.closed = False

    def fileno(self):
        return self.mine.fileno()

    def deliver(self, frame: bytes, outgoing=False):
        self.kinds.append(ipv6_router.PACKET_OUTGOING if outgoing else 0)
        self.peer.send(frame)

    def recvfrom(self, size):
        data = self.mine.recv(size)
        return data, ("tap", 0x86DD, self.kinds.pop(0), 1, b"")

    def send(self, frame):
        self.sent.append(bytes(frame))
        return len(frame)

    def close(self):
        self.closed = True
        self.mine.close()
        self.peer.close()


def server(net=NET, vif=VIF):
    tap, clock = FakeTap(), FakeClock()
    port = desired.Ipv6Port(net, vif)
    srv = Ipv6RouterServer({vif.port_name: port}, sockets={vif.port_name: tap}, clock=clock)
    return srv, tap, clock


def rs_frame(src=None):
    return bytes(Ether(src=MAC, dst="33:33:00:00:00:02")
                 / IPv6(src=src or link_local(MAC), dst="ff02::2", hlim=255)
                 / ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=MAC))


def test_router_advertisement_when_the_port_appears_and_every_interval():
    srv, tap, clock = server()
    srv.serve_once(timeout=0)
    assert len(tap.sent) == 1
    ra_pkt = Ether(tap.sent[0])
    assert ra_pkt[Ether].src == NET.gateway_mac and ra_pkt[IPv6].src == NET.gateway_lla
    assert ra_pkt[IPv6].dst == "ff02::1" and ra_pkt.haslayer(ICMPv6ND_RA)
    assert ra_pkt[ICMPv6NDOptPrefixInfo].prefix == "fd00:0:0:1::" and ra_pkt[ICMPv6NDOptPrefixInfo].A
    clock.now += NET.ra_interval - 0.5
    srv.serve_once(timeout=0)
    assert len(tap.sent) == 1, "an RA before ra_interval passed"
    clock.now += 0.5
    srv.serve_once(timeout=0)
    assert len(tap.sent) == 2 and srv.advertised == 2


def test_router_solicitation_is_answered_unicast_and_outgoing_frames_are_not():
    srv, tap, clock = server()
    srv.serve_once(timeout=0)
    tap.sent.clear()
    tap.deliver(rs_frame(), outgoing=True)     # another guest's RS flooded out of this tap
    srv.serve_once(timeout=0.2)
    assert tap.sent == []
    tap.deliver(rs_frame())
    srv.serve_once(timeout=0.2)
    assert len(tap.sent) == 1
    answer = Ether(tap.sent[0])
    assert answer[Ether].dst == MAC and answer[IPv6].dst == link_local(MAC)
    assert answer.haslayer(ICMPv6ND_RA) and srv.answered == 1


def test_dhcpv6_information_request_on_a_stateless_network():
    stateless = dataclasses.replace(NET, ipv6_ra_mode="dhcpv6-stateless",
                                    ipv6_address_mode="dhcpv6-stateless")
    srv, tap, clock = server(net=stateless)
    srv.serve_once(timeout=0)
    tap.sent.clear()
    tap.deliver(bytes(Ether(src=MAC, dst="33:33:00:01:00:02")
                      / IPv6(src=link_local(MAC), dst="ff02::1:2") / UDP(sport=546, dport=547)
                      / DHCP6_InfoRequest(trid=7) / DHCP6OptElapsedTime()
                      / DHCP6OptClientId(duid=DUID_LLT(lladdr=MAC, timeval=1))))
    srv.serve_once(timeout=0.2)
    reply = Ether(tap.sent[0])
    assert reply.haslayer(DHCP6_Reply) and reply[DHCP6_Reply].trid == 7
    assert reply[DHCP6OptDNSServers].dnsservers == ["fd00::53"]
    assert (reply[Ether].dst, reply[IPv6].dst, reply[UDP].dport) == (MAC, link_local(MAC), 546)


def test_answers_are_rate_limited_per_port():
    srv, tap, clock = server()
    srv.serve_once(timeout=0)
    tap.sent.clear()
    for _ in range(int(ipv6_router.ANSWER_BURST) + 5):
        tap.deliver(rs_frame())
    while srv.serve_once(timeout=0.05):
        pass
    assert len(tap.sent) == ipv6_router.ANSWER_BURST and srv.limited == 5
    clock.now += 1.0                               # the bucket refills
    tap.deliver(rs_frame())
    srv.serve_once(timeout=0.2)
    assert len(tap.sent) == ipv6_router.ANSWER_BURST + 1


def test_a_port_no_longer_wanted_is_closed_and_garbage_is_ignored():
    srv, tap, clock = server()
    tap.deliver(b"\x00" * 60)
    tap.deliver(b"")
    srv.serve_once(timeout=0.2)
    assert len(tap.sent) == 1 and srv.answered == 0   # the initial RA only
    srv.set_ports({})
    srv.serve_once(timeout=0)
    assert tap.closed and srv.served == {}


def test_the_agent_starts_supervises_and_stops_the_ipv6_router():
    """The agent's poll sees a dead RA/DHCPv6 thread and the next reconcile replaces it; a host
    without /64 ports stops it. (The tap does not exist here: the server retries opening it.)"""
    from sdn.linux.agent import Agent

    agent = Agent.__new__(Agent)
    agent.ipv6_router = None
    plan = SimpleNamespace(ipv6=desired.Ipv6Router("pub0", ports={
        VIF.port_name: desired.Ipv6Port(NET, VIF)}))
    try:
        assert agent._ipv6_router(plan) == ["IPv6 router advertisements started on 1 ports"]
        first = agent.ipv6_router
        assert first.alive() and agent.ipv6_router_alive()
        assert agent._ipv6_router(plan) == []                     # healthy: ports updated only
        crash_serving_thread(first)
        assert not agent.ipv6_router_alive()                      # what the poll loop checks
        assert agent._ipv6_router(plan) == ["IPv6 router advertisements restarted on 1 ports"]
        assert agent.ipv6_router is not first and agent.ipv6_router_alive()
        assert agent._ipv6_router(SimpleNamespace(ipv6=None)) == ["IPv6 router advertisements stopped"]
        assert agent.ipv6_router is None and agent._ipv6_router(SimpleNamespace(ipv6=None)) == []
    finally:
        if agent.ipv6_router is not None:
            agent.ipv6_router.close()
