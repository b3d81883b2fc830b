"""What security groups mean for one VIF: the semantics both data planes implement.

Pure, over ``sdn.view`` snapshots; ``sdn.flows.security_groups`` (OpenFlow) and the Linux
backend's iptables chains compile from these functions, and one behavioural test suite runs
against both (tests/integration/test_security_groups.py).

A VIF with port security on is *filtered*; for it, in this order:

1. Always passes: what is not IP (ARP, checked by port security); DHCP client -> server
   (udp 68->67) out and server -> client (udp 67->68) in; ICMPv6 router/neighbour
   solicitations and advertisements and MLD (RFC 4861/4862 need them; port security already
   stops a VIF from sending RAs or NAs for others' addresses).
2. Stateful (every group of the instance stateful, or none): conntrack. Invalid packets drop;
   packets of an established or related connection pass while the rule that admitted the
   connection still applies to the VIF (the rule exists and the VIF is still in its group;
   ``allow_same_net_traffic`` for the same-network admission). When it stops applying, the
   connection is cut at once.
3. New inbound connections: provider rules (operator drops) first; then, with
   ``allow_same_net_traffic``, sources in the VIF's own network (its CIDR, its IPv6 /64, and
   IPv6 link-local addresses, which only its own segment can send from); then the ingress rules of its
   groups; otherwise dropped. New outbound connections: the egress rules of its groups;
   otherwise dropped (every new group has egress rules allowing everything).
4. Stateless (all groups stateless): no conntrack, every packet in both directions must
   match a rule (or item 1).

A rule matches on ethertype, protocol (any: every protocol), destination port range (TCP,
UDP, SCTP) or ICMP type/code, and the remote: a CIDR (source of inbound traffic, destination
of outbound), or the addresses of the remote group's members (their fixed IPs, derived IPv6
addresses and allowed address pairs, of that ethertype).
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict

from sdn.view import NetworkView, ProviderRuleView, RuleView, StateView, VifView

INGRESS, EGRESS = "ingress", "egress"
IPV4, IPV6 = "IPv4", "IPv6"
ANYWHERE = {IPV4: "0.0.0.0/0", IPV6: "::/0"}

#: Conntrack zones of filtered VIFs: ZONE_BASE + id mod ZONE_SPAN. A VIF's connections are its
#: own (two VIFs of one host never share an entry, so each side's rules decide for it), and
#: zones stay clear of the router's SNAT/DNAT zones (5001, 5002) and the default zone 0.
ZONE_BASE = 10000
ZONE_SPAN = 55000


def filtered(vif: VifView) -> bool:
    """Security groups apply to a VIF with port security on (Neutron: port security off
    means no firewall either)."""
    return vif.port_security


def acl_zone(vif: VifView) -> int:
    """The conntrack zone of a filtered VIF's connections (10000-64999)."""
    return ZONE_BASE + vif.id % ZONE_SPAN


def groups_of(view: StateView, vif: VifView):
    return [view.security_groups[g] for g in vif.security_groups if g in view.security_groups]


def stateful(view: StateView, vif: VifView) -> bool:
    """Connection tracking for this VIF: unless every one of its groups is stateless."""
    groups = groups_of(view, vif)
    return not groups or any(g.stateful for g in groups)


def rules_of(view: StateView, vif: VifView, direction: str | None = None) -> list[RuleView]:
    """The rules of the VIF's groups (in ``direction`` if given), by rule id."""
    rules = {r.id: r for g in groups_of(view, vif) for r in g.rules
             if direction is None or r.direction == direction}
    return [rules[i] for i in sorted(rules)]


def ethertype_of(address: str) -> str:
    return IPV6 if ":" in address else IPV4


def member_addresses(view: StateView) -> dict[int, dict[str, tuple[str, ...]]]:
    """Group id -> ethertype -> the addresses its members send from (fixed IPs, derived IPv6
    addresses, allowed address pairs), sorted; what a remote-group rule admits."""
    out: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for vif in view.vifs:
        if not vif.security_groups:
            continue
        addresses = (list(vif.addresses) + list(vif.addresses_v6)
                     + [ip for _, ip in vif.allowed_address_pairs])
        for gid in vif.security_groups:
            for a in addresses:
                out[gid][ethertype_of(a)].add(_canonical(a))
    return {g: {e: tuple(sorted(a, key=_sort_key)) for e, a in by.items()} for g, by in out.items()}


def remote_cidr(rule: RuleView) -> str:
    """The CIDR of a rule without a remote group (everyone when none was given)."""
    return rule.remote_cidr or ANYWHERE[rule.ethertype]


#: IPv6 link-local sources are on the VIF's own segment by definition (routers never forward
#: them, and port security stops a VIF from sending from another's link-local address)
LINK_LOCAL = "fe80::/64"


def same_net_cidrs(view: StateView, vif: VifView) -> tuple[str, ...]:
    """The sources ``allow_same_net_traffic`` admits for this VIF: its network's CIDR, its
    IPv6 /64 (cidr_v6) if any, and the IPv6 link-local prefix (empty when the option is off)."""
    if not view.allow_same_net_traffic:
        return ()
    net: NetworkView | None = view.networks.get(vif.network_id)
    own = tuple(c for c in (net.cidr, net.cidr_v6) if c) if net else ()
    return own + (LINK_LOCAL,)


def provider_rules(view: StateView) -> tuple[ProviderRuleView, ...]:
    return view.provider_rules


def _canonical(address: str) -> str:
    net = ipaddress.ip_network(address, strict=False)
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _sort_key(address: str):
    net = ipaddress.ip_network(address, strict=False)
    return (net.version, int(net.network_address), net.prefixlen)
