"""Table PORT_SECURITY: a VIF may only speak as itself (nova relied on libvirt nwfilter for this).

Per VIF, frames pass only with the VIF's own MAC and as:
- IPv4 from its fixed IP(s), or DHCP client traffic from 0.0.0.0 (udp 68->67);
- ARP with arp_sha = its MAC and arp_spa = its IP, or spa 0.0.0.0 (RFC 5227 probes);
- IPv6 from its EUI-64 link-local address or its derived global address(es)
  (``VifView.addresses_v6``), or from :: for DAD (RFC 4862 §5.4), router solicitations and MLD;
  Neighbor Advertisements only for its own addresses.
Never: DHCP/DHCPv6 server replies, Router Advertisements, Redirects (RFC 4861 §8: only a router
sends them). Allowed address pairs add (MAC, IP or
CIDR) identities with the same rules. Everything else hits the table default: drop.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from netaddr import EUI

from sdn.flows.context import DatapathContext
from sdn.flows.model import EthType, Feature, Flow, IpProto, Reg, Table, flow
from sdn.flows.pipeline import next_table
from sdn.view import VifView

PRIO_DENY = 300       # server-side DHCP, RA: dropped even from a legitimate source address
PRIO_ND = 250         # neighbor advertisements: own targets only
PRIO_ALLOW = 200
PRIO_NA_DENY = 240
PRIO_OPEN = 100       # port security disabled on this VIF

ETH_IP, ETH_ARP, ETH_IPV6 = EthType.IPV4, EthType.ARP, EthType.IPV6
UDP, ICMPV6 = IpProto.UDP, IpProto.ICMPV6
PASS = next_table(Table.PORT_SECURITY)
ND_RS, ND_RA, ND_NS, ND_NA, ND_REDIRECT = 133, 134, 135, 136, 137
MLD_REPORTS = (131, 143)


@lru_cache(maxsize=1 << 16)   # recompiled on every sync; parsing dominated compile time
def link_local(mac: str) -> str:
    """EUI-64 IPv6 link-local address of ``mac`` (RFC 4291 §2.5.1), e.g. fe80::f816:3eff:fe..."""
    return str(EUI(mac).ipv6_link_local())


@lru_cache(maxsize=1 << 16)
def _ip_match(ip_or_cidr: str) -> str | tuple[str, str]:
    net = ipaddress.ip_network(ip_or_cidr, strict=False)
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return (str(net.network_address), str(net.netmask))


def _identity_flows(port: int, mac: str, ipv4: list[str], ipv6: list[str]) -> list[Flow]:
    src = {Reg.SRC_PORT: port, "eth_src": mac}
    allow = dict(goto=PASS)
    f = Feature.PORT_SECURITY
    flows = [flow(f, Table.PORT_SECURITY, PRIO_ALLOW,
                  {**src, "eth_type": ETH_IP, "ip_proto": UDP, "ipv4_src": "0.0.0.0",
                   "udp_src": 68, "udp_dst": 67}, **allow),
             flow(f, Table.PORT_SECURITY, PRIO_ALLOW,
                  {**src, "eth_type": ETH_ARP, "arp_sha": mac, "arp_spa": "0.0.0.0"}, **allow)]
    for ip in ipv4:
        flows.append(flow(f, Table.PORT_SECURITY, PRIO_ALLOW,
                          {**src, "eth_type": ETH_IP, "ipv4_src": _ip_match(ip)}, **allow))
        flows.append(flow(f, Table.PORT_SECURITY, PRIO_ALLOW,
                          {**src, "eth_type": ETH_ARP, "arp_sha": mac, "arp_spa": _ip_match(ip)},
                          **allow))
    for ip in ipv6:
        flows.append(flow(f, Table.PORT_SECURITY, PRIO_ALLOW,
                          {**src, "eth_type": ETH_IPV6, "ipv6_src": _ip_match(ip)}, **allow))
        flows.append(flow(f, Table.PORT_SECURITY, PRIO_ND,
                          {**src, "eth_type": ETH_IPV6, "ip_proto": ICMPV6,
                           "icmpv6_type": ND_NA, "ipv6_nd_target": _ip_match(ip)}, **allow))
    # DAD probes, MLD reports and router solicitations may come from the unspecified address.
    for icmp_type in (ND_NS, ND_RS) + MLD_REPORTS:
        flows.append(flow(f, Table.PORT_SECURITY, PRIO_ALLOW,
                          {**src, "eth_type": ETH_IPV6, "ipv6_src": "::", "ip_proto": ICMPV6,
                           "icmpv6_type": icmp_type}, **allow))
    return flows


def compile(dp: DatapathContext) -> list[Flow]:
    """Feature entry point: anti-spoof flows of every VIF plugged here."""
    flows = []
    for port, vif in dp.vifs:
        flows += compile_vif(port, vif)
    return flows


# Per-port split (``sdn.flows.incremental``): compile(dp) == compile_shared + compile_port of
# every VIF; a port's flows read only its port and VIF.
def port_scope(_dp: DatapathContext) -> tuple:
    return ()


def compile_port(_dp: DatapathContext, port: int, vif: VifView) -> list[Flow]:
    return compile_vif(port, vif)


def compile_shared(_dp: DatapathContext) -> list[Flow]:
    return []


def compile_vif(port: int, vif: VifView) -> list[Flow]:
    """Anti-spoof flows for VIF ``vif`` on ``port``; one open flow if port security is off."""
    f = Feature.PORT_SECURITY
    if not vif.port_security:
        return [flow(f, Table.PORT_SECURITY, PRIO_OPEN, {Reg.SRC_PORT: port},
                     goto=PASS)]
    flows = [
        flow(f, Table.PORT_SECURITY, PRIO_DENY,
             {Reg.SRC_PORT: port, "eth_type": ETH_IP, "ip_proto": UDP, "udp_src": 67}),
        flow(f, Table.PORT_SECURITY, PRIO_DENY,
             {Reg.SRC_PORT: port, "eth_type": ETH_IPV6, "ip_proto": UDP, "udp_src": 547}),
        *(flow(f, Table.PORT_SECURITY, PRIO_DENY,
               {Reg.SRC_PORT: port, "eth_type": ETH_IPV6, "ip_proto": ICMPV6,
                "icmpv6_type": icmp_type}) for icmp_type in (ND_RA, ND_REDIRECT)),
        # A NA not matched by an own-target flow (PRIO_ND) is a spoof attempt.
        flow(f, Table.PORT_SECURITY, PRIO_NA_DENY,
             {Reg.SRC_PORT: port, "eth_type": ETH_IPV6, "ip_proto": ICMPV6,
              "icmpv6_type": ND_NA}),
    ]
    identities: dict[str, tuple[list[str], list[str]]] = {
        vif.mac: (list(vif.addresses), [link_local(vif.mac), *vif.addresses_v6])}
    for mac, ip in vif.allowed_address_pairs:
        v4, v6 = identities.setdefault(mac.lower(), ([], [link_local(mac)]))
        (v6 if ipaddress.ip_network(ip, strict=False).version == 6 else v4).append(ip)
    for mac, (v4, v6) in identities.items():
        flows += _identity_flows(port, mac, v4, v6)
    return flows
