"""Table DELIVERY: L2 forwarding inside one network (segment key in reg6), never across.

Known MACs come from state, not learning: a local VIF's MAC goes to its port, a VIF of the same
network elsewhere goes out the trunks (tagged with the network's VLAN), and broadcast/multicast
floods to the network's local VIFs plus the trunks. Anything else (another project's MAC, an
unknown MAC) hits the table's drop. Output to the ingress port is dropped by OpenFlow itself,
so floods never echo back. Trunks must form a tree.
"""

from __future__ import annotations

from sdn.flows.model import Feature, Flow, Output, PushVlan, Reg, SetField, Table, flow, vlan_vid
from sdn.view import NetworkView, VifView

PRIO_LOCAL = 100
PRIO_REMOTE = 90
PRIO_FLOOD = 50
MULTICAST = ("01:00:00:00:00:00", "01:00:00:00:00:00")


def _to_trunks(network: NetworkView, trunks: list[int]) -> list:
    if not trunks:
        return []
    tag = [PushVlan(), SetField("vlan_vid", vlan_vid(network.vlan))] if network.vlan else []
    return tag + [Output(p) for p in trunks]


def compile_network(network: NetworkView, local: list[tuple[int, VifView]],
                    remote: list[VifView], trunks: list[int],
                    gateway_remote: bool = False) -> list[Flow]:
    """Delivery flows of one network on one datapath.

    ``local`` is [(ofport, vif)] plugged here; ``remote`` the network's VIFs elsewhere;
    ``trunks`` the trunk ofports (sorted for stable output); ``gateway_remote`` sends frames
    for the gateway MAC over the trunks (the router is on another datapath).
    """
    key = network.key
    flows = [flow(Feature.L2, Table.DELIVERY, PRIO_LOCAL, {Reg.NET: key, "eth_dst": vif.mac},
                  [Output(port)]) for port, vif in local]
    to_trunks = _to_trunks(network, trunks)
    if to_trunks:
        local_macs = {vif.mac for _, vif in local}
        flows += [flow(Feature.L2, Table.DELIVERY, PRIO_REMOTE, {Reg.NET: key, "eth_dst": vif.mac},
                       to_trunks) for vif in remote if vif.mac not in local_macs]
        if gateway_remote:
            flows.append(flow(Feature.L2, Table.DELIVERY, PRIO_REMOTE,
                              {Reg.NET: key, "eth_dst": network.gateway_mac}, to_trunks))
    flood = [Output(port) for port, _ in sorted(local, key=lambda pv: pv[0])] + to_trunks
    flows.append(flow(Feature.L2, Table.DELIVERY, PRIO_FLOOD, {Reg.NET: key, "eth_dst": MULTICAST},
                      flood))
    return flows
