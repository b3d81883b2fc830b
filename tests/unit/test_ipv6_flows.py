"""IPv6 in the OpenFlow pipeline, traced (sdn/flows/port_security.py, nd.py, dhcpv6.py, router.py):
port security for global/link-local/DAD sources and NA targets, no RA/redirect/DHCPv6 server
from instances, RS/NS/DHCPv6 punts through their meters, and routing between the public side
and a project's /64 without NAT, never between projects."""

import dataclasses

import pytest

from sdn.apps.gateway import neighbor_solicitation, parse_neighbor_advertisement
from sdn.dhcp import ra
from sdn.flows import dhcpv6, nd
from sdn.flows.compiler import CompileSettings, bind_ports, compile_datapath
from sdn.flows.model import Controller, Feature, Meter, Table
from sdn.flows.router import RouterSettings
from sdn.flows.trace import trace
from sdn.ipv6 import link_local, to_global
from sdn.view import NetworkView, VifView
from tests.unit.views import open_view

ALPHA = NetworkView(1, "alpha", "10.36.0.0/26", "255.255.255.192", "10.36.0.1", "10.36.0.63",
                    vlan=410, project_id="alpha", cidr_v6="fd00:0:0:1::/64",
                    gateway_v6="fd00:0:0:1::1", ipv6_ra_mode="slaac",
                    ipv6_address_mode="slaac")
BETA = NetworkView(2, "beta", "10.36.0.64/26", "255.255.255.192", "10.36.0.65", "10.36.0.127",
                   vlan=411, project_id="beta", cidr_v6="fd00:0:0:2::/64",
                   gateway_v6="fd00:0:0:2::1")
V4ONLY = NetworkView(3, "v4", "10.36.1.0/24", "255.255.255.0", "10.36.1.1", "10.36.1.255",
                     vlan=412, project_id="gamma")


def _vif(uuid, mac, net, name, v4):
    return VifView(uuid, mac, net.id, name, name, (v4,), net.project_id,
                   addresses_v6=(to_global(net.cidr_v6, mac, net.project_id),) if net.cidr_v6
                   else ())


A1 = _vif("aaaa1111-0000", "fa:16:3e:00:00:a1", ALPHA, "a1", "10.36.0.3")
A2 = _vif("aaaa2222-0000", "fa:16:3e:00:00:a2", ALPHA, "a2", "10.36.0.4")
B1 = _vif("bbbb1111-0000", "fa:16:3e:00:00:b1", BETA, "b1", "10.36.0.67")
G1 = _vif("cccc1111-0000", "fa:16:3e:00:00:c1", V4ONLY, "g1", "10.36.1.3")
VIEW = open_view(1, {1: ALPHA, 2: BETA, 3: V4ONLY}, (A1, A2, B1, G1))
PUB, OUTSIDE_MAC, OUTSIDE = 9, "02:00:00:00:00:99", "2001:db8:ff::1"
RS = RouterSettings("172.30.0.2", "172.30.0.1", public_ip_v6="2001:db8:ff::2/64",
                    external_gateway_v6=OUTSIDE, external_gateway_v6_mac=OUTSIDE_MAC)
PORTS = {A1.port_name: 1, A2.port_name: 2, B1.port_name: 3, G1.port_name: 4, "pub": PUB}
PORT = {A1: 1, A2: 2, B1: 3, G1: 4}


def desired(view=VIEW, router=RS, rate=50):
    return compile_datapath(view, bind_ports(view, PORTS, frozenset(), "pub"),
                            CompileSettings(dhcp_rate_pps=rate, router=router))


FLOWS = desired()


def ip6(vif, src, dst, eth_dst=None, **fields):
    return {"in_port": PORT[vif], "eth_src": vif.mac, "eth_dst": eth_dst or "33:33:00:00:00:01",
            "eth_type": 0x86DD, "ipv6_src": src, "ipv6_dst": dst, "ip_proto": 58,
            "icmpv6_type": 128, "icmpv6_code": 0, **fields}


def icmp6(vif, icmp_type, src=None, dst="ff02::1", **fields):
    return ip6(vif, src or link_local(vif.mac), dst, icmpv6_type=icmp_type, **fields)


def delivered_to(result, vif):
    return PORT[vif] in result.ports()


