"""Router advertisements, RS -> RA and NS -> NA (sdn.dhcp.ra); Scapy is the validator.

Every frame the codec builds is parsed by Scapy and rebuilt with Scapy's own checksum and
lengths (same bytes or the test fails); solicitations are crafted with Scapy as the Linux kernel
sends them (RFC 4861 §4.1, §4.3, §6.3.7, §7.2.2, RFC 4862 §5.4 duplicate address detection)."""

from __future__ import annotations

import dataclasses
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptDNSSL,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import Dot1Q, Ether
from scapy.utils6 import in6_getnsma, in6_getnsmac, in6_mactoifaceid

from sdn.dhcp import ra
from sdn.ipv6 import link_local
from sdn.view import NetworkView

NET = NetworkView(id=1, label="private", cidr="10.0.0.0/24", netmask="255.255.255.0",
                  gateway="10.0.0.1", broadcast="10.0.0.255", domain="novalocal", mtu=1450,
                  cidr_v6="fd00:0:0:1::/64", gateway_v6="fd00:0:0:1::1", ipv6_ra_mode="slaac",
                  ipv6_address_mode="slaac", dns_v6=("fd00::53", "2001:db8::35"), ra_interval=10)
GATEWAY_MAC = "0a:58:0a:00:00:01"
GATEWAY_LLA = "fe80::858:aff:fe00:1"
MAC = "fa:16:3e:12:34:56"
LLA = "fe80::f816:3eff:fe12:3456"
STATELESS = dataclasses.replace(NET, ipv6_ra_mode="dhcpv6-stateless",
                                ipv6_address_mode="dhcpv6-stateless")
STATEFUL = dataclasses.replace(NET, ipv6_ra_mode="dhcpv6-stateful",
                               ipv6_address_mode="dhcpv6-stateful")
NO_V6 = dataclasses.replace(NET, cidr_v6=None, gateway_v6=None, ipv6_ra_mode=None,
                            ipv6_address_mode=None)

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def dissect(frame: bytes, layer):
    """Scapy's view of ``frame``, after checking that Scapy, recomputing the ICMPv6 checksum and
    the IPv6 payload length itself, builds exactly the same bytes; hop limit 255 (RFC 4861)."""
    pkt = Ether(frame)
    assert pkt.haslayer(layer), pkt.summary()
    clone = Ether(frame)
    del clone[IPv6].plen, clone[layer].cksum
    assert bytes(clone) == frame, "Scapy rebuilds different bytes (checksum or length wrong)"
    assert pkt[IPv6].hlim == 255 and pkt[IPv6].nh == 58
    return pkt


def rs(src=LLA, dst="ff02::2", *, lladdr=MAC, hlim=255, eth_src=MAC, extra=b"", vlan=None,
       **icmp) -> bytes:
    """A router solicitation as the Linux kernel sends it: from the link-local address with a
    source link-layer address option, or from :: without one (RFC 4861 §4.1)."""
    ether = Ether(src=eth_src, dst="33:33:00:00:00:02")
    if vlan is not None:
        ether = ether / Dot1Q(vlan=vlan)
    msg = ICMPv6ND_RS(**icmp)
    if lladdr:
        msg = msg / ICMPv6NDOptSrcLLAddr(lladdr=lladdr)
    return bytes(ether / IPv6(src=src, dst=dst, hlim=hlim) / msg) + extra


def ns(target, src=LLA, dst=None, *, lladdr=MAC, hlim=255, eth_src=MAC) -> bytes:
    """A neighbour solicitation as the kernel sends it: to the target's solicited-node address
    with a source link-layer address option (RFC 4861 §7.2.2), or unicast (NUD, §7.3.1)."""
    dst = dst or in6_getnsma(socket.inet_pton(socket.AF_INET6, target))
    if isinstance(dst, bytes):
        dst = socket.inet_ntop(socket.AF_INET6, dst)
    msg = ICMPv6ND_NS(tgt=target)
    if lladdr:
        msg = msg / ICMPv6NDOptSrcLLAddr(lladdr=lladdr)
    eth_dst = in6_getnsmac(socket.inet_pton(socket.AF_INET6, dst)) if dst.startswith("ff") \
        else GATEWAY_MAC
    return bytes(Ether(src=eth_src, dst=eth_dst) / IPv6(src=src, dst=dst, hlim=hlim) / msg)


