"""Table SERVICES: punt a VIF's DHCP client traffic to the controller's responder.

No match on nw_dst, so unicast RENEWING requests to the server address are punted too
(Neutron's OVS DHCP matched only broadcast and left renewals unanswered).
"""

from __future__ import annotations

from sdn.flows.model import Controller, Feature, Flow, Meter, Reg, Table, flow

PRIO_PUNT = 300


def compile_vif(ofport: int, meter_id: int | None = None) -> list[Flow]:
    """Send udp 68->67 from VIF ``ofport`` to the controller (through ``meter_id`` if given)."""
    actions = ([Meter(meter_id)] if meter_id else []) + [Controller()]
    return [flow(Feature.DHCP, Table.SERVICES, PRIO_PUNT,
                 {Reg.SRC_PORT: ofport, "eth_type": 0x0800, "ip_proto": 17,
                  "udp_src": 68, "udp_dst": 67},
                 actions)]