# ---- port security --------------------------------------------------------------------------

def test_global_link_local_and_unspecified_sources():
    to_a2 = {"eth_dst": A2.mac}
    assert delivered_to(trace(FLOWS, ip6(A1, A1.addresses_v6[0], A2.addresses_v6[0], **to_a2)), A2)
    assert delivered_to(trace(FLOWS, ip6(A1, link_local(A1.mac), link_local(A2.mac), **to_a2)), A2)
    # another's global or link-local address, or an address off the /64: dropped
    for src in (A2.addresses_v6[0], link_local(A2.mac), "fd00:0:0:1::99", B1.addresses_v6[0]):
        assert trace(FLOWS, ip6(A1, src, A2.addresses_v6[0], **to_a2)).dropped, src
    # DAD from :: (an NS to the solicited-node address) passes; an echo from :: does not
    dad = icmp6(A1, 135, src="::", dst="ff02::1:ff00:a1", ipv6_nd_target=A1.addresses_v6[0])
    assert delivered_to(trace(FLOWS, dad), A2)
    assert trace(FLOWS, ip6(A1, "::", A2.addresses_v6[0], eth_dst=A2.mac)).dropped


def test_neighbor_advertisements_only_for_own_addresses():
    for target in (A1.addresses_v6[0], link_local(A1.mac)):
        assert delivered_to(trace(FLOWS, icmp6(A1, 136, ipv6_nd_target=target)), A2), target
    for target in (A2.addresses_v6[0], link_local(A2.mac), ALPHA.gateway_v6, ALPHA.gateway_lla):
        assert trace(FLOWS, icmp6(A1, 136, ipv6_nd_target=target)).dropped, target


@pytest.mark.parametrize("what", ["router advertisement", "redirect", "DHCPv6 server"])
def test_router_and_server_messages_from_an_instance_are_dropped(what):
    packet = {"router advertisement": icmp6(A1, 134),
              "redirect": icmp6(A1, 137, dst=link_local(A2.mac), eth_dst=A2.mac),
              "DHCPv6 server": {**icmp6(A1, 0, dst="ff02::1:2", eth_dst="33:33:00:01:00:02"),
                                "ip_proto": 17, "udp_src": 547, "udp_dst": 546}}[what]
    r = trace(FLOWS, packet)
    assert r.dropped and not r.to_controller, r.path
    echo = icmp6(A1, 128, dst=link_local(A2.mac), eth_dst=A2.mac)   # positive control
    assert delivered_to(trace(FLOWS, echo), A2)


# ---- punts to the controller ----------------------------------------------------------------

def _punted(result, feature):
    return result.to_controller and result.path[-1].feature == feature and not result.outputs


def test_router_solicitation_and_gateway_solicitations_are_punted_metered():
    rs = icmp6(A1, 133, dst="ff02::2", eth_dst="33:33:00:00:00:02")
    assert _punted(trace(FLOWS, rs), Feature.ND)
    assert _punted(trace(FLOWS, {**rs, "ipv6_src": "::"}), Feature.ND)
    for target in (ALPHA.gateway_v6, ALPHA.gateway_lla):
        ns = icmp6(A1, 135, dst="ff02::1:ff00:1", ipv6_nd_target=target)
        r = trace(FLOWS, ns)
        assert _punted(r, Feature.ND), target
        assert Meter(nd.meter_id(1)) in r.path[-1].actions
    # an NS for a neighbour is not the controller's: it reaches the neighbour
    ns = icmp6(A1, 135, dst="ff02::1:ff00:a2", ipv6_nd_target=A2.addresses_v6[0])
    r = trace(FLOWS, ns)
    assert delivered_to(r, A2) and not r.to_controller
    assert nd.meter_id(1) in FLOWS.meters and nd.meter_id(4) not in FLOWS.meters


def test_dhcpv6_client_messages_are_punted_only_on_ipv6_networks():
    solicit = {**icmp6(A1, 0, dst="ff02::1:2", eth_dst="33:33:00:01:00:02"),
               "ip_proto": 17, "udp_src": 546, "udp_dst": 547}
    r = trace(FLOWS, solicit)
    assert _punted(r, Feature.DHCPV6) and Meter(dhcpv6.meter_id(1)) in r.path[-1].actions
    assert not any(f.feature in (Feature.ND, Feature.DHCPV6) and ("reg5", 4) in f.match
                   for f in FLOWS.flows)
    unmetered = desired(rate=None)
    assert not unmetered.meters or all(m.feature not in (Feature.ND, Feature.DHCPV6)
                                       for m in unmetered.meters.values())
    assert trace(unmetered, solicit).path[-1].actions == (Controller(),)