# ------------------------------------------------------------------------------ constants

def test_constants_match_scapy():
    assert (ICMPv6ND_RS().type, ICMPv6ND_RA().type, ICMPv6ND_NS().type, ICMPv6ND_NA().type) == (
        ra.ROUTER_SOLICITATION, ra.ROUTER_ADVERTISEMENT, ra.NEIGHBOR_SOLICITATION,
        ra.NEIGHBOR_ADVERTISEMENT)
    assert (ICMPv6NDOptSrcLLAddr().type, ICMPv6NDOptDstLLAddr().type,
            ICMPv6NDOptPrefixInfo().type, ICMPv6NDOptMTU().type, ICMPv6NDOptRDNSS().type,
            ICMPv6NDOptDNSSL().type) == (ra.OPT_SOURCE_LLADDR, ra.OPT_TARGET_LLADDR,
                                         ra.OPT_PREFIX_INFORMATION, ra.OPT_MTU, ra.OPT_RDNSS,
                                         ra.OPT_DNSSL)


def test_gateway_link_local_is_the_modified_eui64_of_the_gateway_mac():
    """RFC 4291 App. A, as Scapy computes it."""
    assert NET.gateway_mac == GATEWAY_MAC
    assert NET.gateway_lla == GATEWAY_LLA == link_local(GATEWAY_MAC)
    assert socket.inet_pton(socket.AF_INET6, GATEWAY_LLA) == socket.inet_pton(
        socket.AF_INET6, "fe80::" + in6_mactoifaceid(GATEWAY_MAC))


def test_solicited_node_and_multicast_mac_match_scapy():
    for address in ("fd00:0:0:1::1", GATEWAY_LLA, "2001:db8::abcd:ef01"):
        packed = socket.inet_pton(socket.AF_INET6, address)
        assert ra.solicited_node(packed) == in6_getnsma(packed)
        assert ra.multicast_mac(ra.solicited_node(packed)).hex(":") == in6_getnsmac(
            in6_getnsma(packed))


# ------------------------------------------------------------------------------ RA contents

def test_slaac_ra_has_prefix_with_l_and_a_mtu_source_lladdr_rdnss_dnssl():
    frame = ra.router_advertisement(NET)
    pkt = dissect(frame, ICMPv6ND_RA)
    assert (pkt[Ether].src, pkt[Ether].dst) == (GATEWAY_MAC, "33:33:00:00:00:01")
    assert (pkt[IPv6].src, pkt[IPv6].dst) == (GATEWAY_LLA, "ff02::1")
    adv = pkt[ICMPv6ND_RA]
    assert (adv.code, adv.M, adv.O, adv.chlim) == (0, 0, 0, 64)
    assert adv.routerlifetime == 30  # 3 x ra_interval (RFC 4861 §6.2.1)
    assert (adv.reachabletime, adv.retranstimer) == (0, 0)
    prefix = pkt[ICMPv6NDOptPrefixInfo]
    assert (prefix.prefix, prefix.prefixlen, prefix.L, prefix.A) == ("fd00:0:0:1::", 64, 1, 1)
    assert prefix.validlifetime >= prefix.preferredlifetime > 0
    assert pkt[ICMPv6NDOptMTU].mtu == 1450
    assert pkt[ICMPv6NDOptSrcLLAddr].lladdr == GATEWAY_MAC
    rdnss = pkt[ICMPv6NDOptRDNSS]
    assert (rdnss.dns, rdnss.lifetime) == (["fd00::53", "2001:db8::35"], 30)
    dnssl = pkt[ICMPv6NDOptDNSSL]
    assert (dnssl.searchlist, dnssl.lifetime) == (["novalocal."], 30)
    assert len(frame) - 14 - 40 == pkt[IPv6].plen  # no trailing bytes


@pytest.mark.parametrize("net, m, o, a", [(NET, 0, 0, 1), (STATELESS, 0, 1, 1),
                                          (STATEFUL, 1, 1, 0)])
def test_mode_sets_m_o_and_a_flags(net, m, o, a):
    pkt = dissect(ra.router_advertisement(net), ICMPv6ND_RA)
    assert (pkt[ICMPv6ND_RA].M, pkt[ICMPv6ND_RA].O, pkt[ICMPv6NDOptPrefixInfo].A) == (m, o, a)
    assert pkt[ICMPv6NDOptPrefixInfo].L == 1


