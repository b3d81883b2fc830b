"""The network host's router in flows: gateway routing, floating IPs, SNAT, metadata, cloudpipe VPN.

nova-network did this with iptables on the network host (FIELD-NOTES §3); here it is a
conntrack pipeline on the datapath that has the public port, modelled on OVN's gateway router.
Two conntrack zones keep the two translations apart, so hairpin traffic (an instance reaching
a floating IP of its own project) gets both, and ICMP errors of NATed connections are rewritten,
embedded header included, by conntrack itself. Every routed packet (from an instance to its
gateway MAC, or from the public port to a router address) walks the same stages:

  L3_UNSNAT       replies to SNATed connections get their fixed destination back (SNAT zone)
  L3_DNAT(_COMMIT) new connections to a floating IP / 169.254.169.254:80 / a VPN port are DNATed
  L3_ROUTE        next hop: a fixed IP (into its network) or the external gateway
  L3_UNDNAT       replies from DNAT backends get their public source back (DNAT zone)
  L3_SNAT(_COMMIT) (commits without recirculating: L3_OUTPUT matches no IP field, and the
                  datapath NATs the packet before it leaves; every recirculation counts against
                  the datapath's limit of 6 per packet, which a hairpin with security groups on
                  both ends would otherwise exceed) instance -> outside: its floating IP, else routing_source_ip; none for the
                  metadata host and dmz_cidr (nova's ACCEPT rules); fixed -> fixed is dropped
                  (projects stay isolated) except hairpin, which is SNATed so replies return
  L3_OUTPUT       deliver into the tenant network or out of the public port

IPv6 (when ``public_ip_v6`` is set) is routed without NAT, as nova did (no NAT66): between the
public side and the instances' derived addresses (``VifView.addresses_v6``) only, never
between two tenant /64s; the same tables carry it, where the IPv4-only NAT flows miss. The
router answers neighbour solicitations for ``public_ip_v6`` and learns ``external_gateway_v6``'s
MAC by ND through packet-ins (``sdn.apps.gateway``), as it does with ARP for IPv4.

``Reg.L3_DNAT_DONE`` = 1 marks "DNAT done in this pass" (skip un-DNAT); ``Reg.L3_TO_TENANT`` = 1
"next hop is a tenant port". Table-misses come from ``sdn.flows.pipeline`` (ROUTER line).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from sdn.flows import arp_responder
from sdn.flows.context import DatapathContext, RouterSettings
from sdn.flows.model import (CT_EST, CT_INV, CT_NEW, CT_REL, CT_RPL, CT_TRK, OFPVID_NONE,
                             Controller, Ct, DecTtl, EthType, Feature, Flow, IpProto, Nat, Output,
                             PopVlan, PushVlan, Reg, SetField, Table, ct_state, flow, vlan_vid)
from sdn.view import StateView

SNAT_ZONE = 5001
DNAT_ZONE = 5002
DNAT_DONE = Reg.L3_DNAT_DONE
TO_TENANT = Reg.L3_TO_TENANT
METADATA_IP = "169.254.169.254"
VPN_PRIVATE_PORT = 1194
ETH_IP, ETH_ARP, ETH_IPV6 = EthType.IPV4, EthType.ARP, EthType.IPV6
TCP, UDP, ICMPV6 = IpProto.TCP, IpProto.UDP, IpProto.ICMPV6
ND_NS, ND_NA = 135, 136
#: IPv6 destinations a router never forwards (RFC 4291 §2.5.6, §2.7)
IPV6_NOT_ROUTED = ("fe80::/10", "ff00::/8")
#: SERVICES: IPv4 to a gateway MAC goes to the router, above l2/arp flows' reach (200 = ARP)
PRIO_ROUTED = 150
#: CLASSIFY: the public port, as the classifier's own port flows
PRIO_PUBLIC_PORT = 100


def _cidr(cidr: str):
    net = ipaddress.ip_network(cidr, strict=False)
    return (str(net.network_address), str(net.netmask))


def _address_mark(address: str) -> int:
    """ct_mark of a floating IP's DNAT connections: its address as a 32-bit number."""
    return int(ipaddress.IPv4Address(address))


def _f(table: Table, priority: int, match: dict, actions: Iterable = (), goto=None) -> Flow:
    return flow(Feature.ROUTER, table, priority, match, tuple(actions), goto)


def _arp_responder(port: int, address: str, mac: str) -> Flow:
    return _f(Table.UPLINK, 200, {Reg.SRC_PORT: port, "eth_type": ETH_ARP, "arp_op": 1,
                                  "arp_tpa": address}, arp_responder.reply_actions(address, mac))


