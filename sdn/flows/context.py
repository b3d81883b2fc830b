"""What every feature compiles from: one datapath's view of state (``DatapathContext``).

Built once per sync by ``sdn.flows.compiler.compile_datapath``; each feature module's
``compile(dp)`` reads it and returns flows, meters and groups as data. Pure, frozen.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from sdn.view import NetworkView, StateView, VifView


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


@dataclass(frozen=True)
class RouterSettings:
    """The network host's external side (config options, plus the learned gateway MAC).

    ``routing_source_ip`` is the router's own public address (default SNAT, ARP answered);
    ``external_gateway_mac`` None means "not known yet": nothing is routed outside until the
    controller has learned it by ARP. ``public_vlan`` tags the public port when set.
    ``host`` is this network host's name (the controller's ``host`` option): the router serves
    only the networks whose ``host`` it is (None: every network, a lone network host).
    """

    routing_source_ip: str
    external_gateway: str | None = None
    external_gateway_mac: str | None = None
    public_vlan: int | None = None
    metadata_host: str | None = None
    metadata_port: int = 8775
    dmz_cidrs: tuple[str, ...] = ()
    #: IPv6 public side (config public_ip_v6 "ADDRESS/PREFIXLEN", external_gateway_v6,
    #: external_gateway_v6_mac; None: not configured / not learned yet by neighbour discovery)
    public_ip_v6: str | None = None
    external_gateway_v6: str | None = None
    external_gateway_v6_mac: str | None = None

    @property
    def public_address_v6(self) -> str | None:
        """The router's own public IPv6 address (``public_ip_v6`` without its prefix length)."""
        return str(ipaddress.ip_interface(self.public_ip_v6).ip) if self.public_ip_v6 else None

    #: this router's network host (config host); None: it serves every network
    host: str | None = None

    def serves(self, network: NetworkView) -> bool:
        """This router routes ``network`` (its floating IPs, SNAT, metadata, VPN)."""
        return self.host is None or network.host == self.host

    @property
    def mac(self) -> str:
        """The router's MAC on the public side: ``0a:58:`` + routing_source_ip bytes."""
        return "0a:58:" + ":".join(f"{b:02x}" for b in
                                   ipaddress.IPv4Address(self.routing_source_ip).packed)


@dataclass(frozen=True)
class CompileSettings:
    """Deployment options the features read (built once from config by the controller).

    ``dhcp_rate_pps``/``relay_rate_pps``: per-VIF / per-relay-port DHCP punt meters (packets/s;
    None = unmetered). ``acl_log_rate_pps``: security group drops sent to the controller. ``router``: the network host's external side (None = no routing here).
    """

    dhcp_rate_pps: int | None = None
    relay_rate_pps: int | None = None
    router: RouterSettings | None = None
    #: security group drops sampled to the controller's log (packets/s; None = not logged)
    acl_log_rate_pps: int | None = None


@dataclass(frozen=True)
class DatapathContext:
    """One datapath's share of state, with the derived lookups features need.

    A network is present here if one of its VIFs is plugged here, or if the datapath has two
    or more trunks (it may be a transit switch).
    """

    view: StateView
    binding: Binding
    settings: CompileSettings = field(default_factory=CompileSettings)
    #: local VIF ports whose ingress ACL has flows (declared by features through
    #: ``ingress_filtered(dp)``): only their flood copies pass through the ingress ACL
    ingress_filtered: frozenset[int] = frozenset()

    @cached_property
    def vifs(self) -> list[tuple[int, VifView]]:
        """[(ofport, VIF)] plugged here, by ofport."""
        return sorted(self.binding.vifs.items())

    @cached_property
    def local_by_net(self) -> dict[int, list[tuple[int, VifView]]]:
        out: dict[int, list[tuple[int, VifView]]] = defaultdict(list)
        for port, vif in self.vifs:
            out[vif.network_id].append((port, vif))
        return out

    @cached_property
    def remote_by_net(self) -> dict[int, list[VifView]]:
        """A network's VIFs plugged elsewhere (behind the trunks)."""
        local = {vif.uuid for _, vif in self.vifs}
        out: dict[int, list[VifView]] = defaultdict(list)
        for vif in self.view.vifs:
            if vif.uuid not in local:
                out[vif.network_id].append(vif)
        return out

    @cached_property
    def networks(self) -> list[NetworkView]:
        """Networks present on this datapath, by id: also those its router serves that have
        VIFs elsewhere (routed packets are delivered over the trunks)."""
        present = set(self.local_by_net)
        if len(self.binding.trunks) >= 2:
            present |= {v.network_id for v in self.view.vifs if v.network_id in self.view.networks}
        if self.routes:
            present |= {v.network_id for v in self.view.vifs if v.network_id in self.view.networks
                        and self.settings.router.serves(self.view.networks[v.network_id])}
        return [self.view.networks[nid] for nid in sorted(present)]

    def network_of(self, vif: VifView) -> NetworkView:
        return self.view.networks[vif.network_id]

    @property
    def routes(self) -> bool:
        """This datapath is the network host's router (it has the public port)."""
        return self.settings.router is not None and self.binding.public_port is not None

    @property
    def routed_elsewhere(self) -> bool:
        """Routing is on, on another datapath: gateway-bound frames go over the trunks."""
        return self.settings.router is not None and self.binding.public_port is None

    def routes_network(self, network: NetworkView) -> bool:
        """This datapath routes ``network``: it has the public port of its network host."""
        return self.routes and self.settings.router.serves(network)

    def gateway_remote(self, network: NetworkView) -> bool:
        """``network``'s router is on another datapath (another network host's, or this
        deployment's only one): its gateway-bound frames go over the trunks."""
        return self.settings.router is not None and not self.routes_network(network)