def test_mode_from_address_mode_when_ra_mode_unset_and_slaac_by_default():
    only_address = dataclasses.replace(NET, ipv6_ra_mode=None, ipv6_address_mode="dhcpv6-stateful")
    assert ra.address_mode(only_address) == "dhcpv6-stateful"
    assert ra.address_mode(dataclasses.replace(NET, ipv6_ra_mode=None,
                                               ipv6_address_mode=None)) == "slaac"
    assert dissect(ra.router_advertisement(only_address), ICMPv6ND_RA)[ICMPv6ND_RA].M == 1


def test_without_dns_domain_or_mtu_those_options_are_left_out():
    bare = dataclasses.replace(NET, dns_v6=(), domain="", mtu=None)
    pkt = dissect(ra.router_advertisement(bare), ICMPv6ND_RA)
    for layer in (ICMPv6NDOptRDNSS, ICMPv6NDOptDNSSL, ICMPv6NDOptMTU):
        assert not pkt.haslayer(layer)
    assert pkt.haslayer(ICMPv6NDOptPrefixInfo) and pkt.haslayer(ICMPv6NDOptSrcLLAddr)


def test_mtu_below_the_ipv6_minimum_is_not_advertised():
    """RFC 8200 §5: 1280 is the minimum; an IPv4-sized MTU of 1000 would be invalid."""
    pkt = dissect(ra.router_advertisement(dataclasses.replace(NET, mtu=1000)), ICMPv6ND_RA)
    assert not pkt.haslayer(ICMPv6NDOptMTU)


@pytest.mark.parametrize("interval, lifetime", [(4, 12), (600, 1800), (1800, 5400)])
def test_router_lifetime_is_three_intervals(interval, lifetime):
    pkt = dissect(ra.router_advertisement(dataclasses.replace(NET, ra_interval=interval)),
                  ICMPv6ND_RA)
    assert pkt[ICMPv6ND_RA].routerlifetime == lifetime == pkt[ICMPv6NDOptRDNSS].lifetime


def test_multi_label_domain_and_bad_domains_in_dnssl():
    pkt = dissect(ra.router_advertisement(dataclasses.replace(NET, domain="corp.example.org.")),
                  ICMPv6ND_RA)
    assert pkt[ICMPv6NDOptDNSSL].searchlist == ["corp.example.org."]
    too_long = dataclasses.replace(NET, domain="x" * 64 + ".org")
    assert not dissect(ra.router_advertisement(too_long), ICMPv6ND_RA).haslayer(ICMPv6NDOptDNSSL)
    assert ra.domain_names("a.b", "", "ü.org", "c") == b"\x01a\x01b\x00\x01c\x00"


def test_unicast_destination():
    pkt = dissect(ra.router_advertisement(NET, dst_mac=MAC, dst_ip=LLA), ICMPv6ND_RA)
    assert (pkt[Ether].dst, pkt[IPv6].dst) == (MAC, LLA)


def test_network_without_prefix_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="no IPv6 prefix"):
        ra.router_advertisement(NO_V6)


def test_is_router_advertisement():
    assert ra.is_router_advertisement(ra.router_advertisement(NET))
    assert ra.is_router_advertisement(bytes(Ether(src=MAC) / IPv6(src=LLA, dst="ff02::1")
                                            / ICMPv6ND_RA(routerlifetime=9000)))
    assert not ra.is_router_advertisement(rs())
    assert not ra.is_router_advertisement(ns("fd00:0:0:1::1"))
    assert not ra.is_router_advertisement(b"")
    assert not ra.is_router_advertisement(bytes(Ether() / IP() / UDP()))


# ------------------------------------------------------------------------------ RS -> RA

def test_kernel_rs_gets_a_unicast_ra():
    pkt = dissect(ra.answer(rs(), NET), ICMPv6ND_RA)
    assert (pkt[Ether].src, pkt[Ether].dst, pkt[IPv6].src, pkt[IPv6].dst) == (
        GATEWAY_MAC, MAC, GATEWAY_LLA, LLA)
    assert pkt[ICMPv6NDOptPrefixInfo].prefix == "fd00:0:0:1::"


def test_rs_from_unspecified_gets_the_all_nodes_ra():
    assert ra.answer(rs(src="::", lladdr=None), NET) == ra.router_advertisement(NET)