# ---- routing -------------------------------------------------------------------------------

def from_outside(dst, src="2001:db8:ff::1"):
    return {"in_port": PUB, "eth_src": OUTSIDE_MAC, "eth_dst": RS.mac, "eth_type": 0x86DD,
            "ipv6_src": src, "ipv6_dst": dst, "ip_proto": 58, "icmpv6_type": 128}


def test_outside_reaches_an_instance_without_nat():
    r = trace(FLOWS, from_outside(A1.addresses_v6[0]))
    assert r.ports() == {1}
    assert (r.packet["eth_src"], r.packet["eth_dst"]) == (ALPHA.gateway_mac, A1.mac)
    assert r.packet["ipv6_src"] == "2001:db8:ff::1" and not r.cts
    # not an instance's address (a free one of the /64, another network's gateway): dropped
    for dst in ("fd00:0:0:1::99", BETA.gateway_v6, "2001:db8:1::5"):
        assert trace(FLOWS, from_outside(dst)).dropped, dst


def test_instance_reaches_outside_through_the_external_gateway_without_nat():
    r = trace(FLOWS, ip6(A1, A1.addresses_v6[0], "2001:db8:ff::1", eth_dst=ALPHA.gateway_mac))
    assert r.ports() == {PUB} and not r.cts
    assert (r.packet["eth_src"], r.packet["eth_dst"]) == (RS.mac, OUTSIDE_MAC)
    assert r.packet["ipv6_src"] == A1.addresses_v6[0]
    # before the external gateway's MAC is known nothing leaves
    unknown = desired(router=dataclasses.replace(RS, external_gateway_v6_mac=None))
    assert trace(unknown, ip6(A1, A1.addresses_v6[0], OUTSIDE, eth_dst=ALPHA.gateway_mac)).dropped


def test_projects_stay_isolated_over_ipv6():
    routed = trace(FLOWS, ip6(A1, A1.addresses_v6[0], B1.addresses_v6[0],
                              eth_dst=ALPHA.gateway_mac))
    assert routed.dropped, routed.path
    # link-local and multicast destinations are never routed
    for dst in (BETA.gateway_lla, "ff05::1"):
        assert trace(FLOWS, ip6(A1, A1.addresses_v6[0], dst, eth_dst=ALPHA.gateway_mac)).dropped


def test_router_public_address_is_solicited_through_the_controller():
    ns = {**from_outside("ff02::1:ff00:2", src="fe80::99"), "eth_dst": "33:33:ff:00:00:02",
          "icmpv6_type": 135, "ipv6_nd_target": "2001:db8:ff::2"}
    r = trace(FLOWS, ns)
    assert _punted(r, Feature.ROUTER)
    na = {**from_outside("2001:db8:ff::2", src=OUTSIDE), "icmpv6_type": 136,
          "ipv6_nd_target": OUTSIDE}
    assert _punted(trace(FLOWS, na), Feature.ROUTER)


def test_no_ipv6_router_flows_without_public_ip_v6():
    plain = desired(router=dataclasses.replace(RS, public_ip_v6=None))
    assert trace(plain, from_outside(A1.addresses_v6[0])).dropped
    assert not any(("eth_type", 0x86DD) in f.match for f in plain.flows
                   if f.feature == Feature.ROUTER)


def test_neighbor_solicitation_and_advertisement_bytes_round_trip():
    ns = neighbor_solicitation(RS.mac, "2001:db8:ff::2", OUTSIDE)
    outside = dataclasses.replace(ALPHA, gateway="10.9.9.9", gateway_v6=OUTSIDE,
                                  cidr_v6="2001:db8:ff::/64")
    na = ra.neighbor_advertisement(ns, outside)
    assert na is not None, "the codec does not take our solicitation as valid"
    assert parse_neighbor_advertisement(na) == (outside.gateway_mac, OUTSIDE)
    assert parse_neighbor_advertisement(ns) is None
    assert parse_neighbor_advertisement(b"\x00" * 10) is None


