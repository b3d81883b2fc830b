"""Tables L2_LOOKUP and OUTPUT: L2 forwarding inside one network (segment key in reg6), never
across.

Known MACs come from state, not learning. In L2_LOOKUP a local VIF's MAC sets reg7 to its port
and goes on to the ingress ACL, then OUTPUT sends to reg7; a VIF of the same network elsewhere
goes out the trunks (tagged with the network's VLAN; its own hypervisor runs its ingress ACL);
broadcast/multicast applies the network's flood group. Anything else (another project's MAC, an
unknown MAC) hits the table's drop. Output to the ingress port is dropped by OpenFlow itself,
so floods never echo back. Trunks must form a tree.

Flood groups (type all, OpenFlow 1.3 §5.6.1): one bucket per local VIF and one for the trunks.
A VIF's copy goes straight out of its port. When a feature filters what some VIFs receive
(``dp.ingress_filtered``: security groups), IPv4/IPv6 floods take a second group whose copies
to those VIFs set reg7 and resubmit to the ingress ACL, so each copy meets its receiver's
security groups; ARP and other non-IP floods keep the plain group. Limits of one flood on OVS:
a translation may do at most 4,096 resubmits (a filtered copy costs 2), so an IP flood reaches
~2,000 filtered ports of one network on one switch;
and at most 64 KB of datapath actions, ~8,000 outputs. One OpenFlow message holds at most
64 KB (~2,000 output buckets), so a network with more than ``FLOOD_CHUNK`` local VIFs gets a
root group whose buckets apply chunk groups of ``FLOOD_CHUNK`` VIFs each (5,000 VIFs of one
network on one switch are tested on OVS).
Group ids: ``entry_id(Feature.L2, slot << 4 | variant << 3 | chunk)``, slot = network id mod
4,096, variant 1 = the IP group, chunk 0 = root. A group
id must keep its meaning across syncs (groups change before the flow bundle that stops using
them), so it comes from the network, not from its position on the datapath; two networks of
one datapath whose ids collide mod 4,096 take the next free slots in id order.
"""

from __future__ import annotations

from functools import lru_cache

from sdn.flows.context import DatapathContext
from sdn.flows.model import (EthType, Feature, Flow, Group, GroupEntry, Output, PushVlan, Reg, Resubmit,
                             SetField, Table, entry_id, flow, vlan_vid)
from sdn.flows.pipeline import next_table
from sdn.view import NetworkView, VifView

PRIO_LOCAL = 100
PRIO_REMOTE = 90
PRIO_FLOOD = 50
PRIO_OUTPUT = 100
MULTICAST = ("01:00:00:00:00:00", "01:00:00:00:00:00")
FLOOD_CHUNK = 1000
_CHUNKS_MAX = 7       # chunk bits 0-2; bit 3 tells the IP variant
_NETWORKS_MAX = 4096


def compile(dp: DatapathContext) -> list:
    """Feature entry point: lookup and flood of every network present, output of every VIF."""
    out: list = []
    slots = flood_slots([n.id for n in dp.networks])
    for network in dp.networks:
        index = slots[network.id]
        out += compile_network(network, dp.local_by_net.get(network.id, []),
                               dp.remote_by_net.get(network.id, []), list(dp.binding.trunks),
                               gateway_remote=dp.gateway_remote(network), index=index,
                               filtered=dp.ingress_filtered)
    out += [flow(Feature.L2, Table.OUTPUT, PRIO_OUTPUT, {Reg.DST_PORT: port}, [Output(port)])
            for port, _ in dp.vifs]
    return out


# Split for ``sdn.flows.incremental``: a VIF's output flow per port; lookup flows and flood
# groups per network, from exactly what network_inputs returns.
def port_scope(_dp: DatapathContext) -> tuple:
    return ()


def compile_port(_dp: DatapathContext, port: int, _vif: VifView) -> list:
    return [flow(Feature.L2, Table.OUTPUT, PRIO_OUTPUT, {Reg.DST_PORT: port}, [Output(port)])]


def compile_shared(_dp: DatapathContext) -> list:
    return []


def network_inputs(dp: DatapathContext, network: NetworkView) -> tuple:
    """Everything :func:`compile_network` reads for ``network`` here (compared with ==)."""
    local = tuple(dp.local_by_net.get(network.id, ()))
    return (network, local, tuple(dp.remote_by_net.get(network.id, ())), dp.binding.trunks,
            dp.gateway_remote(network), _slots(tuple(n.id for n in dp.networks))[network.id],
            dp.ingress_filtered & {port for port, _ in local})


def compile_network_part(_dp: DatapathContext, inputs: tuple) -> list:
    network, local, remote, trunks, gateway_remote, index, filtered = inputs
    return compile_network(network, list(local), list(remote), list(trunks),
                           gateway_remote=gateway_remote, index=index, filtered=filtered)


@lru_cache(maxsize=4)
def _slots(network_ids: tuple[int, ...]) -> dict[int, int]:
    return flood_slots(list(network_ids))


def _to_trunks(network: NetworkView, trunks: list[int]) -> list:
    if not trunks:
        return []
    tag = [PushVlan(), SetField("vlan_vid", vlan_vid(network.vlan))] if network.vlan else []
    return tag + [Output(p) for p in trunks]