@pytest.mark.parametrize("frame, why", [
    (rs(src="::"), "source link-layer option from :: (RFC 4861 §6.1.1)"),
    (rs(hlim=254), "hop limit not 255"),
    (rs(code=1), "code not 0"),
    (rs(cksum=0x1234), "bad checksum"),
    (rs(src="ff02::1"), "multicast source"),
    (rs()[:-3], "truncated"),
    (bytes(Ether(src=MAC) / IPv6(src=LLA, dst="ff02::2", hlim=255) / ICMPv6ND_RS()
           / ICMPv6NDOptSrcLLAddr(len=0)), "option of length 0"),
    (bytes(Ether(src=MAC) / IPv6(src=LLA, dst="ff02::2", hlim=255) / ICMPv6ND_RS()
           / ICMPv6NDOptSrcLLAddr(len=2)), "option overruns the message"),
])
def test_invalid_rs_is_ignored(frame, why):
    assert ra.answer(frame, NET) is None, why


def test_anything_but_an_rs_is_ignored():
    assert ra.answer(ns("fd00:0:0:1::1"), NET) is None
    assert ra.answer(ra.router_advertisement(NET), NET) is None
    assert ra.answer(bytes(Ether() / IP() / UDP()), NET) is None
    assert ra.answer(b"", NET) is None
    assert ra.answer(None, NET) is None


def test_rs_on_a_network_without_ipv6_is_ignored():
    assert ra.answer(rs(), NO_V6) is None


def test_tagged_rs_gets_an_untagged_ra_and_ethernet_padding_is_ignored():
    reply = ra.answer(rs(vlan=101, extra=bytes(10)), NET)
    assert dissect(reply, ICMPv6ND_RA)[IPv6].dst == LLA and reply[12:14] == b"\x86\xdd"


def test_rs_after_a_hop_by_hop_header_is_answered():
    frame = bytes(Ether(src=MAC) / IPv6(src=LLA, dst="ff02::2", hlim=255) / IPv6ExtHdrHopByHop()
                  / ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=MAC))
    assert dissect(ra.answer(frame, NET), ICMPv6ND_RA)[IPv6].dst == LLA


# ------------------------------------------------------------------------------ NS -> NA

@pytest.mark.parametrize("target", ["fd00:0:0:1::1", GATEWAY_LLA])
def test_ns_for_a_gateway_address_gets_a_solicited_router_na(target):
    pkt = dissect(ra.neighbor_advertisement(ns(target), NET), ICMPv6ND_NA)
    na = pkt[ICMPv6ND_NA]
    assert (na.R, na.S, na.O, na.tgt) == (1, 1, 1, target)
    assert pkt[ICMPv6NDOptDstLLAddr].lladdr == GATEWAY_MAC
    assert (pkt[Ether].src, pkt[Ether].dst, pkt[IPv6].src, pkt[IPv6].dst) == (
        GATEWAY_MAC, MAC, target, LLA)


def test_unicast_nud_ns_without_source_option_is_answered():
    """RFC 4861 §7.3.1: reachability confirmation is unicast to the cached address."""
    frame = ns("fd00:0:0:1::1", dst="fd00:0:0:1::1", lladdr=None,
               src="fd00::1:f816:3eff:fe12:3456")
    pkt = dissect(ra.neighbor_advertisement(frame, NET), ICMPv6ND_NA)
    assert pkt[IPv6].dst == "fd00::1:f816:3eff:fe12:3456" and pkt[ICMPv6ND_NA].S == 1


def test_duplicate_address_detection_for_a_gateway_address_gets_an_all_nodes_na():
    """RFC 4862 §5.4.3 / RFC 4861 §7.2.4: the address is the gateway's; S clear, to ff02::1."""
    pkt = dissect(ra.neighbor_advertisement(ns("fd00:0:0:1::1", src="::", lladdr=None), NET),
                  ICMPv6ND_NA)
    assert (pkt[IPv6].dst, pkt[Ether].dst) == ("ff02::1", "33:33:00:00:00:01")
    assert (pkt[ICMPv6ND_NA].R, pkt[ICMPv6ND_NA].S, pkt[ICMPv6ND_NA].O) == (1, 0, 1)


