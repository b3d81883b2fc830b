"""Security groups on the Linux backend: nova's IptablesFirewallDriver shape, pure.

Semantics: ``sdn.firewall`` (shared with the OpenFlow backend). For every VIF plugged on this
host with port security on, in the filter table of iptables (IPv4) and ip6tables (IPv6), all
chains wrapped by the IptablesManager (``sdn-agent-<chain>``):

  FORWARD, INPUT -> sg-chain (first rule: before the bridges' ``-i br -o br -j ACCEPT``)
  sg-chain   -m physdev --physdev-out TAP --physdev-is-bridged -j i<port>   (bridged to the VIF)
             -d ADDR -o BRIDGE -m physdev ! --physdev-is-bridged -j i<port> (routed to the VIF)
             -m physdev --physdev-in TAP -j o<port>                        (from the VIF)
  i<port>    always-allowed (DHCP server->client, ICMPv6 RA/NS/NA/MLD query, DHCPv6), then
             stateful: INVALID DROP, RELATED,ESTABLISHED RETURN, new TCP without SYN DROP;
             then -j provider (operator DROPs), same-network sources RETURN (the network's
             CIDR; fe80::/64 in ip6tables), the ingress rules
             (RETURN), -j sg-fallback (DROP)
  o<port>    always-allowed (DHCP client->server, ICMPv6 RS/NS/NA/MLD reports, DHCPv6), state
             rules as above, the egress rules (RETURN), -j sg-fallback

Admitted packets RETURN rather than ACCEPT (Neutron's way): a packet between two VIFs of this
host passes the sender's outbound and the receiver's inbound chain, then the bridges' own
FORWARD rules (project isolation through the router) still decide. A new TCP packet without
SYN is dropped because conntrack would otherwise pick a cut connection up again mid-stream.

Remote-group rules match an ipset per (group, ethertype) holding the members' addresses
(``-m set --match-set NAME src|dst``): a membership change rewrites the set, not the chains.

Conntrack zones (raw table): packets from a VIF (``-m physdev --physdev-in TAP``) and packets
to its addresses (fixed, allowed pairs, floating) get ``CT --zone-orig ZONE`` with
``sdn.firewall.acl_zone`` (DHCPv4 is not tracked at all). The zone is *directional* (original direction only): a bridged or
routed packet crosses conntrack once, so a plain ``--zone`` per VIF would put a reply between
two VIFs of this host (or a NATed reply, addressed to the floating IP or routing_source_ip) in
another zone than its request, and conntrack would call it INVALID. With ``--zone-orig`` a
connection is found under its initiator's zone and its replies under zone 0
(``conntrack --orig-zone ZONE`` lists one VIF's connections).

When a rule stops applying to a VIF its admitted connections are deleted
(:func:`conntrack_cuts`: old plan vs new plan -> ``conntrack -D`` filters).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field

from sdn import firewall
from sdn.view import RuleView, StateView, VifView

FAMILY = {firewall.IPV4: "ipv4", firewall.IPV6: "ipv6"}
ETHERTYPE = {"ipv4": firewall.IPV4, "ipv6": firewall.IPV6}
SG_CHAIN, PROVIDER_CHAIN, FALLBACK_CHAIN = "sg-chain", "provider", "sg-fallback"
#: chain names after the wrap prefix: iptables allows 28 characters, the prefix takes up to 17
#: (a binary name of 16 + "-"), so a per-VIF chain is 1 + 10 characters (Neutron's i/o + id)
MAX_CHAIN_SUFFIX = 11
#: a port range up to this many ports is cut port by port (``conntrack -D`` has no ranges);
#: a wider one is cut for the whole protocol
MAX_PORTS_PER_CUT = 64
TCP, UDP, ICMP, ICMPV6, SCTP = 6, 17, 1, 58, 132
_PORTED = {TCP: "tcp", UDP: "udp", SCTP: "sctp"}
_ND_IN = (134, 135, 136, 130)          # RA, NS, NA, MLD query
_ND_OUT = (133, 135, 136, 131, 143)    # RS, NS, NA, MLD report, MLDv2 report


@dataclass(frozen=True)
class Admission:
    """What one rule lets a VIF take part in: ``direction`` traffic of ``ethertype`` with
    ``protocol`` (None: any) and ports/ICMP type-code as in ``RuleView``, with the remote
    ``remote`` (a CIDR: one member address of a remote group, or the rule's CIDR)."""

    direction: str
    ethertype: str
    protocol: int | None
    port_min: int | None
    port_max: int | None
    remote: str

    def covers(self, other: Admission) -> bool:
        """Everything ``other`` admits is admitted by this one too."""
        if (self.direction, self.ethertype) != (other.direction, other.ethertype):
            return False
        if self.protocol is not None and self.protocol != other.protocol:
            return False
        if self.protocol is not None and not _ports_cover(self, other):
            return False
        mine, theirs = _network(self.remote), _network(other.remote)
        return mine.version == theirs.version and theirs.subnet_of(mine)


@functools.lru_cache(maxsize=65536)
def _network(cidr: str):
    return ipaddress.ip_network(cidr, strict=False)


def _ports_cover(a: Admission, b: Admission) -> bool:
    if a.protocol in _PORTED:
        lo_a, hi_a = (a.port_min or 0, a.port_max if a.port_max is not None else 65535)
        lo_b, hi_b = (b.port_min or 0, b.port_max if b.port_max is not None else 65535)
        return lo_a <= lo_b and hi_b <= hi_a
    # ICMP type/code (or nothing): None matches everything
    return ((a.port_min is None or a.port_min == b.port_min)
            and (a.port_max is None or a.port_max == b.port_max))


@dataclass(frozen=True)
class VifFirewall:
    """A filtered VIF of this host as the cuts need it: its tap, zone, addresses (fixed IPs and
    allowed address pairs), floating addresses, statefulness and admissions."""

    port: str
    zone: int
    stateful: bool
    addresses: tuple[str, ...]
    floating: tuple[str, ...]
    admissions: frozenset[Admission] = frozenset()


@dataclass(frozen=True)
class IpSet:
    """One remote group's member addresses of one family (``hash:net``, family inet|inet6)."""

    name: str
    family: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class ConntrackCut:
    """One ``conntrack -D -f FAMILY ARGS...`` (a filter; deleting nothing is fine) and why."""

    family: str                 #: "ipv4" | "ipv6"
    args: tuple[str, ...]
    why: str = ""

    def argv(self) -> list[str]:
        return ["conntrack", "-D", "-f", self.family, *self.args]


@dataclass(frozen=True)
class FilterRule:
    family: str                 #: "ipv4" | "ipv6"
    table: str                  #: "filter" | "raw"
    chain: str                  #: unwrapped chain name (the manager wraps it)
    rule: str                   #: iptables-save canonical text; ``$chain`` jumps


@dataclass
class FirewallPlan:
    chains: list[tuple[str, str, str]] = field(default_factory=list)  #: (family, table, chain)
    rules: list[FilterRule] = field(default_factory=list)
    ipsets: dict[str, IpSet] = field(default_factory=dict)
    vifs: dict[str, VifFirewall] = field(default_factory=dict)        #: tap -> VifFirewall


def inbound_chain(port: str) -> str:
    """``i`` + the VIF id part of its tap name (Neutron's chain naming), 11 characters."""
    return ("i" + port[3:] if port.startswith("tap") else "i" + port)[:MAX_CHAIN_SUFFIX]


def outbound_chain(port: str) -> str:
    return ("o" + port[3:] if port.startswith("tap") else "o" + port)[:MAX_CHAIN_SUFFIX]


def ipset_name(binary_name: str, group_id: int, ethertype: str) -> str:
    """``<binary>-sg<group>-v4|v6`` (ipset names are at most 31 characters)."""
    return f"{binary_name}-sg{group_id}-{'v4' if ethertype == firewall.IPV4 else 'v6'}"


def ipset_prefix(binary_name: str) -> str:
    """Every set this binary owns starts with this."""
    return f"{binary_name}-sg"


@functools.lru_cache(maxsize=65536)     # member addresses repeat once per VIF of a rule
def canonical_cidr(cidr: str) -> str:
    """``10.1.2.3/8`` -> ``10.0.0.0/8``; a host keeps its /32 (/128), as iptables-save prints."""
    return str(ipaddress.ip_network(cidr, strict=False))


def _host(address: str) -> str:
    """An address for conntrack: a host without its prefix, a network as CIDR."""
    net = ipaddress.ip_network(address, strict=False)
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


@functools.lru_cache(maxsize=1)
def _etc_protocols() -> dict[int, str]:
    names: dict[int, str] = {}
    try:
        with open("/etc/protocols") as fh:
            for line in fh:
                parts = line.split("#", 1)[0].split()
                if len(parts) >= 2 and parts[1].isdigit():
                    names.setdefault(int(parts[1]), parts[0])
    except OSError:
        pass
    return names


def protocol_token(number: int) -> str:
    """The protocol as iptables-save prints it: the name from /etc/protocols, else the number."""
    fixed = {TCP: "tcp", UDP: "udp", ICMP: "icmp", ICMPV6: "ipv6-icmp", SCTP: "sctp"}
    return fixed.get(number) or _etc_protocols().get(number) or str(number)


def protocol_match(family: str, protocol: int | None, port_min: int | None,
                   port_max: int | None) -> str:
    """``-p ... -m ...`` of a rule's protocol and ports/ICMP type-code (canonical text)."""
    if protocol is None:
        return ""
    text = f"-p {protocol_token(protocol)}"
    if protocol in _PORTED and (port_min is not None or port_max is not None):
        lo = port_min if port_min is not None else 0
        hi = port_max if port_max is not None else 65535
        return text + f" -m {_PORTED[protocol]} --dport " + (f"{lo}" if lo == hi else f"{lo}:{hi}")
    icmp = {("ipv4", ICMP): ("icmp", "--icmp-type"), ("ipv6", ICMPV6): ("icmp6", "--icmpv6-type")}
    if (family, protocol) in icmp and port_min is not None:
        module, option = icmp[(family, protocol)]
        code = f"/{port_max}" if port_max is not None else ""
        return text + f" -m {module} {option} {port_min}{code}"
    return text


def _remote_match(side: str, cidr: str) -> str:
    """``-s``/``-d`` CIDR; nothing for everyone (iptables-save omits 0.0.0.0/0 and ::/0)."""
    net = ipaddress.ip_network(cidr, strict=False)
    return "" if net.prefixlen == 0 else f"{side} {net}"


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def tenant_rule(rule: RuleView, family: str, set_name: str | None) -> str:
    """One security group rule of a VIF's chain in iptables-save's canonical order:
    ``-s|-d CIDR -p P -m P --dport ... [-m set --match-set NAME src|dst] -j RETURN``."""
    ingress = rule.direction == firewall.INGRESS
    proto = protocol_match(family, rule.protocol, rule.port_min, rule.port_max)
    if set_name is not None:
        return _join(proto, f"-m set --match-set {set_name} {'src' if ingress else 'dst'}",
                     "-j RETURN")
    return _join(_remote_match("-s" if ingress else "-d", firewall.remote_cidr(rule)), proto,
                 "-j RETURN")


def always_allowed(family: str, direction: str) -> list[str]:
    """Item 1 of ``sdn.firewall``: DHCP and DHCPv6, ICMPv6 neighbour discovery and MLD."""
    inbound = direction == firewall.INGRESS
    if family == "ipv4":
        return ["-p udp -m udp --sport 67 --dport 68 -j RETURN" if inbound
                else "-p udp -m udp --sport 68 --dport 67 -j RETURN"]
    dhcp6 = ("-p udp -m udp --sport 547 --dport 546 -j RETURN" if inbound
             else "-p udp -m udp --sport 546 --dport 547 -j RETURN")
    return [f"-p ipv6-icmp -m icmp6 --icmpv6-type {t} -j RETURN"
            for t in (_ND_IN if inbound else _ND_OUT)] + [dhcp6]


DHCP_NOTRACK = ("-p udp -m udp --sport 68 --dport 67 -j CT --notrack",
                "-p udp -m udp --sport 67 --dport 68 -j CT --notrack")

STATE_RULES = (
    "-m state --state INVALID -j DROP",
    "-m state --state RELATED,ESTABLISHED -j RETURN",
    # a connection that was cut must not come back through conntrack's mid-stream pickup
    "-p tcp -m tcp ! --tcp-flags FIN,SYN,RST,ACK SYN -m state --state NEW -j DROP",
)


def provider_rule_text(rule) -> tuple[str, str] | None:
    """(family, rule) of a provider rule in the ``provider`` chain; None if its CIDR is bad."""
    try:
        net = ipaddress.ip_network(rule.cidr, strict=False)
    except ValueError:
        return None
    family = "ipv4" if net.version == 4 else "ipv6"
    return family, _join(_remote_match("-s", str(net)),
                         protocol_match(family, rule.protocol, rule.port_min, rule.port_max),
                         "-j DROP")


def _vif_addresses(vif: VifView) -> list[str]:
    """Fixed IPs, derived global IPv6 addresses and allowed-pair addresses, canonical CIDRs,
    de-duplicated, in order (routed traffic to any of them meets the VIF's inbound chain)."""
    out: list[str] = []
    for a in (list(vif.addresses) + list(vif.addresses_v6)
              + [ip for _, ip in vif.allowed_address_pairs]):
        try:
            c = canonical_cidr(a)
        except ValueError:
            continue
        if c not in out:
            out.append(c)
    return out


def _family_of(cidr: str) -> str:
    return "ipv6" if ":" in cidr else "ipv4"


def admissions(view: StateView, vif: VifView,
               members: dict[int, dict[str, tuple[str, ...]]]) -> frozenset[Admission]:
    """Every (rule x remote) the VIF admits now: rules with a CIDR once, remote-group rules
    once per member address, and the same-network admission."""
    out = set()
    for same_net in firewall.same_net_cidrs(view, vif):
        out.add(Admission(firewall.INGRESS, ETHERTYPE[_family_of(same_net)], None, None, None,
                          canonical_cidr(same_net)))
    for r in firewall.rules_of(view, vif):
        if r.remote_group is not None:
            remotes = [canonical_cidr(a) for a in members.get(r.remote_group, {}).get(r.ethertype, ())]
        else:
            remotes = [canonical_cidr(firewall.remote_cidr(r))]
        for remote in remotes:
            out.add(Admission(r.direction, r.ethertype, r.protocol, r.port_min, r.port_max, remote))
    return frozenset(out)


def plan_firewall(view: StateView, ports: dict[str, str], binary_name: str) -> FirewallPlan:
    """Chains, rules, ipsets and per-VIF facts for the filtered VIFs among ``ports``
    (tap -> bridge: the VIFs plugged on this host)."""
    fp = FirewallPlan()
    vifs = sorted((v for v in view.vifs if v.port_name in ports and firewall.filtered(v)),
                  key=lambda v: v.port_name)
    if not vifs:
        return fp
    members = firewall.member_addresses(view)
    floating_of: dict[str, list[str]] = {}
    for fip in view.floating_ips:
        floating_of.setdefault(fip.fixed_address, []).append(canonical_cidr(fip.address))

    for family in ("ipv4", "ipv6"):
        for chain in (SG_CHAIN, PROVIDER_CHAIN, FALLBACK_CHAIN):
            fp.chains.append((family, "filter", chain))
        for builtin in ("FORWARD", "INPUT"):
            fp.rules.append(FilterRule(family, "filter", builtin, f"-j ${SG_CHAIN}"))
        fp.rules.append(FilterRule(family, "filter", FALLBACK_CHAIN, "-j DROP"))
    for p in firewall.provider_rules(view):
        text = provider_rule_text(p)
        if text:
            fp.rules.append(FilterRule(text[0], "filter", PROVIDER_CHAIN, text[1]))

    # DHCPv4 untracked: every client's DISCOVER is 0.0.0.0:68 -> 255.255.255.255:67, so with
    # directional zones their reply tuples (zone 0) would clash and all but one be dropped
    zone_rules: list[FilterRule] = [FilterRule("ipv4", "raw", chain, rule)
                                    for chain in ("PREROUTING", "OUTPUT") for rule in DHCP_NOTRACK]
    # physdev rules of every VIF first, then addresses
    address_zone_rules: list[FilterRule] = []
    for vif in vifs:
        port, bridge = vif.port_name, ports[vif.port_name]
        zone, stateful = firewall.acl_zone(vif), firewall.stateful(view, vif)
        addresses = _vif_addresses(vif)
        floating = [f for a in vif.addresses for f in floating_of.get(a, [])]
        fp.vifs[port] = VifFirewall(port, zone, stateful, tuple(addresses), tuple(floating),
                                    admissions(view, vif, members))
        ichain, ochain = inbound_chain(port), outbound_chain(port)
        for family in ("ipv4", "ipv6"):
            zone_rules.append(FilterRule(family, "raw", "PREROUTING",
                                         f"-m physdev --physdev-in {port} -j CT --zone-orig {zone}"))
            for a in addresses + floating:
                if _family_of(a) == family:
                    for chain in ("PREROUTING", "OUTPUT"):
                        address_zone_rules.append(FilterRule(
                            family, "raw", chain, f"-d {a} -j CT --zone-orig {zone}"))
            fp.chains += [(family, "filter", ichain), (family, "filter", ochain)]
            fp.rules.append(FilterRule(family, "filter", SG_CHAIN,
                                       f"-m physdev --physdev-out {port} --physdev-is-bridged "
                                       f"-j ${ichain}"))
            for a in addresses:
                if _family_of(a) == family:
                    fp.rules.append(FilterRule(family, "filter", SG_CHAIN,
                                               f"-d {a} -o {bridge} -m physdev ! --physdev-is-bridged "
                                               f"-j ${ichain}"))
            fp.rules.append(FilterRule(family, "filter", SG_CHAIN,
                                       f"-m physdev --physdev-in {port} -j ${ochain}"))
            fp.rules += [FilterRule(family, "filter", c, r)
                         for c, r in vif_chain_rules(view, vif, family, binary_name, fp.ipsets,
                                                     members)]
    fp.rules += zone_rules + address_zone_rules
    return fp


def vif_chain_rules(view: StateView, vif: VifView, family: str, binary_name: str,
                    ipsets: dict[str, IpSet], members) -> list[tuple[str, str]]:
    """(chain, rule) of the VIF's inbound and outbound chains of ``family``, in order; the
    ipsets its remote-group rules use are added to ``ipsets``."""
    ethertype = ETHERTYPE[family]
    stateful = firewall.stateful(view, vif)
    out: list[tuple[str, str]] = []
    for direction, chain in ((firewall.INGRESS, inbound_chain(vif.port_name)),
                             (firewall.EGRESS, outbound_chain(vif.port_name))):
        rules = always_allowed(family, direction)
        if stateful:
            rules += list(STATE_RULES)
        if direction == firewall.INGRESS:
            rules.append(f"-j ${PROVIDER_CHAIN}")
            # the VIF's network, and IPv6 link-local sources (only its own segment has them)
            rules += [f"-s {canonical_cidr(c)} -j RETURN" for c in firewall.same_net_cidrs(view, vif)
                      if _family_of(c) == family]
        for r in firewall.rules_of(view, vif, direction):
            if r.ethertype != ethertype:
                continue
            set_name = None
            if r.remote_group is not None:
                set_name = ipset_name(binary_name, r.remote_group, ethertype)
                ipsets.setdefault(set_name, IpSet(
                    set_name, "inet" if family == "ipv4" else "inet6",
                    tuple(members.get(r.remote_group, {}).get(ethertype, ()))))
            rules.append(tenant_rule(r, family, set_name))
        rules.append(f"-j ${FALLBACK_CHAIN}")
        out += [(chain, rule) for rule in rules]
    return out


# -- cutting connections -------------------------------------------------------------------

_CONNTRACK_PROTO = {TCP: "tcp", UDP: "udp", SCTP: "sctp", ICMP: "icmp", ICMPV6: "icmpv6"}


def _port_args(a: Admission) -> list[list[str]]:
    """``-p``/``--dport`` filters of an admission: one list per port for a short range."""
    if a.protocol is None:
        return [[]]
    name = _CONNTRACK_PROTO.get(a.protocol)
    proto = ["-p", name or str(a.protocol)]
    if a.protocol in _PORTED and (a.port_min is not None or a.port_max is not None):
        lo = a.port_min if a.port_min is not None else 0
        hi = a.port_max if a.port_max is not None else 65535
        if hi - lo + 1 <= MAX_PORTS_PER_CUT:
            return [proto + ["--dport", str(p)] for p in range(lo, hi + 1)]
    return [proto]


def admission_cuts(vif: VifFirewall, a: Admission) -> list[ConntrackCut]:
    """Delete the VIF's connections ``a`` admitted. Ingress: the VIF answers them
    (``--reply-src ADDR``: found whatever zone the initiator put them in, floating IP or not);
    egress: it started them (its zone, ``--orig-zone``, and source address)."""
    family = FAMILY[a.ethertype]
    remote = ipaddress.ip_network(a.remote)
    remote_arg = [] if remote.prefixlen == 0 else [_host(a.remote)]
    proto = _CONNTRACK_PROTO.get(a.protocol, str(a.protocol)) if a.protocol is not None else "any"
    why = f"{vif.port} {a.direction} {proto} {a.remote} no longer admitted"
    cuts = []
    for address in vif.addresses:
        if _family_of(address) != family:
            continue
        for ports in _port_args(a):
            if a.direction == firewall.INGRESS:
                args = ["--reply-src", _host(address)] + (["-s"] + remote_arg if remote_arg else [])
            else:
                args = ["--orig-zone", str(vif.zone), "-s", _host(address)] + (
                    ["-d"] + remote_arg if remote_arg else [])
            cuts.append(ConntrackCut(family, tuple(args + ports), why))
    return cuts


def conntrack_cuts(old: dict[str, VifFirewall] | None, new: dict[str, VifFirewall],
                   new_ports: set[str], old_floating: dict[str, str] | None = None,
                   new_floating: dict[str, str] | None = None) -> list[ConntrackCut]:
    """The ``conntrack -D`` filters that end what stopped being admitted between two plans.

    ``old``/``new``: tap -> VifFirewall (filtered VIFs on this host); ``new_ports``: every
    VIF tap still on this host; ``*_floating``: floating address -> fixed address.
    * an admission of a stateful VIF no longer covered by any of its new ones (rule deleted,
      VIF out of the group, member out of a remote group, same-network off): its connections;
    * a VIF gone from this host: every connection of its zone and every one it answered;
    * a floating IP disassociated (or moved): the connections to and through it.
    Nothing on the first plan (``old`` None): an agent start keeps what runs.
    """
    if old is None:
        return []
    cuts: list[ConntrackCut] = []
    for port, before in sorted(old.items()):
        after = new.get(port)
        if after is None:
            if port in new_ports:
                continue        # port security turned off: nothing is filtered any more
            why = f"{port} gone"
            for family in ("ipv4", "ipv6"):
                cuts.append(ConntrackCut(family, ("--orig-zone", str(before.zone)), why))
            for address in before.addresses:
                cuts.append(ConntrackCut(_family_of(address), ("--reply-src", _host(address)), why))
            continue
        if not (before.stateful and after.stateful):
            continue            # stateless: every packet is checked, nothing to cut
        for a in sorted(before.admissions - after.admissions, key=repr):
            if not any(n.covers(a) for n in after.admissions):
                cuts += admission_cuts(before, a)
    for address, fixed in sorted((old_floating or {}).items()):
        if (new_floating or {}).get(address) != fixed:
            cuts += floating_cuts(address)
    return list(dict.fromkeys(cuts))


def floating_cuts(address: str) -> list[ConntrackCut]:
    """nova's remove_floating_ip: forget connections to the floating address (DNAT) and those
    NATed to it (``float-snat``)."""
    why = f"floating IP {address} released"
    return [ConntrackCut("ipv4", ("--orig-dst", address), why),
            ConntrackCut("ipv4", ("--reply-dst", address), why)]
