"""Router flows (sdn/flows/router.py): routing and NAT decisions, traced per conntrack state."""

import dataclasses
import ipaddress

from tests.unit.views import open_view
from sdn.flows.compiler import CompileSettings, bind_ports, compile_datapath
from sdn.flows.model import CT_EST, CT_NEW, CT_TRK, Nat, Table
from sdn.flows.ofctl import render
from sdn.apps.gateway import arp_request, parse_arp_reply
from sdn.flows.router import RouterSettings
from sdn.flows.trace import trace
from sdn.view import FloatingView, NetworkView, StateView, VifView

ALPHA = NetworkView(1, "alpha", "10.34.0.0/26", "255.255.255.192", "10.34.0.1", "10.34.0.63",
                    vlan=400, project_id="alpha", vpn_public_address="172.30.0.3",
                    vpn_public_port=5000, vpn_private_address="10.34.0.2")
BETA = NetworkView(2, "beta", "10.34.0.64/26", "255.255.255.192", "10.34.0.65", "10.34.0.127",
                   vlan=401, project_id="beta")
A1 = VifView("aaaa1111-0000", "fa:16:3e:00:00:a1", 1, "a1", "a1", ("10.34.0.3",), "alpha")
A2 = VifView("aaaa2222-0000", "fa:16:3e:00:00:a2", 1, "a2", "a2", ("10.34.0.4",), "alpha")
B1 = VifView("bbbb1111-0000", "fa:16:3e:00:00:b1", 2, "b1", "b1", ("10.34.0.67",), "beta")
F1 = FloatingView("172.30.0.65", "10.34.0.3", 1, "alpha")
VIEW = open_view(1, {1: ALPHA, 2: BETA}, (A1, A2, B1), (F1,))
RS = RouterSettings("172.30.0.2", "172.30.0.1", "02:00:00:00:00:01",
                    metadata_host="172.30.0.1", metadata_port=8775)
PUB = 9
PORTS = {A1.port_name: 1, A2.port_name: 2, B1.port_name: 3, "pub": PUB}
NEW, EST = CT_NEW | CT_TRK, CT_EST | CT_TRK


def flows(view=VIEW, settings=RS, ports=PORTS, trunks=frozenset()):
    return compile_datapath(view, bind_ports(view, ports, trunks, "pub"),
                            CompileSettings(router=settings))


def from_vif(vif, port, dst, proto=6, dport=80, ct=NEW, net=ALPHA):
    return {"in_port": port, "eth_src": vif.mac, "eth_dst": net.gateway_mac, "eth_type": 0x0800,
            "ipv4_src": vif.addresses[0], "ipv4_dst": dst, "ip_proto": proto, "tcp_dst": dport,
            "udp_dst": dport, "ct_state": ct}


def from_outside(dst, proto=6, dport=22, ct=NEW):
    return {"in_port": PUB, "eth_src": "02:00:00:00:00:01", "eth_dst": RS.mac, "eth_type": 0x0800,
            "ipv4_src": "198.51.100.7", "ipv4_dst": dst, "ip_proto": proto, "tcp_dst": dport,
            "udp_dst": dport, "ct_state": ct}


def commits(result):
    return [ct.nat for ct in result.cts if ct.commit]


def test_new_outbound_connection_is_snated_to_floating_ip_or_routing_source_ip():
    r = trace(flows(), from_vif(A1, 1, "198.51.100.7"))
    assert commits(r) == [Nat("src", "172.30.0.65")] and r.outputs == [(PUB, None)]
    assert r.packet["eth_dst"] == "02:00:00:00:00:01" and r.packet["eth_src"] == RS.mac
    r = trace(flows(), from_vif(A2, 2, "198.51.100.7"))
    assert commits(r) == [Nat("src", "172.30.0.2")] and r.outputs == [(PUB, None)]


def test_new_inbound_connection_to_floating_ip_is_dnated_and_delivered():
    r = trace(flows(), from_outside("172.30.0.65"))
    assert commits(r) == [Nat("dst", "10.34.0.3")]
    assert r.outputs == [(1, None)] and r.packet["eth_dst"] == A1.mac


def test_nothing_outside_opens_connections_to_fixed_ips_or_unassociated_addresses():
    assert trace(flows(), from_outside("10.34.0.3")).dropped
    assert trace(flows(), from_outside("172.30.0.66")).dropped
    unassociated = dataclasses.replace(VIEW, floating_ips=())
    assert trace(flows(unassociated), from_outside("172.30.0.65")).dropped