def test_ipv6_flows_encode_as_os_ken_does():
    """The struct encoder (sdn.apps.ofwire) and os-ken agree on every IPv6 flow (masked IPv6
    destinations, ND targets, ICMPv6 types, meters)."""
    from sdn.apps import ofmsgs, ofwire
    from tests.unit.test_ofwire import GEN, XID, Dp, _plain
    ipv6 = [f for f in FLOWS.flows if f.feature in (Feature.ND, Feature.DHCPV6)
            or ("eth_type", 0x86DD) in f.match]
    assert len(ipv6) > 20
    for f in ipv6:
        assert ofwire.flow_add(f, GEN, XID) == _plain(ofmsgs.flow_add(Dp(), f, GEN)), f


# ---- the controller's side (sdn/apps/ipv6.py, sdn/apps/gateway.py) --------------------------

class FakeDp:
    """A datapath that records what the controller sends (packet-outs, split per message)."""

    def __init__(self, dpid=1):
        self.id = dpid
        self.sent: list[tuple[int, bytes]] = []

    def send(self, data: bytes):
        import struct
        from sdn.apps.ofmsgs import PACKET_OUT_HEADER_LEN
        while data:
            length = struct.unpack_from("!H", data, 2)[0]
            msg, data = data[:length], data[length:]
            port = struct.unpack_from("!I", msg, 28)[0]
            self.sent.append((port, msg[PACKET_OUT_HEADER_LEN:]))


def _services(view=VIEW):
    from sdn.apps.ipv6 import Ipv6Services
    binding = bind_ports(view, PORTS, frozenset(), "pub")
    return Ipv6Services(lambda: view, lambda dpid: binding), binding


def _packet_out(out: bytes):
    dp = FakeDp()
    dp.send(out)
    return dp.sent[0]


def test_unsolicited_ras_every_interval_and_at_once_to_a_new_port():
    from scapy.layers.inet6 import ICMPv6ND_RA, ICMPv6NDOptPrefixInfo
    from scapy.layers.l2 import Ether
    services, binding = _services()
    dp = FakeDp()
    assert services.advertise([(dp, binding)], now=100.0) == 3
    assert sorted(port for port, _ in dp.sent) == [1, 2, 3]       # not the IPv4-only VIF
    frames = dict(dp.sent)
    ra = Ether(frames[1])
    assert ra[ICMPv6ND_RA].routerlifetime == 3 * ALPHA.ra_interval
    assert ra[ICMPv6NDOptPrefixInfo].prefix == "fd00:0:0:1::"
    assert Ether(frames[3])[ICMPv6NDOptPrefixInfo].prefix == "fd00:0:0:2::"
    dp.sent.clear()
    assert services.advertise([(dp, binding)], now=100.0 + ALPHA.ra_interval - 1) == 0
    a3 = _vif("aaaa3333-0000", "fa:16:3e:00:00:a3", ALPHA, "a3", "10.36.0.5")
    grown = dataclasses.replace(binding, vifs={**binding.vifs, 7: a3})
    assert services.advertise([(dp, grown)], now=100.5) == 1 and dp.sent[0][0] == 7
    assert services.advertise([(dp, grown)], now=100.0 + ALPHA.ra_interval) == 3


def _scapy_frame(pkt) -> bytes:
    return bytes(pkt)


