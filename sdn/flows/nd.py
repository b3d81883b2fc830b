"""Table SERVICES: IPv6 neighbour discovery with the gateway (RFC 4861), answered by the controller.

Per VIF port whose network has an IPv6 prefix (``NetworkView.cidr_v6``), through the port's
own packets/s meter (``model.entry_id(Feature.ND, ofport)``, rate ``dhcp_rate_pps``):

- router solicitations (ICMPv6 133) -> controller, answered with the network's router
  advertisement (``sdn.dhcp.ra.answer``);
- neighbour solicitations for the gateway's addresses (``gateway_v6`` and ``gateway_lla``)
  -> controller, answered with a neighbour advertisement from ``gateway_mac``
  (``sdn.dhcp.ra.neighbor_advertisement``).

Why not in the switch, as the ARP responder is: an NA differs from the NS in its option type
(target instead of source link-layer address, RFC 4861 §4.4), which OpenFlow 1.3 cannot
rewrite; OVS has an extension field for it (``nd_options_type``) that os-ken cannot encode.
A guest resolves its router once per reachable time (~30 s), so the punt costs little.
Unsolicited router advertisements are sent by the controller (``sdn.apps.ipv6``).
"""

from __future__ import annotations

from collections.abc import Callable

from sdn.flows.context import DatapathContext
from sdn.flows.model import (Controller, EthType, Feature, Flow, IpProto, Meter, MeterEntry, Reg,
                             Table, entry_id, flow)
from sdn.view import NetworkView

PRIO_PUNT = 300
ND_RS, ND_NS = 133, 135


def meter_id(ofport: int) -> int:
    """The ND punt meter of VIF port ``ofport``."""
    return entry_id(Feature.ND, ofport)


def compile(dp: DatapathContext) -> list:
    """Feature entry point: punt flows (and meters) of every VIF on an IPv6 network."""
    return ipv6_vif_punts(dp, Feature.ND, compile_vif)


def ipv6_vif_punts(dp: DatapathContext, feature: Feature,
                   compile_vif: Callable[[int, NetworkView, int | None], list[Flow]]) -> list:
    """``compile_vif(ofport, network, rate_pps)`` for every VIF plugged here whose network has
    an IPv6 prefix, and its ``feature`` packets/s meter (``entry_id(feature, ofport)``, rate
    ``dhcp_rate_pps``; none when unlimited)."""
    rate = dp.settings.dhcp_rate_pps
    out: list = []
    for port, vif in dp.vifs:
        net = dp.network_of(vif)
        if net.cidr_v6:
            out += compile_vif(port, net, rate)
            if rate:
                out.append(MeterEntry(feature, entry_id(feature, port), rate))
    return out


def ipv6_vif_punt(dp: DatapathContext, feature: Feature,
                  compile_vif: Callable[[int, NetworkView, int | None], list[Flow]],
                  port: int, vif) -> list:
    """One VIF's share of :func:`ipv6_vif_punts` (the per-port split, ``sdn.flows.incremental``)."""
    net, rate = dp.network_of(vif), dp.settings.dhcp_rate_pps
    if not net.cidr_v6:
        return []
    return compile_vif(port, net, rate) + (
        [MeterEntry(feature, entry_id(feature, port), rate)] if rate else [])


def port_scope(dp: DatapathContext) -> tuple:
    return (dp.settings.dhcp_rate_pps,)


def compile_port(dp: DatapathContext, port: int, vif) -> list:
    return ipv6_vif_punt(dp, Feature.ND, compile_vif, port, vif)


def compile_shared(_dp: DatapathContext) -> list:
    return []


def punt(meter: int | None) -> list:
    """Actions sending a packet to the controller, through ``meter`` first when given."""
    return ([Meter(meter)] if meter else []) + [Controller()]


def compile_vif(ofport: int, net: NetworkView, rate_pps: int | None = None) -> list[Flow]:
    """RS, and NS for ``net``'s gateway addresses, from VIF ``ofport`` to the controller."""
    actions = punt(meter_id(ofport) if rate_pps else None)
    icmp6 = {Reg.SRC_PORT: ofport, "eth_type": EthType.IPV6, "ip_proto": IpProto.ICMPV6}
    flows = [flow(Feature.ND, Table.SERVICES, PRIO_PUNT, {**icmp6, "icmpv6_type": ND_RS}, actions)]
    for target in _gateway_addresses(net):
        flows.append(flow(Feature.ND, Table.SERVICES, PRIO_PUNT,
                          {**icmp6, "icmpv6_type": ND_NS, "ipv6_nd_target": target}, actions))
    return flows


def _gateway_addresses(net: NetworkView) -> list[str]:
    return [a for a in (net.gateway_v6, net.gateway_lla) if a]