@pytest.mark.parametrize("frame, why", [
    (ns("fd00:0:0:1::5"), "another address (an instance answers for itself)"),
    (ns("fd00:0:0:2::1"), "another network's gateway"),
    (ns("fd00:0:0:1::1", hlim=64), "hop limit not 255"),
    (ns("fd00:0:0:1::1", src="::"), "source link-layer option from ::"),
    (ns("fd00:0:0:1::1", src="::", dst="ff02::1", lladdr=None), "DAD not to solicited-node"),
    (ns("ff02::1", dst="ff02::1:ff00:1"), "multicast target"),
    (rs(), "a router solicitation"),
])
def test_other_ns_are_ignored(frame, why):
    assert ra.neighbor_advertisement(frame, NET) is None, why


def test_ns_with_a_bad_checksum_is_ignored_and_its_positive_control_answered():
    good = ns("fd00:0:0:1::1")
    bad = good[:56] + bytes((good[56] ^ 0xFF,)) + good[57:]
    assert ra.neighbor_advertisement(good, NET) is not None
    assert ra.neighbor_advertisement(bad, NET) is None


def test_ns_on_a_network_without_ipv6_or_gateway_v6():
    assert ra.neighbor_advertisement(ns(GATEWAY_LLA), NO_V6) is None
    no_gateway = dataclasses.replace(NET, gateway_v6=None)
    assert ra.neighbor_advertisement(ns("fd00:0:0:1::1"), no_gateway) is None
    assert ra.neighbor_advertisement(ns(GATEWAY_LLA), no_gateway) is not None


# ------------------------------------------------------------------------------ properties

def mutate(data, frame: bytes) -> bytes:
    """``frame`` with up to 8 bytes overwritten, maybe cut short, maybe with bytes appended
    (drawn from Hypothesis ``data``); shared with test_dhcpv6."""
    frame = bytearray(frame)
    for _ in range(data.draw(st.integers(0, 8))):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(frame))))
    return bytes(frame[:cut]) + data.draw(st.binary(max_size=32))


solicitations = st.one_of(
    st.builds(rs, src=st.sampled_from([LLA, "::", "fd00::1:1"]),
              lladdr=st.sampled_from([MAC, None]), vlan=st.sampled_from([None, 7])),
    st.builds(ns, st.sampled_from(["fd00:0:0:1::1", GATEWAY_LLA, "fd00:0:0:1::9"]),
              src=st.sampled_from([LLA, "::"]), lladdr=st.sampled_from([MAC, None])),
)


def _check_reply(frame: bytes | None) -> None:
    if frame is not None:
        pkt = dissect(frame, ICMPv6ND_RA if frame[54] == ra.ROUTER_ADVERTISEMENT else ICMPv6ND_NA)
        assert pkt[Ether].src == GATEWAY_MAC


@SETTINGS
@given(st.binary(max_size=1600), st.sampled_from([NET, STATEFUL, NO_V6]))
def test_any_bytes_never_raise(frame, net):
    assert ra.answer(frame, net) is None or ra.is_router_advertisement(ra.answer(frame, net))
    _check_reply(ra.neighbor_advertisement(frame, net))
    ra.is_router_advertisement(frame)
    packet = ra.parse_ipv6(frame)
    assert packet is None or packet.next_header not in (0, 43, 44, 60)


@SETTINGS
@given(solicitations, st.data())
def test_mutated_solicitations_never_raise_and_replies_are_valid(frame, data):
    for candidate in (frame, mutate(data, frame)):
        _check_reply(ra.answer(candidate, NET))
        _check_reply(ra.neighbor_advertisement(candidate, NET))


@SETTINGS
@given(st.builds(dataclasses.replace, st.just(NET),
                 ipv6_ra_mode=st.sampled_from([None, *ra.MODES]),
                 dns_v6=st.lists(st.sampled_from(["fd00::53", "::1", "2001:db8::1"]),
                                 max_size=5).map(tuple),
                 domain=st.text(max_size=80), mtu=st.one_of(st.none(), st.integers(0, 70000)),
                 ra_interval=st.integers(4, 1800)))
def test_any_network_settings_give_an_ra_scapy_accepts(net):
    pkt = dissect(ra.router_advertisement(net), ICMPv6ND_RA)
    assert pkt[ICMPv6ND_RA].routerlifetime == 3 * net.ra_interval


def test_mode_names_are_the_configs():
    assert ra.MODES == (ra.SLAAC, ra.DHCPV6_STATELESS, ra.DHCPV6_STATEFUL)
