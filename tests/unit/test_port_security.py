"""Anti-spoof flows (sdn/flows/port_security.py), asserted by packet outcome through the tracer."""

import dataclasses

import pytest

from tests.unit.views import open_view
from sdn.flows.compiler import CompileSettings, bind_ports, compile_datapath
from sdn.flows.port_security import link_local
from sdn.flows.trace import trace
from sdn.view import NetworkView, StateView, VifView

NET = NetworkView(1, "alpha", "10.10.0.0/26", "255.255.255.192", "10.10.0.1", "10.10.0.63",
                  vlan=100, project_id="alpha")
ATTACKER = VifView("aaaa1111-0000", "fa:16:3e:00:00:a1", 1, "a1", "a1", ("10.10.0.4",))
VICTIM = VifView("aaaa2222-0000", "fa:16:3e:00:00:a2", 1, "a2", "a2", ("10.10.0.5",))
BCAST = "ff:ff:ff:ff:ff:ff"


def run(packet, attacker=ATTACKER):
    view = open_view(1, {1: NET}, (attacker, VICTIM))
    ports = {attacker.port_name: 1, VICTIM.port_name: 2}
    flows = compile_datapath(view, bind_ports(view, ports, frozenset()))
    return trace(flows, {"in_port": 1, **packet})


def ip(src_mac=ATTACKER.mac, src_ip="10.10.0.4", dst_mac=VICTIM.mac, dst_ip="10.10.0.5", **kw):
    return {"eth_src": src_mac, "eth_dst": dst_mac, "eth_type": 0x0800, "ipv4_src": src_ip,
            "ipv4_dst": dst_ip, "ip_proto": 1, **kw}


def arp(sha=ATTACKER.mac, spa="10.10.0.4", tpa="10.10.0.5", op=1, eth_src=None):
    return {"eth_src": eth_src or sha, "eth_dst": BCAST, "eth_type": 0x0806, "arp_op": op,
            "arp_sha": sha, "arp_spa": spa, "arp_tpa": tpa}


def icmp6(icmp_type, src, dst="ff02::1", eth_dst="33:33:00:00:00:01", **kw):
    return {"eth_src": ATTACKER.mac, "eth_dst": eth_dst, "eth_type": 0x86DD, "ipv6_src": src,
            "ipv6_dst": dst, "ip_proto": 58, "icmpv6_type": icmp_type, **kw}


def test_legitimate_ipv4_reaches_the_neighbour():
    assert run(ip()).ports() == {2}


@pytest.mark.parametrize("packet", [
    pytest.param(ip(src_mac="fa:16:3e:00:00:66"), id="spoofed-source-mac"),
    pytest.param(ip(src_ip="10.10.0.5"), id="spoofed-source-ip"),
    pytest.param(arp(spa="10.10.0.1", op=2), id="arp-reply-claiming-gateway"),
    pytest.param(arp(spa="10.10.0.5", tpa="10.10.0.5"), id="gratuitous-arp-for-neighbour"),
    pytest.param(arp(sha="fa:16:3e:00:00:66", eth_src=ATTACKER.mac), id="arp-sha-mismatch"),
    pytest.param(icmp6(136, link_local(ATTACKER.mac), ipv6_nd_target=link_local(VICTIM.mac)),
                 id="na-claiming-neighbour"),
    pytest.param(icmp6(134, link_local(ATTACKER.mac)), id="router-advertisement"),
    pytest.param(ip(dst_mac=BCAST, dst_ip="255.255.255.255", ip_proto=17, udp_src=67,
                    udp_dst=68), id="rogue-dhcp-offer"),
    pytest.param({"eth_src": ATTACKER.mac, "eth_dst": "33:33:00:01:00:02", "eth_type": 0x86DD,
                  "ipv6_src": link_local(ATTACKER.mac), "ipv6_dst": "ff02::1:2", "ip_proto": 17,
                  "udp_src": 547, "udp_dst": 546}, id="rogue-dhcpv6-server"),
    pytest.param(icmp6(128, "fe80::dead", dst=link_local(VICTIM.mac), eth_dst=VICTIM.mac),
                 id="spoofed-ipv6-source"),
    pytest.param({"eth_src": ATTACKER.mac, "eth_dst": BCAST, "eth_type": 0x88CC},
                 id="other-ethertype"),
])
def test_spoof_attempt_is_dropped(packet):
    r = run(packet)
    assert r.dropped, [str(f) for f in r.path]


@pytest.mark.parametrize("packet", [
    pytest.param(arp(), id="own-arp-request"),
    pytest.param(arp(spa="0.0.0.0"), id="arp-probe-rfc5227"),
    pytest.param(icmp6(136, link_local(ATTACKER.mac), ipv6_nd_target=link_local(ATTACKER.mac)),
                 id="own-neighbor-advertisement"),
    pytest.param(icmp6(135, "::", dst="ff02::1:ff00:a1", eth_dst="33:33:ff:00:00:a1"),
                 id="dad-probe"),
    pytest.param(icmp6(128, link_local(ATTACKER.mac), dst=link_local(VICTIM.mac),
                       eth_dst=VICTIM.mac), id="own-link-local-ping"),
])
def test_legitimate_frames_pass(packet):
    assert 2 in run(packet).ports()


def test_allowed_address_pair_mac_and_cidr_are_honoured():
    pair = dataclasses.replace(ATTACKER, allowed_address_pairs=(("fa:16:3e:00:00:77",
                                                                 "10.10.0.32/28"),))
    assert run(ip(src_mac="fa:16:3e:00:00:77", src_ip="10.10.0.40"), pair).ports() == {2}
    assert run(arp(sha="fa:16:3e:00:00:77", spa="10.10.0.33"), pair).ports() == {2}
    # the pair's MAC is not a licence for any address, nor its CIDR for the VIF's own MAC
    assert run(ip(src_mac="fa:16:3e:00:00:77", src_ip="10.10.0.5"), pair).dropped
    assert run(ip(src_ip="10.10.0.40"), pair).dropped


def test_disabled_port_security_is_explicit_and_per_vif():
    open_vif = dataclasses.replace(ATTACKER, port_security=False)
    assert run(ip(src_mac="fa:16:3e:00:00:66", src_ip="10.10.0.9"), open_vif).ports() == {2}
    assert run(ip(src_mac="fa:16:3e:00:00:66", src_ip="10.10.0.9")).dropped


def test_dhcp_punt_is_metered_per_vif_when_rate_limited():
    view = open_view(1, {1: NET}, (ATTACKER, VICTIM))
    binding = bind_ports(view, {ATTACKER.port_name: 1, VICTIM.port_name: 2}, frozenset())
    flows = compile_datapath(view, binding, CompileSettings(dhcp_rate_pps=50)).flows
    punts = [f for f in flows if any(type(a).__name__ == "Controller" for a in f.actions)]
    meters = sorted(a.meter_id for f in punts for a in f.actions if type(a).__name__ == "Meter")
    assert meters == [0x5D040001, 0x5D040002]   # feature byte 04: DHCP
