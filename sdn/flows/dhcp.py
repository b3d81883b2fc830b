"""Table SERVICES: punt a VIF's DHCP client traffic to the controller's responder.
Table CLASSIFY: punt relayed DHCP (udp 67->67, RFC 1542) from a relay port, tagged or not.

No match on nw_dst, so unicast RENEWING requests to the server address are punted too
(Neutron's OVS DHCP matched only broadcast and left renewals unanswered). Each VIF's punts
pass its own packets-per-second meter, so one VIF flooding DISCOVERs cannot starve the
others or the controller.
"""

from __future__ import annotations

from collections.abc import Iterable

from sdn.flows.model import Controller, Feature, Flow, Meter, Reg, Table, flow

PRIO_PUNT = 300
#: above the classifier's port flows: a relay port is also a trunk
PRIO_RELAY_PUNT = 200
#: sdn's meters are METER_BASE | ofport: recognisable in dump-meters, clear of other users.
METER_BASE = 0x5D000000
METER_MASK = 0xFF000000


def meter_id(ofport: int) -> int:
    """The DHCP punt meter of VIF ``ofport``."""
    return METER_BASE | ofport


def is_sdn_meter(mid: int) -> bool:
    return mid & METER_MASK == METER_BASE


def compile_vif(ofport: int, rate_pps: int | None = None) -> list[Flow]:
    """Send udp 68->67 from VIF ``ofport`` to the controller, through its meter if
    ``rate_pps`` is set."""
    actions = ([Meter(meter_id(ofport))] if rate_pps else []) + [Controller()]
    return [flow(Feature.DHCP, Table.SERVICES, PRIO_PUNT,
                 {Reg.SRC_PORT: ofport, "eth_type": 0x0800, "ip_proto": 17,
                  "udp_src": 68, "udp_dst": 67},
                 actions)]


def compile_meters(vif_ports: Iterable[int], rate_pps: int | None) -> dict[int, int]:
    """Desired meters: meter id -> rate (packets/s), one per VIF port; none if unlimited."""
    return {meter_id(port): rate_pps for port in vif_ports} if rate_pps else {}


def compile_relay(ofport: int, rate_pps: int | None = None) -> list[Flow]:
    """Send relayed BOOTREQUESTs (udp 67->67) arriving on relay port ``ofport`` to the
    controller before classification, so the packet-in keeps any 802.1Q tag for the reply
    (see ``sdn.dhcp.relay``); through the port's meter if ``rate_pps`` is set."""
    actions = ([Meter(meter_id(ofport))] if rate_pps else []) + [Controller()]
    return [flow(Feature.DHCP, Table.CLASSIFY, PRIO_RELAY_PUNT,
                 {"in_port": ofport, "eth_type": 0x0800, "ip_proto": 17,
                  "udp_src": 67, "udp_dst": 67},
                 actions)]
