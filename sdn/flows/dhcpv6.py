"""Table SERVICES: punt a VIF's DHCPv6 client messages (udp 546->547, RFC 8415) to the controller.

Per VIF port whose network has an IPv6 prefix, through the port's own packets/s meter
(``model.entry_id(Feature.DHCPV6, ofport)``, rate ``dhcp_rate_pps``, as DHCPv4's). The
controller answers with ``sdn.dhcp.dhcpv6.handle`` (INFORMATION-REQUEST on every mode,
SOLICIT/REQUEST/... with the derived address on dhcpv6-stateful networks). No match on the
destination, so unicast messages to the server are punted too.
"""

from __future__ import annotations

from sdn.flows import nd
from sdn.flows.context import DatapathContext
from sdn.flows.model import EthType, Feature, Flow, IpProto, Reg, Table, entry_id, flow

PRIO_PUNT = 300
CLIENT_PORT, SERVER_PORT = 546, 547


def meter_id(ofport: int) -> int:
    """The DHCPv6 punt meter of VIF port ``ofport``."""
    return entry_id(Feature.DHCPV6, ofport)


def compile(dp: DatapathContext) -> list:
    """Feature entry point: punt flows (and meters) of every VIF on an IPv6 network."""
    return nd.ipv6_vif_punts(dp, Feature.DHCPV6, lambda port, _net, rate: compile_vif(port, rate))


# Per-port split (``sdn.flows.incremental``)
port_scope = nd.port_scope


def compile_port(dp: DatapathContext, port: int, vif) -> list:
    return nd.ipv6_vif_punt(dp, Feature.DHCPV6, lambda p, _net, rate: compile_vif(p, rate),
                            port, vif)


def compile_shared(_dp: DatapathContext) -> list:
    return []


def compile_vif(ofport: int, rate_pps: int | None = None) -> list[Flow]:
    """Send udp 546->547 from VIF ``ofport`` to the controller (through its meter if
    ``rate_pps``)."""
    return [flow(Feature.DHCPV6, Table.SERVICES, PRIO_PUNT,
                 {Reg.SRC_PORT: ofport, "eth_type": EthType.IPV6, "ip_proto": IpProto.UDP,
                  "udp_src": CLIENT_PORT, "udp_dst": SERVER_PORT},
                 nd.punt(meter_id(ofport) if rate_pps else None))]
