"""Read-only snapshots of state, the input of flow compilation and DHCP decisions.

The database layer (``sdn.db.api.load_views``) builds these from SQL; everything downstream
(``sdn.flows``, ``sdn.dhcp``) is pure and only ever sees these frozen dataclasses, so it can be
unit-tested without a database or a switch.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from sdn.ipv6 import link_local

#: reg6 value of a flat (untagged) network is FLAT_KEY_BASE | network id; VLAN networks use the VLAN id
#: (1-4094), so the two ranges never collide.
FLAT_KEY_BASE = 0x10000


@dataclass(frozen=True)
class NetworkView:
    """One fixed-IP network (nova ``networks`` row) as the data plane needs it.

    Addresses are dotted-quad strings; ``lease_time`` is in seconds; ``mtu`` None means "do not
    send DHCP option 26".
    """

    id: int
    label: str
    cidr: str
    netmask: str
    gateway: str
    broadcast: str
    dns: tuple[str, ...] = ()
    vlan: int | None = None
    project_id: str | None = None
    dhcp_server: str = ""
    domain: str = "novalocal"
    lease_time: int = 120
    mtu: int | None = None
    #: cloudpipe VPN (VLAN mode): public address/port forwarded to private address:1194 while
    #: ``vpn_running`` (the project's VPN instance holds the private address).
    vpn_public_address: str | None = None
    vpn_public_port: int | None = None
    vpn_private_address: str | None = None
    vpn_running: bool = False
    #: extra routes (destination CIDR, next hop) sent as DHCP option 121 to clients asking for
    #: classless static routes (RFC 3442); e.g. the metadata address via the gateway.
    host_routes: tuple[tuple[str, str], ...] = ()
    #: IPv6 (None/() when the network has no /64): its prefix ("fd00:0:0:1::/64"), the router's
    #: global address on it, Neutron's ipv6_ra_mode / ipv6_address_mode ("slaac",
    #: "dhcpv6-stateless", "dhcpv6-stateful"), RDNSS / DHCPv6 DNS servers, and the seconds
    #: between unsolicited router advertisements (config ipv6_ra_interval)
    cidr_v6: str | None = None
    gateway_v6: str | None = None
    ipv6_ra_mode: str | None = None
    ipv6_address_mode: str | None = None
    dns_v6: tuple[str, ...] = ()
    ra_interval: int = 10
    #: the network host whose router serves this network (nova ``networks.host``: claimed by
    #: the first network host that sees a VIF on it, moved with ``sdn network modify --host``);
    #: None: not claimed yet, routed nowhere
    host: str | None = None

    @property
    def key(self) -> int:
        """Segment key carried in reg6: the VLAN id, or FLAT_KEY_BASE | id for a flat network."""
        return self.vlan if self.vlan else FLAT_KEY_BASE | self.id

    @property
    def gateway_mac(self) -> str:
        """Virtual MAC answering for the gateway (and DHCP server) address of this network.

        ``0a:58`` + the 4 bytes of the gateway IPv4 address: locally administered, unicast,
        deterministic (every controller and restart agrees), and readable in a flow dump.
        """
        return "0a:58:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(self.gateway).packed)

    @property
    def gateway_lla(self) -> str:
        """The gateway's IPv6 link-local address: fe80::/64 + modified EUI-64 of gateway_mac
        (RFC 4291 App. A); source of router advertisements and the guests' default route."""
        return link_local(self.gateway_mac)

    @property
    def server_address(self) -> str:
        """DHCP server identifier (option 54); nova's dnsmasq listened on the gateway."""
        return self.dhcp_server or self.gateway


@dataclass(frozen=True)
class VifView:
    """One virtual interface (nova ``virtual_interfaces`` row) with its fixed IPs.

    ``addresses`` holds the IPv4 fixed IPs currently allocated to this VIF on its network.
    ``port_security`` False disables anti-spoofing for this VIF only (set explicitly by an operator).
    ``allowed_address_pairs`` is a tuple of (mac, ip-or-cidr) accepted in addition to the VIF's own.
    """

    uuid: str
    mac: str
    network_id: int
    instance: str
    hostname: str
    addresses: tuple[str, ...] = ()
    project_id: str | None = None
    port_security: bool = True
    allowed_address_pairs: tuple[tuple[str, str], ...] = field(default=())
    #: database id (names the VIF's conntrack zone, see ``sdn.firewall.acl_zone``)
    id: int = 0
    #: ids of the instance's security groups (``SecurityGroupView``), in id order
    security_groups: tuple[int, ...] = ()
    #: bandwidth limits in kbit/s (None: unlimited): what the VIF receives / sends (``sdn.flows.qos``)
    rx_kbps: int | None = None
    tx_kbps: int | None = None
    #: global IPv6 address(es) derived from the MAC (``sdn.ipv6.to_global``, config
    #: ipv6_backend) on its network's cidr_v6; () when the network has none
    addresses_v6: tuple[str, ...] = ()

    @property
    def port_name(self) -> str:
        """Name of the VIF's port on the integration bridge: ``tap`` + first 11 chars of the
        VIF uuid (nova/Neutron convention; 14 chars fits IFNAMSIZ)."""
        return vif_port_name(self.uuid)


def vif_port_name(vif_uuid: str) -> str:
    """``tap`` + the first 11 characters of ``vif_uuid``; see VifView.port_name."""
    return "tap" + vif_uuid[:11]


@dataclass(frozen=True)
class FloatingView:
    """A floating IP associated to a fixed IP (only associated ones reach the data plane)."""

    address: str
    fixed_address: str
    network_id: int
    project_id: str | None = None


@dataclass(frozen=True)
class RuleView:
    """One security group rule: admit ``direction`` traffic of ``ethertype`` ("IPv4"/"IPv6").

    ``protocol`` is an IP protocol number (None: any). TCP/UDP: ``port_min``..``port_max`` is
    the destination port range (None: every port). ICMP/ICMPv6: ``port_min`` is the type and
    ``port_max`` the code (None: any). Remote: ``remote_cidr`` (source for ingress,
    destination for egress), or the addresses of ``remote_group``'s members.
    """

    id: int
    direction: str
    ethertype: str
    protocol: int | None = None
    port_min: int | None = None
    port_max: int | None = None
    remote_cidr: str | None = None
    remote_group: int | None = None


@dataclass(frozen=True)
class SecurityGroupView:
    id: int
    name: str
    project_id: str
    stateful: bool = True
    rules: tuple[RuleView, ...] = ()


@dataclass(frozen=True)
class ProviderRuleView:
    """An operator-wide drop of inbound new connections from ``cidr`` (nova's provider
    chain); protocol and ports as in :class:`RuleView`."""

    id: int
    cidr: str
    protocol: int | None = None
    port_min: int | None = None
    port_max: int | None = None


@dataclass(frozen=True)
class StateView:
    """Everything the data plane needs, read in one transaction at ``revision``."""

    revision: int
    networks: dict[int, NetworkView]
    vifs: tuple[VifView, ...]
    floating_ips: tuple[FloatingView, ...] = ()
    security_groups: dict[int, SecurityGroupView] = field(default_factory=dict)
    provider_rules: tuple[ProviderRuleView, ...] = ()
    #: nova's allow_same_net_traffic: instances admit inbound traffic from their own network
    allow_same_net_traffic: bool = True

    def vif_by_port_name(self, name: str) -> VifView | None:
        for vif in self.vifs:
            if vif.port_name == name:
                return vif
        return None
