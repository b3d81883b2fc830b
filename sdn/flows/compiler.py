"""Compile the whole desired flow table of one datapath from state.

``compile_datapath`` is the single entry point the controller calls: state snapshot and the
datapath's ports in, flows out. Pure: no I/O, deterministic order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from sdn.flows import arp_responder, classifier, dhcp, l2, pipeline, port_security, router
from sdn.flows.model import Flow
from sdn.view import StateView, VifView


@dataclass(frozen=True)
class Binding:
    """Where state meets this datapath: VIFs by ofport, the trunk ofports, the public
    port (ofport of public_interface) if this datapath is the network host's router, and the
    ofports whose relayed DHCP this datapath answers (``[ovs] dhcp_relay_interfaces``)."""

    vifs: dict[int, VifView]
    trunks: tuple[int, ...]
    public_port: int | None = None
    relays: tuple[int, ...] = ()


def bind_ports(view: StateView, ports: Mapping[str, int], trunk_names: frozenset[str],
               public_name: str | None = None,
               relay_names: frozenset[str] = frozenset()) -> Binding:
    """Match the datapath's ports (name -> ofport) to VIFs (by port name), trunks, the
    public port and the DHCP relay ports."""
    by_name = {vif.port_name: vif for vif in view.vifs if vif.network_id in view.networks}
    vifs = {ofport: by_name[name] for name, ofport in ports.items() if name in by_name}
    trunks = tuple(sorted(ofport for name, ofport in ports.items() if name in trunk_names))
    relays = tuple(sorted(ofport for name, ofport in ports.items() if name in relay_names))
    return Binding(vifs, trunks, ports.get(public_name) if public_name else None, relays)


def compile_datapath(view: StateView, binding: Binding, dhcp_rate_pps: int | None = None,
                     router_settings: router.RouterSettings | None = None,
                     relay_rate_pps: int | None = None) -> list[Flow]:
    """All flows of one datapath.

    A network is present here if one of its VIFs is plugged here, or if the datapath has two
    or more trunks (it may be a transit switch). ``dhcp_rate_pps`` rate-limits each VIF's DHCP
    punts through its meter (``sdn.flows.dhcp.compile_meters`` gives the meters).
    With ``router_settings``, the datapath holding the public port routes (sdn.flows.router);
    the others send gateway-bound frames over their trunks towards it. Relayed DHCP from
    ``binding.relays`` is punted through each relay port's meter at ``relay_rate_pps``.
    """
    local_by_net: dict[int, list[tuple[int, VifView]]] = defaultdict(list)
    for port, vif in sorted(binding.vifs.items()):
        local_by_net[vif.network_id].append((port, vif))
    present = set(local_by_net)
    if len(binding.trunks) >= 2:
        present |= {vif.network_id for vif in view.vifs if vif.network_id in view.networks}
    networks = [view.networks[nid] for nid in sorted(present)]

    flows = pipeline.compile_defaults()
    for port, vif in sorted(binding.vifs.items()):
        network = view.networks[vif.network_id]
        flows += classifier.compile_vif(port, network)
        flows += port_security.compile_vif(port, vif)
        flows += dhcp.compile_vif(port, dhcp_rate_pps)
    for trunk in binding.trunks:
        flows += classifier.compile_trunk(trunk, networks)
    for relay in binding.relays:
        flows += dhcp.compile_relay(relay, relay_rate_pps)
    local_uuids = {vif.uuid for vif in binding.vifs.values()}
    remote_by_net: dict[int, list[VifView]] = defaultdict(list)
    for vif in view.vifs:
        if vif.uuid not in local_uuids:
            remote_by_net[vif.network_id].append(vif)
    routed_elsewhere = router_settings is not None and binding.public_port is None
    for network in networks:
        flows += arp_responder.compile_network(network)
        flows += l2.compile_network(network, local_by_net[network.id],
                                    remote_by_net[network.id], list(binding.trunks),
                                    gateway_remote=routed_elsewhere)
    if router_settings is not None and binding.public_port is not None:
        flows += router.compile_router(view, router_settings, binding.public_port)
    return flows