def compile(dp: DatapathContext) -> list[Flow]:
    """Feature entry point: the router, on the datapath that has the public port."""
    if not dp.routes:
        return []
    return compile_router(dp.view, dp.settings.router, dp.binding.public_port)


def compile_router(view: StateView, settings: RouterSettings, public_port: int) -> list[Flow]:
    """All router flows for the datapath whose public port is ``public_port``: for the
    networks this network host serves (``settings.serves``: ``settings.host`` is their
    ``host``); other networks' fixed ranges are dropped here (their own network host routes
    them, and projects stay isolated)."""
    rs = settings
    nets = [n for n in view.networks.values() if rs.serves(n)]
    served = {n.id for n in nets}
    cidrs = [_cidr(n.cidr) for n in nets]
    vifs_by_net = {n.id: [v for v in view.vifs if v.network_id == n.id] for n in nets}
    floating = [f for f in view.floating_ips if f.network_id in served]
    first_floating: dict[str, str] = {}
    for f in floating:
        first_floating.setdefault(f.fixed_address, f.address)
    vpns = [n for n in nets if n.vpn_running and n.vpn_public_address and n.vpn_public_port]
    snat_addresses = sorted({rs.routing_source_ip} | {f.address for f in floating})
    router_addresses = sorted(set(snat_addresses) | {n.vpn_public_address for n in vpns})
    ip = {"eth_type": ETH_IP}
    flows: list[Flow] = []

    # Classification of the public port, and routed traffic from the tenant networks.
    tag = ({"vlan_vid": vlan_vid(rs.public_vlan)}, [PopVlan()]) if rs.public_vlan else \
        ({"vlan_vid": OFPVID_NONE}, [])
    flows.append(flow(Feature.ROUTER, Table.CLASSIFY, PRIO_PUBLIC_PORT,
                      {"in_port": public_port, **tag[0]},
                      tag[1] + [SetField(Reg.SRC_PORT, public_port)], goto=Table.UPLINK))
    for net in nets:
        flows.append(_f(Table.SERVICES, PRIO_ROUTED,
                        {**ip, Reg.NET: net.key, "eth_dst": net.gateway_mac},
                        goto=Table.L3_UNSNAT))

    # UPLINK: answer ARP for the router's addresses, learn the gateway, accept what is ours.
    flows += [_arp_responder(public_port, a, rs.mac) for a in router_addresses]
    flows.append(_f(Table.UPLINK, 150, {Reg.SRC_PORT: public_port, "eth_type": ETH_ARP,
                                        "arp_op": 2, "arp_tpa": rs.routing_source_ip},
                    [Controller()]))
    for a in router_addresses:
        flows.append(_f(Table.UPLINK, 100, {**ip, "eth_dst": rs.mac, "ipv4_dst": a},
                        goto=Table.L3_UNSNAT))
    for c in cidrs:  # replies to un-NATed connections (metadata host, dmz): checked by conntrack
        flows.append(_f(Table.UPLINK, 90, {**ip, "eth_dst": rs.mac, "ipv4_dst": c},
                        goto=Table.L3_UNSNAT))

    # L3_UNSNAT
    for a in snat_addresses:
        flows.append(_f(Table.L3_UNSNAT, 100, {**ip, "ipv4_dst": a},
                        [Ct(SNAT_ZONE, Table.L3_DNAT, nat=Nat())]))
    flows.append(_f(Table.L3_UNSNAT, 90, {**ip, Reg.SRC_PORT: public_port},
                    [Ct(SNAT_ZONE, Table.L3_DNAT, nat=Nat())]))

    # L3_DNAT: nobody outside opens connections to fixed IPs; invalid packets die here.
    for c in cidrs:
        flows.append(_f(Table.L3_DNAT, 300, {**ip, Reg.SRC_PORT: public_port, "ipv4_dst": c,
                                             "ct_state": ct_state(plus=CT_NEW | CT_TRK)}))
    flows.append(_f(Table.L3_DNAT, 300, {**ip, "ct_state": ct_state(plus=CT_INV | CT_TRK)}))
    # A floating IP's connections carry its address in ct_mark, and pass only while it still
    # points at the same fixed IP: re-pointed elsewhere, old connections must not reach the
    # old instance through their lingering DNAT entry (metadata/VPN: mark 0).
    dnat_targets = [({**ip, "ipv4_dst": f.address}, Nat("dst", f.fixed_address),
                     _address_mark(f.address)) for f in floating]
    if rs.metadata_host:
        dnat_targets.append(({**ip, "ip_proto": TCP, "ipv4_dst": METADATA_IP, "tcp_dst": 80},
                             Nat("dst", rs.metadata_host, rs.metadata_port), 0))
    for n in vpns:
        dnat_targets.append(({**ip, "ip_proto": UDP, "ipv4_dst": n.vpn_public_address,
                              "udp_dst": n.vpn_public_port},
                             Nat("dst", n.vpn_private_address, VPN_PRIVATE_PORT), 0))
    for match, nat, mark in dnat_targets:
        flows.append(_f(Table.L3_DNAT, 100, match, [Ct(DNAT_ZONE, Table.L3_DNAT_COMMIT, nat=Nat())]))
        marks = (SetField("ct_mark", mark),) if mark else ()
        flows.append(_f(Table.L3_DNAT_COMMIT, 100,
                        {**match, "ct_state": ct_state(plus=CT_NEW | CT_TRK)},
                        [SetField(DNAT_DONE, 1),
                         Ct(DNAT_ZONE, Table.L3_ROUTE, commit=True, nat=nat, marks=marks)]))
    for state in (CT_EST, CT_REL):  # an established original-direction packet was DNATed
        est = {"ct_state": ct_state(plus=state | CT_TRK, minus=CT_RPL)}
        for f in floating:       # ... to the fixed IP its floating IP points at now
            flows.append(_f(Table.L3_DNAT_COMMIT, 60,
                            {**est, **ip, "ct_mark": _address_mark(f.address),
                             "ipv4_dst": f.fixed_address},
                            [SetField(DNAT_DONE, 1)], goto=Table.L3_ROUTE))
        flows.append(_f(Table.L3_DNAT_COMMIT, 50, {**est, "ct_mark": 0},
                        [SetField(DNAT_DONE, 1)], goto=Table.L3_ROUTE))
        flows.append(_f(Table.L3_DNAT_COMMIT, 40, est))      # a floating IP re-pointed: drop

    # L3_ROUTE: tenant fixed IPs (wherever their VIF is: delivery finds the port or trunk).
    for net in nets:
        for vif in vifs_by_net[net.id]:
            for address in vif.addresses:
                flows.append(_f(Table.L3_ROUTE, 200, {**ip, "ipv4_dst": address},
                                [DecTtl(), SetField("eth_src", net.gateway_mac),
                                 SetField("eth_dst", vif.mac), SetField(Reg.NET, net.key),
                                 SetField(TO_TENANT, 1)], goto=Table.L3_UNDNAT))
    flows.append(_f(Table.L3_ROUTE, 100, {**ip, Reg.SRC_PORT: public_port}))  # not for us: drop
    for n in view.networks.values():    # another network host's tenants: not through here
        if n.id not in served:
            flows.append(_f(Table.L3_ROUTE, 150, {**ip, "ipv4_dst": _cidr(n.cidr)}))
    if rs.external_gateway_mac:
        flows.append(_f(Table.L3_ROUTE, 50, ip,
                        [DecTtl(), SetField("eth_src", rs.mac),
                         SetField("eth_dst", rs.external_gateway_mac), SetField(TO_TENANT, 0)],
                        goto=Table.L3_UNDNAT))

    # L3_UNDNAT: replies from DNAT backends (floating-IP instances, metadata host, VPN).
    flows.append(_f(Table.L3_UNDNAT, 200, {DNAT_DONE: 1}, goto=Table.L3_SNAT))
    backends = [{**ip, "ipv4_src": fixed} for fixed in sorted(first_floating)]
    if rs.metadata_host:
        backends.append({**ip, "ip_proto": TCP, "ipv4_src": rs.metadata_host,
                         "tcp_src": rs.metadata_port})
    backends += [{**ip, "ip_proto": UDP, "ipv4_src": n.vpn_private_address,
                  "udp_src": VPN_PRIVATE_PORT} for n in vpns]
    flows += [_f(Table.L3_UNDNAT, 100, match, [Ct(DNAT_ZONE, Table.L3_SNAT, nat=Nat())])
              for match in backends]

    # L3_SNAT
    no_snat = ([rs.metadata_host] if rs.metadata_host else []) + list(rs.dmz_cidrs)
    for c in cidrs:
        src = {**ip, "ipv4_src": c}
        for dst in no_snat:
            flows.append(_f(Table.L3_SNAT, 300, {**src, "ipv4_dst": _cidr(dst)},
                            [Ct(SNAT_ZONE, commit=True)], goto=Table.L3_OUTPUT))
        flows.append(_f(Table.L3_SNAT, 200, {**src, TO_TENANT: 1, DNAT_DONE: 1},
                        [Ct(SNAT_ZONE, Table.L3_SNAT_COMMIT, nat=Nat())]))      # hairpin
        flows.append(_f(Table.L3_SNAT, 150, {**src, TO_TENANT: 1}))           # isolation
        flows.append(_f(Table.L3_SNAT, 100, src, [Ct(SNAT_ZONE, Table.L3_SNAT_COMMIT, nat=Nat())]))

    new = {"ct_state": ct_state(plus=CT_NEW | CT_TRK)}
    for fixed, address in sorted(first_floating.items()):
        flows.append(_f(Table.L3_SNAT_COMMIT, 200, {**ip, **new, "ipv4_src": fixed},
                        [Ct(SNAT_ZONE, commit=True, nat=Nat("src", address))],
                        goto=Table.L3_OUTPUT))
    for c in cidrs:
        flows.append(_f(Table.L3_SNAT_COMMIT, 100, {**ip, **new, "ipv4_src": c},
                        [Ct(SNAT_ZONE, commit=True, nat=Nat("src", rs.routing_source_ip))],
                        goto=Table.L3_OUTPUT))
    for state in (CT_EST, CT_REL):
        flows.append(_f(Table.L3_SNAT_COMMIT, 50, {"ct_state": ct_state(plus=state | CT_TRK)},
                        goto=Table.L3_OUTPUT))

    # L3_OUTPUT
    flows.append(_f(Table.L3_OUTPUT, 100, {TO_TENANT: 1}, goto=Table.L2_LOOKUP))
    out_tag = [PushVlan(), SetField("vlan_vid", vlan_vid(rs.public_vlan))] if rs.public_vlan else []
    flows.append(_f(Table.L3_OUTPUT, 50, ip, out_tag + [Output(public_port)]))
    flows += compile_ipv6(view, rs, public_port, out_tag)
    return flows