def test_solicitations_from_a_vif_are_answered_out_of_its_port():
    from scapy.layers.inet6 import (ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RA, ICMPv6ND_RS,
                                    ICMPv6NDOptDstLLAddr, ICMPv6NDOptSrcLLAddr, IPv6)
    from scapy.layers.l2 import Ether
    services, _ = _services()
    dp = FakeDp()
    lla = link_local(A1.mac)
    rs = Ether(src=A1.mac, dst="33:33:00:00:00:02") / IPv6(src=lla, dst="ff02::2", hlim=255) / \
        ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr=A1.mac)
    port, frame = _packet_out(services.on_nd(dp, 1, bytes(rs)))
    assert port == 1 and Ether(frame).haslayer(ICMPv6ND_RA) and Ether(frame)[IPv6].dst == lla
    ns = Ether(src=A1.mac, dst="33:33:ff:00:00:01") / \
        IPv6(src=lla, dst="ff02::1:ff00:1", hlim=255) / ICMPv6ND_NS(tgt=ALPHA.gateway_v6) / \
        ICMPv6NDOptSrcLLAddr(lladdr=A1.mac)
    port, frame = _packet_out(services.on_nd(dp, 1, bytes(ns)))
    na = Ether(frame)
    assert port == 1 and na[ICMPv6ND_NA].tgt == ALPHA.gateway_v6 and na[ICMPv6ND_NA].R == 1
    assert na[ICMPv6NDOptDstLLAddr].lladdr == ALPHA.gateway_mac
    # not the gateway, not an IPv6 network's port, an unknown port, garbage: nothing
    other = ns.copy()
    other[ICMPv6ND_NS].tgt = A2.addresses_v6[0]
    assert services.on_nd(dp, 1, bytes(other)) == b""
    assert services.on_nd(dp, 4, bytes(rs)) == b""
    assert services.on_nd(dp, 99, bytes(rs)) == b""
    assert services.on_nd(dp, 1, b"\x00" * 7) == b""
    assert services.stats["ra_solicited"] == 1 and services.stats["na"] == 1


def test_dhcpv6_information_request_is_answered_out_of_its_port():
    from scapy.layers.dhcp6 import (DHCP6_InfoRequest, DHCP6_Reply, DHCP6OptClientId,
                                    DHCP6OptOptReq, DUID_LL)
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    net = dataclasses.replace(ALPHA, dns_v6=("2001:db8:53::53",), ipv6_ra_mode="dhcpv6-stateless",
                              ipv6_address_mode="dhcpv6-stateless")
    view = open_view(1, {1: net, 2: BETA, 3: V4ONLY}, (A1, A2, B1, G1))
    services, _ = _services(view)
    request = Ether(src=A1.mac, dst="33:33:00:01:00:02") / \
        IPv6(src=link_local(A1.mac), dst="ff02::1:2") / UDP(sport=546, dport=547) / \
        DHCP6_InfoRequest(trid=7) / DHCP6OptClientId(duid=DUID_LL(lladdr=A1.mac)) / \
        DHCP6OptOptReq(reqopts=[23, 24])
    port, frame = _packet_out(services.on_dhcpv6(FakeDp(), 1, bytes(request)))
    assert port == 1 and Ether(frame).haslayer(DHCP6_Reply)
    assert services.on_dhcpv6(FakeDp(), 4, bytes(request)) == b""


def test_gateway_learner_solicits_the_external_ipv6_gateway_and_answers_for_the_router():
    from sdn.apps.gateway import GatewayLearner
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr, IPv6
    from scapy.layers.l2 import Ether
    base = dataclasses.replace(RS, external_gateway_v6_mac=None)
    dp, changed = FakeDp(), []
    learner = GatewayLearner(base, lambda: [(dp, PUB)], lambda: changed.append(1))
    learner.probe(10.0)
    solicitation = [Ether(f) for port, f in dp.sent if port == PUB and Ether(f).haslayer(ICMPv6ND_NS)]
    assert solicitation and solicitation[0][ICMPv6ND_NS].tgt == OUTSIDE
    assert learner.settings().external_gateway_v6_mac is None
    # the gateway's answer: learned, flows recompiled
    answer = Ether(src=OUTSIDE_MAC, dst=RS.mac) / IPv6(src=OUTSIDE, dst="2001:db8:ff::2",
                                                       hlim=255) / \
        ICMPv6ND_NA(tgt=OUTSIDE, S=1, O=1) / ICMPv6NDOptDstLLAddr(lladdr=OUTSIDE_MAC)
    learner.on_packet_in(dp, PUB, bytes(answer))
    assert learner.settings().external_gateway_v6_mac == OUTSIDE_MAC and changed
    # someone outside asks for the router's public address: answered out of the public port
    dp.sent.clear()
    ask = neighbor_solicitation(OUTSIDE_MAC, OUTSIDE, "2001:db8:ff::2")
    learner.on_packet_in(dp, PUB, ask)
    (port, frame), = dp.sent
    assert port == PUB and Ether(frame)[ICMPv6ND_NA].tgt == "2001:db8:ff::2"
    assert Ether(frame)[ICMPv6NDOptDstLLAddr].lladdr == RS.mac