def flood_slots(network_ids: list[int]) -> dict[int, int]:
    """Network id -> flood group slot (0-4095): id mod 4,096, or the next free one on a
    collision (in id order, so every controller agrees). ValueError beyond 4,096 networks."""
    if len(network_ids) > _NETWORKS_MAX:
        raise ValueError(f"more than {_NETWORKS_MAX} networks on one datapath")
    taken: dict[int, int] = {}
    out = {}
    for nid in sorted(network_ids):
        slot = nid % _NETWORKS_MAX
        while slot in taken:
            slot = (slot + 1) % _NETWORKS_MAX
        taken[slot] = nid
        out[nid] = slot
    return out


def flood_group_id(index: int, chunk: int = 0, filtered: bool = False) -> int:
    """Group id of the flood group in slot ``index`` (see :func:`flood_slots`; chunk 0: the
    group the flood flow applies; ``filtered``: the IP variant whose copies to filtered ports
    pass through the ingress ACL)."""
    if not 0 <= index < _NETWORKS_MAX:
        raise ValueError(f"more than {_NETWORKS_MAX} networks on one datapath")
    return entry_id(Feature.L2, index << 4 | (_CHUNKS_MAX + 1 if filtered else 0) | chunk)


def flood_groups(index: int, ports: list[int], to_trunks: list,
                 filtered: frozenset[int] = frozenset()) -> list[GroupEntry]:
    """The flood group(s) of one network: first the chunk groups (if any), then the root.
    Copies to ``filtered`` ports pass through the ingress ACL; the others are output. With
    ``filtered`` non-empty these are the IP variant's groups (other ids)."""
    variant = bool(filtered)
    to_port = [(SetField(Reg.DST_PORT, port), Resubmit(Table.INGRESS_ACL)) if port in filtered
               else (Output(port),) for port in ports]
    trunk_bucket = [tuple(to_trunks)] if to_trunks else []
    root_id = flood_group_id(index, filtered=variant)
    if len(ports) <= FLOOD_CHUNK:
        return [GroupEntry(Feature.L2, root_id, tuple(to_port + trunk_bucket))]
    chunks = [to_port[i:i + FLOOD_CHUNK] for i in range(0, len(to_port), FLOOD_CHUNK)]
    if len(chunks) > _CHUNKS_MAX:
        raise ValueError(f"{len(ports)} VIFs of one network on one datapath: at most "
                         f"{FLOOD_CHUNK * _CHUNKS_MAX} can share a flood domain")
    groups = [GroupEntry(Feature.L2, flood_group_id(index, k + 1, variant), tuple(chunk))
              for k, chunk in enumerate(chunks)]
    root = GroupEntry(Feature.L2, root_id,
                      tuple((Group(g.group_id),) for g in groups) + tuple(trunk_bucket))
    return groups + [root]


def compile_network(network: NetworkView, local: list[tuple[int, VifView]],
                    remote: list[VifView], trunks: list[int],
                    gateway_remote: bool = False, index: int = 0,
                    filtered: frozenset[int] = frozenset()) -> list:
    """L2_LOOKUP flows and flood groups of one network on one datapath.

    ``local`` is [(ofport, vif)] plugged here; ``remote`` the network's VIFs elsewhere;
    ``trunks`` the trunk ofports (sorted for stable output); ``gateway_remote`` sends frames
    for the gateway MAC over the trunks (the router is on another datapath); ``index`` the
    network's flood group slot (:func:`flood_slots`); ``filtered`` the local ports whose
    flood copies pass through the ingress ACL.
    """
    key = network.key
    to_acl = next_table(Table.L2_LOOKUP)
    out: list = [flow(Feature.L2, Table.L2_LOOKUP, PRIO_LOCAL, {Reg.NET: key, "eth_dst": vif.mac},
                      [SetField(Reg.DST_PORT, port)], goto=to_acl) for port, vif in local]
    to_trunks = _to_trunks(network, trunks)
    if to_trunks:
        local_macs = {vif.mac for _, vif in local}
        out += [flow(Feature.L2, Table.L2_LOOKUP, PRIO_REMOTE, {Reg.NET: key, "eth_dst": vif.mac},
                     to_trunks) for vif in remote if vif.mac not in local_macs]
        if gateway_remote:
            out.append(flow(Feature.L2, Table.L2_LOOKUP, PRIO_REMOTE,
                            {Reg.NET: key, "eth_dst": network.gateway_mac}, to_trunks))
    ports = [port for port, _ in sorted(local, key=lambda pv: pv[0])]
    groups = flood_groups(index, ports, to_trunks)
    out += groups
    out.append(flow(Feature.L2, Table.L2_LOOKUP, PRIO_FLOOD, {Reg.NET: key, "eth_dst": MULTICAST},
                    [Group(groups[-1].group_id)]))
    acl = filtered & set(ports)
    if acl:   # IP floods meet the receivers' security groups; ARP and the rest need not
        ip_groups = flood_groups(index, ports, to_trunks, frozenset(acl))
        out += ip_groups
        out += [flow(Feature.L2, Table.L2_LOOKUP, PRIO_FLOOD + 1,
                     {Reg.NET: key, "eth_dst": MULTICAST, "eth_type": eth_type},
                     [Group(ip_groups[-1].group_id)]) for eth_type in (EthType.IPV4, EthType.IPV6)]
    return out
