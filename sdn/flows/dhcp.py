"""Table SERVICES: punt a VIF's DHCP client traffic to the controller's responder.
Table CLASSIFY: punt relayed DHCP (udp 67->67, RFC 1542) from a relay port, tagged or not.

No match on nw_dst, so unicast RENEWING requests to the server address are punted too
(Neutron's OVS DHCP matched only broadcast and left renewals unanswered). Each VIF's punts
pass its own packets-per-second meter, so one VIF flooding DISCOVERs cannot starve the
others or the controller. Meters are ``model.entry_id(Feature.DHCP, ofport)``.
"""

from __future__ import annotations

from sdn.flows.context import DatapathContext
from sdn.flows.model import (Controller, EthType, Feature, Flow, IpProto, Meter, MeterEntry, Reg,
                             Table, entry_id, flow)

PRIO_PUNT = 300
#: above the classifier's port flows: a relay port is also a trunk
PRIO_RELAY_PUNT = 200


def meter_id(ofport: int) -> int:
    """The DHCP punt meter of VIF or relay port ``ofport``."""
    return entry_id(Feature.DHCP, ofport)


def compile(dp: DatapathContext) -> list:
    """Feature entry point: punt flows of every VIF and relay port, and their meters."""
    vif_rate, relay_rate = dp.settings.dhcp_rate_pps, dp.settings.relay_rate_pps
    out: list = []
    for port, _vif in dp.vifs:
        out += compile_vif(port, vif_rate)
    for relay in dp.binding.relays:
        out += compile_relay(relay, relay_rate)
    out += compile_meters((port for port, _ in dp.vifs), vif_rate)
    out += compile_meters(dp.binding.relays, relay_rate)
    return out


# Per-port split (``sdn.flows.incremental``): a VIF's punt flow and meter read its port and
# the rate.
def port_scope(dp: DatapathContext) -> tuple:
    return (dp.settings.dhcp_rate_pps,)


def compile_port(dp: DatapathContext, port: int, _vif) -> list:
    rate = dp.settings.dhcp_rate_pps
    return compile_vif(port, rate) + compile_meters((port,), rate)


def compile_shared(dp: DatapathContext) -> list:
    rate = dp.settings.relay_rate_pps
    return ([f for relay in dp.binding.relays for f in compile_relay(relay, rate)]
            + compile_meters(dp.binding.relays, rate))


def compile_vif(ofport: int, rate_pps: int | None = None) -> list[Flow]:
    """Send udp 68->67 from VIF ``ofport`` to the controller, through its meter if
    ``rate_pps`` is set."""
    actions = ([Meter(meter_id(ofport))] if rate_pps else []) + [Controller()]
    return [flow(Feature.DHCP, Table.SERVICES, PRIO_PUNT,
                 {Reg.SRC_PORT: ofport, "eth_type": EthType.IPV4, "ip_proto": IpProto.UDP,
                  "udp_src": 68, "udp_dst": 67},
                 actions)]


def compile_meters(ports, rate_pps: int | None) -> list[MeterEntry]:
    """One packets/s meter per port; none if unlimited."""
    if not rate_pps:
        return []
    return [MeterEntry(Feature.DHCP, meter_id(port), rate_pps) for port in ports]


def compile_relay(ofport: int, rate_pps: int | None = None) -> list[Flow]:
    """Send relayed BOOTREQUESTs (udp 67->67) arriving on relay port ``ofport`` to the
    controller before classification, so the packet-in keeps any 802.1Q tag for the reply
    (see ``sdn.dhcp.relay``); through the port's meter if ``rate_pps`` is set."""
    actions = ([Meter(meter_id(ofport))] if rate_pps else []) + [Controller()]
    return [flow(Feature.DHCP, Table.CLASSIFY, PRIO_RELAY_PUNT,
                 {"in_port": ofport, "eth_type": EthType.IPV4, "ip_proto": IpProto.UDP,
                  "udp_src": 67, "udp_dst": 67},
                 actions)]