def test_a_re_pointed_floating_ip_stops_its_old_connections():
    """conntrack keeps translating an old connection to its old fixed IP (the DNAT entry
    lingers); its ct_mark (the floating address) lets it through only while the floating IP
    still points there."""
    from sdn.flows.trace import _lookup
    mark = int(ipaddress.IPv4Address("172.30.0.65"))

    def after_dnat(view, fixed):
        """The L3_DNAT_COMMIT flow an established packet to 172.30.0.65 hits once conntrack
        has re-applied its entry (destination: ``fixed``)."""
        table = sorted((f for f in flows(view).flows if f.table == Table.L3_DNAT_COMMIT),
                       key=lambda f: -f.priority)
        return _lookup(table, {**from_outside(fixed, ct=EST), "ct_mark": mark})

    assert after_dnat(VIEW, "10.34.0.3").goto == Table.L3_ROUTE         # still a1's: flows
    moved = dataclasses.replace(VIEW, floating_ips=(FloatingView("172.30.0.65", "10.34.0.4", 1,
                                                                 "alpha"),))
    cut = after_dnat(moved, "10.34.0.3")                                # now a2's: a1's cut
    assert cut.goto is None and not cut.actions
    assert after_dnat(moved, "10.34.0.4").goto == Table.L3_ROUTE


def test_established_reply_from_outside_is_routed_back_in():
    # after un-SNAT (conntrack) the destination is the fixed IP again
    r = trace(flows(), from_outside("10.34.0.4", ct=EST))
    assert r.outputs == [(2, None)]


def test_projects_stay_isolated_through_the_gateway():
    r = trace(flows(), from_vif(B1, 3, "10.34.0.3", net=BETA))
    assert r.dropped and not commits(r)


def test_hairpin_is_dnated_then_snated():
    r = trace(flows(), from_vif(A2, 2, "172.30.0.65"))
    assert commits(r) == [Nat("dst", "10.34.0.3"), Nat("src", "172.30.0.2")]
    assert r.outputs == [(1, None)]


def test_metadata_is_dnated_and_not_snated():
    r = trace(flows(), from_vif(A2, 2, "169.254.169.254", dport=80))
    assert commits(r) == [Nat("dst", "172.30.0.1", 8775), None]   # committed without NAT
    assert r.outputs == [(PUB, None)]


def test_vpn_forward_exists_only_while_the_vpn_runs():
    probe = from_outside("172.30.0.3", proto=17, dport=5000)
    assert trace(flows(), probe).dropped
    running = dataclasses.replace(VIEW, networks={**VIEW.networks,
                                                  1: dataclasses.replace(ALPHA, vpn_running=True)})
    assert commits(trace(flows(running), probe)) == [Nat("dst", "10.34.0.2", 1194)]


def test_nothing_leaves_before_the_gateway_mac_is_known():
    unknown = dataclasses.replace(RS, external_gateway_mac=None)
    assert trace(flows(settings=unknown), from_vif(A2, 2, "198.51.100.7")).dropped


def test_router_answers_arp_for_its_addresses_only():
    arp = {"in_port": PUB, "eth_src": "02:00:00:00:00:01", "eth_dst": "ff:ff:ff:ff:ff:ff",
           "eth_type": 0x0806, "arp_op": 1, "arp_sha": "02:00:00:00:00:01",
           "arp_spa": "172.30.0.1"}
    for address in ("172.30.0.2", "172.30.0.65"):
        r = trace(flows(), {**arp, "arp_tpa": address})
        assert r.outputs == [(PUB, None)] and r.packet["arp_sha"] == RS.mac
    assert trace(flows(), {**arp, "arp_tpa": "172.30.0.66"}).dropped


def test_hypervisor_without_the_public_port_sends_routed_frames_over_the_trunk():
    ports = {A1.port_name: 1, "trunk": 7}
    fl = flows(ports=ports, trunks=frozenset({"trunk"}))
    assert not any(f.table == Table.L3_ROUTE for f in fl.flows)
    assert trace(fl, from_vif(A1, 1, "198.51.100.7")).outputs == [(7, 400)]


def test_no_router_without_settings():
    fl = compile_datapath(VIEW, bind_ports(VIEW, PORTS, frozenset(), "pub"))
    assert not any(Table.UPLINK <= f.table <= Table.L3_OUTPUT for f in fl.flows)


def test_rendering_reads_like_ovs_ofctl():
    text = "\n".join(render(f) for f in flows().flows)
    # the floating IP's address marks its connections (ct_mark), checked while they last
    assert "ct(commit,zone=5002,nat(dst=10.34.0.3),exec(set_field:0xac1e0041->ct_mark),table=43)" \
        in text
    assert "ct_state=+new+trk" in text


def test_arp_helpers_roundtrip():
    frame = arp_request("0a:58:ac:1e:00:02", "172.30.0.2", "172.30.0.1")
    reply = frame[:20] + b"\x00\x02" + frame[22:]
    assert parse_arp_reply(frame) is None
    assert parse_arp_reply(reply) == ("0a:58:ac:1e:00:02", "172.30.0.2")