def compile_ipv6(view: StateView, rs: RouterSettings, public_port: int,
                 out_tag: list) -> list[Flow]:
    """IPv6 routing between the public side and the tenants' /64s (no NAT); nothing without
    ``public_ip_v6``."""
    public_v6 = rs.public_address_v6
    if public_v6 is None:
        return []
    ip6 = {"eth_type": ETH_IPV6}
    icmp6 = {**ip6, "ip_proto": ICMPV6, Reg.SRC_PORT: public_port}
    nets = [n for n in view.networks.values() if n.cidr_v6 and rs.serves(n)]
    flows = [
        # UPLINK: who-has the router's address (answered by the controller), the external
        # gateway's advertisements to the router (its MAC learned), routed packets in
        _f(Table.UPLINK, 200, {**icmp6, "icmpv6_type": ND_NS, "ipv6_nd_target": public_v6},
           [Controller()]),
        _f(Table.UPLINK, 150, {**icmp6, "icmpv6_type": ND_NA, "eth_dst": rs.mac}, [Controller()]),
        # L3_ROUTE: from outside, only to a tenant address (below); never link-local/multicast,
        # never from one tenant /64 to another (projects stay isolated)
        _f(Table.L3_ROUTE, 100, {**ip6, Reg.SRC_PORT: public_port}),
        *(_f(Table.L3_ROUTE, 150, {**ip6, "ipv6_dst": _cidr(c)}) for c in IPV6_NOT_ROUTED),
        _f(Table.L3_OUTPUT, 50, ip6, out_tag + [Output(public_port)]),
    ]
    for net in nets:
        flows.append(_f(Table.SERVICES, PRIO_ROUTED,
                        {**ip6, Reg.NET: net.key, "eth_dst": net.gateway_mac},
                        goto=Table.L3_UNSNAT))
        flows.append(_f(Table.UPLINK, 100, {**ip6, Reg.SRC_PORT: public_port, "eth_dst": rs.mac,
                                            "ipv6_dst": _cidr(net.cidr_v6)},
                        goto=Table.L3_UNSNAT))
        flows.append(_f(Table.L3_ROUTE, 150, {**ip6, "ipv6_dst": _cidr(net.cidr_v6)}))
    for vif in view.vifs:
        net = view.networks.get(vif.network_id)
        if net is None or not net.cidr_v6 or not rs.serves(net):
            continue
        for address in vif.addresses_v6:
            flows.append(_f(Table.L3_ROUTE, 200,
                            {**ip6, Reg.SRC_PORT: public_port, "ipv6_dst": address},
                            [DecTtl(), SetField("eth_src", net.gateway_mac),
                             SetField("eth_dst", vif.mac), SetField(Reg.NET, net.key),
                             SetField(TO_TENANT, 1)], goto=Table.L3_UNDNAT))
    if rs.external_gateway_v6_mac:
        flows.append(_f(Table.L3_ROUTE, 50, ip6,
                        [DecTtl(), SetField("eth_src", rs.mac),
                         SetField("eth_dst", rs.external_gateway_v6_mac), SetField(TO_TENANT, 0)],
                        goto=Table.L3_UNDNAT))
    return flows

