"""Security groups in flows: a stateful firewall per VIF in the pipeline's ACL stages.

Semantics: ``sdn.firewall`` (shared with the Linux backend). Layout, per direction (egress =
what a VIF sends, reg5 = its port; ingress = what a local VIF receives, reg7 = its port):

  *_ACL         always-allowed traffic (DHCP, ND/RA/MLD) -> *_ACCEPT; IP of a stateful VIF:
                reg2 := its zone, ct(zone, table=*_STATE); of a stateless VIF -> *_RULES.
                Not IP, or a VIF not filtered: table-miss -> services / output.
  *_ACL_STATE   +inv -> DROP; ct_mark blocked -> DROP; +new -> RULES; established/related:
                ACCEPT while the rule whose id is the connection's ct_label still applies to
                the VIF (conjunction: VIF in group G x label of a rule of G), else mark the
                connection blocked (ct_mark=1) and DROP: removing a rule, or a VIF from a group,
                cuts its connections at once, both directions.
  *_ACL_RULES   ingress: provider rules -> DROP, then same-network sources; then the VIF's
                rules: commit with ct_label = rule id (stateless: no ct) -> ACCEPT. Miss: DROP.
  *_ACL_ACCEPT / *_ACL_DROP  counted by their flows (``ovs-ofctl dump-flows``); with
                ``acl_log_rate_pps`` a drop is also sampled (meter) to the controller's log.

Remote-group rules are conjunctions (ovs-fields(7)): clause 1 = a member's address (one flow
per member address and direction, shared by every rule naming that group), clause 2 = a VIF's
port + protocol + ports, so flows grow with members + VIFs x rules, never members x VIFs.

Flow count of one datapath (F = filtered VIFs here, R_v = rule matches of VIF v after port
ranges are split into masks, G_v = its groups, M = member addresses per (remote group,
direction, ethertype) in use, P = provider matches, S = stateful VIFs):
  entry: 17 per VIF (7 egress + 6 ingress always-allowed, 2 IP versions x 2 directions);
  rules: sum R_v + same-net (2 per VIF if on: its CIDR, fe80::/64) + P + M + one conj_id flow per remote-group rule;
  state: 1 per stateful VIF per direction (its group clause) + 1 per rule of its groups per
  direction (label clause) + 1 per group (conj_id) per direction + 6 shared per direction.
``tests/unit/test_security_groups.py`` asserts it.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from functools import lru_cache
from dataclasses import dataclass

from sdn import firewall
from sdn.flows.context import DatapathContext
from sdn.flows.model import (CT_INV, CT_NEW, CT_REL, CT_TRK, Conjunction, Controller, Ct,
                             EthType, Feature, Flow, IpProto, Meter, MeterEntry, Reg, SetField,
                             Table, ct_state, entry_id, flow)
from sdn.view import RuleView, StateView, VifView

#: ct_label of a connection admitted by ``allow_same_net_traffic`` (rule ids are below 2**32)
LABEL_SAME_NET = 1 << 32
#: ct_mark of a connection whose admitting rule stopped applying
MARK_BLOCKED = 1
#: conjunction ids of the state tables' "VIF still in group G" check: VALID_BASE | G
VALID_BASE = 1 << 31

PRIO_BYPASS = 300
PRIO_ENTRY = 100
PRIO_INVALID, PRIO_BLOCKED, PRIO_NEW, PRIO_SAME_NET_LABEL, PRIO_VALID, PRIO_CUT = \
    400, 390, 300, 250, 200, 100
PRIO_PROVIDER, PRIO_SAME_NET, PRIO_RULE, PRIO_CONJ = 400, 300, 200, 100
_TRACKED = ct_state(plus=CT_TRK)
_EVERYONE = frozenset(firewall.ANYWHERE.values())
PRIO_LOG = 1          # drop tables: above their table-miss, which counts when not logging
LOG_BYTES = 128       # headers are enough for a log line

_ETH = {firewall.IPV4: EthType.IPV4, firewall.IPV6: EthType.IPV6}
_IP_FIELD = {firewall.IPV4: "ipv4", firewall.IPV6: "ipv6"}
_PORT_FIELD = {IpProto.TCP: "tcp", IpProto.UDP: "udp", 132: "sctp"}
_ICMP_FIELD = {IpProto.ICMP: "icmpv4", IpProto.ICMPV6: "icmpv6"}
ND_RS, ND_RA, ND_NS, ND_NA = 133, 134, 135, 136
MLD_QUERY, MLD_REPORT, MLD2_REPORT = 130, 131, 143


@dataclass(frozen=True)
class Side:
    """One direction's tables, the register holding the filtered VIF's port, and which end of
    the packet is the remote."""

    direction: str
    entry: Table
    state: Table
    rules: Table
    accept: Table
    drop: Table
    port_reg: str
    remote_end: str          #: "src" (ingress) or "dst" (egress)
    #: always allowed: (eth_type, ip_proto, extra match) tuples
    bypass: tuple


EGRESS = Side(firewall.EGRESS, Table.EGRESS_ACL, Table.EGRESS_ACL_STATE, Table.EGRESS_ACL_RULES,
              Table.EGRESS_ACL_ACCEPT, Table.EGRESS_ACL_DROP, Reg.SRC_PORT, "dst", (
                  (EthType.IPV4, IpProto.UDP, {"udp_src": 68, "udp_dst": 67}),
                  (EthType.IPV6, IpProto.UDP, {"udp_src": 546, "udp_dst": 547}),
                  *((EthType.IPV6, IpProto.ICMPV6, {"icmpv6_type": t})
                    for t in (ND_RS, ND_NS, ND_NA, MLD_REPORT, MLD2_REPORT))))
INGRESS = Side(firewall.INGRESS, Table.INGRESS_ACL, Table.INGRESS_ACL_STATE,
               Table.INGRESS_ACL_RULES, Table.INGRESS_ACL_ACCEPT, Table.INGRESS_ACL_DROP,
               Reg.DST_PORT, "src", (
                   (EthType.IPV4, IpProto.UDP, {"udp_src": 67, "udp_dst": 68}),
                   (EthType.IPV6, IpProto.UDP, {"udp_src": 547, "udp_dst": 546}),
                   *((EthType.IPV6, IpProto.ICMPV6, {"icmpv6_type": t})
                     for t in (ND_RA, ND_NS, ND_NA, MLD_QUERY))))
SIDES = (EGRESS, INGRESS)


def _f(table: Table, priority: int, match: dict, actions=(), goto=None) -> Flow:
    return flow(Feature.SECURITY_GROUPS, table, priority, match, tuple(actions), goto)


def ingress_filtered(dp: DatapathContext) -> list[int]:
    """Local ports whose received traffic the ingress ACL filters (flood copies included)."""
    return [port for port, vif in dp.vifs if firewall.filtered(vif)]


def compile(dp: DatapathContext) -> list[Flow]:
    """Feature entry point: both ACLs of every filtered VIF plugged here."""
    local = [(port, vif) for port, vif in dp.vifs if firewall.filtered(vif)]
    if not local:
        return []
    view = dp.view
    out = _Flows()
    stateful = {port: vif for port, vif in local if firewall.stateful(view, vif)}
    members = firewall.member_addresses(view)
    stateful_groups = sorted({g for vif in stateful.values() for g in vif.security_groups
                              if g in view.security_groups})
    for side in SIDES:
        if stateful:
            _state_defaults(out, side, view.allow_same_net_traffic)
            for gid in stateful_groups:
                _group_labels(out, side, view.security_groups[gid])
        used_remotes: dict[tuple[int, str], set[int]] = defaultdict(set)
        for port, vif in local:
            _port_side(out, side, port, vif, port in stateful, view, used_remotes)
        if side is INGRESS:
            _provider(out, side, view)
        for (group, ether), rule_ids in sorted(used_remotes.items()):
            for address in members.get(group, {}).get(ether, ()):
                out.conj(side.rules, PRIO_CONJ,
                         {"eth_type": _ETH[ether],
                          f"{_IP_FIELD[ether]}_{side.remote_end}": _prefix(address)},
                         [Conjunction(r, 1, 2) for r in sorted(rule_ids)])
    return out.flows() + _drop_log(dp)


def _drop_log(dp: DatapathContext) -> list:
    rate = dp.settings.acl_log_rate_pps
    if not rate:
        return []
    # a metered sample of every drop to the controller's log (sdn.apps.acl_log)
    meter = entry_id(Feature.SECURITY_GROUPS, 0)
    return [MeterEntry(Feature.SECURITY_GROUPS, meter, rate),
            *(_f(side.drop, PRIO_LOG, {}, [Meter(meter), Controller(LOG_BYTES)])
              for side in SIDES)]


def _port_side(out: _Flows, side: Side, port: int, vif: VifView, is_stateful: bool,
               view: StateView, used_remotes: dict) -> None:
    """One filtered VIF's flows of one side (every one matches its port register)."""
    _entry(out, side, port, vif, is_stateful)
    if is_stateful:
        _validity(out, side, port, vif, view)
    if side is INGRESS:
        for cidr in firewall.same_net_cidrs(view, vif):
            ether = firewall.ethertype_of(cidr)
            out.add(_f(side.rules, PRIO_SAME_NET,
                       {side.port_reg: port, "eth_type": _ETH[ether],
                        f"{_IP_FIELD[ether]}_src": _prefix(cidr)},
                       _admit(LABEL_SAME_NET, is_stateful), goto=side.accept))
    for rule in firewall.rules_of(view, vif, side.direction):
        _rule(out, side, port, rule, is_stateful, used_remotes)


def _provider(out: _Flows, side: Side, view: StateView) -> None:
    for p in firewall.provider_rules(view):
        ether = firewall.ethertype_of(p.cidr)
        for match in _proto_matches(ether, p.protocol, p.port_min, p.port_max):
            out.add(_f(side.rules, PRIO_PROVIDER,
                       {**match, f"{_IP_FIELD[ether]}_src": _prefix(p.cidr)},
                       goto=side.drop))


# Per-port split (``sdn.flows.incremental``). Without remote-group rules every flow of a
# filtered VIF matches its port register and reads only the VIF, its network, the groups and
# allow_same_net_traffic; the rest (state defaults, group labels, provider rules, the drop
# log) is shared. A remote-group rule's conj_id flow and member clauses are shared by every
# port using the rule (first port wins): not separable, so the whole feature is compiled.
def port_scope(dp: DatapathContext):
    view = dp.view
    if any(rule.remote_group is not None for group in view.security_groups.values()
           for rule in group.rules):
        return None
    return (view.security_groups, view.allow_same_net_traffic)


def compile_port(dp: DatapathContext, port: int, vif: VifView) -> list[Flow]:
    if not firewall.filtered(vif):
        return []
    out, view = _Flows(), dp.view
    is_stateful = firewall.stateful(view, vif)
    for side in SIDES:
        _port_side(out, side, port, vif, is_stateful, view, {})
    return out.flows()


def compile_shared(dp: DatapathContext) -> list[Flow]:
    view = dp.view
    group_sets = {vif.security_groups for _, vif in dp.vifs if firewall.filtered(vif)}
    if not group_sets:
        return []
    stateful_groups = sorted({g for groups in group_sets
                              if _stateful_groups(view, groups)
                              for g in groups if g in view.security_groups})
    any_stateful = any(_stateful_groups(view, groups) for groups in group_sets)
    out = _Flows()
    for side in SIDES:
        if any_stateful:
            _state_defaults(out, side, view.allow_same_net_traffic)
            for gid in stateful_groups:
                _group_labels(out, side, view.security_groups[gid])
        if side is INGRESS:
            _provider(out, side, view)
    return out.flows() + _drop_log(dp)


def _stateful_groups(view: StateView, groups: tuple[int, ...]) -> bool:
    """``firewall.stateful`` of a VIF in ``groups``."""
    present = [view.security_groups[g] for g in groups if g in view.security_groups]
    return not present or any(g.stateful for g in present)


class _Flows:
    """Flows by key: identical matches merge their conjunction actions; otherwise the first
    (lowest rule id) wins, so two rules allowing the same traffic never collide."""

    def __init__(self):
        self._by_key: dict[tuple, Flow] = {}
        self._conj: dict[tuple, list] = {}

    def add(self, f: Flow) -> None:
        self._by_key.setdefault(f.key, f)

    def conj(self, table: Table, priority: int, match: dict, clauses: list) -> None:
        f = _f(table, priority, match)
        self._conj.setdefault(f.key, []).extend(clauses)

    def flows(self) -> list[Flow]:
        out = list(self._by_key.values())
        for (table, priority, match), clauses in self._conj.items():
            unique = tuple(sorted(set(clauses), key=lambda c: (c.conj_id, c.clause)))
            out.append(Flow(Feature.SECURITY_GROUPS, Table(table), priority, match, unique))
        return out


def _admit(label: int, stateful: bool) -> list:
    """Actions admitting a new connection: commit it in the VIF's zone with ``label``."""
    if not stateful:
        return []
    return [Ct(Reg.ACL_ZONE, commit=True, marks=(SetField("ct_label", label),))]


def _entry(out: _Flows, side: Side, port: int, vif: VifView, stateful: bool) -> None:
    for eth_type, proto, extra in side.bypass:
        out.add(_f(side.entry, PRIO_BYPASS, {side.port_reg: port, "eth_type": eth_type,
                                             "ip_proto": proto, **extra}, goto=side.accept))
    zone = firewall.acl_zone(vif)
    for eth_type in (EthType.IPV4, EthType.IPV6):
        match = {side.port_reg: port, "eth_type": eth_type}
        if stateful:
            out.add(_f(side.entry, PRIO_ENTRY, match,
                       [SetField(Reg.ACL_ZONE, zone), Ct(zone, side.state)]))
        else:
            out.add(_f(side.entry, PRIO_ENTRY, match, goto=side.rules))


def _state_defaults(out: _Flows, side: Side, same_net: bool) -> None:
    out.add(_f(side.state, PRIO_INVALID, {"ct_state": ct_state(plus=CT_INV | CT_TRK)},
               goto=side.drop))
    out.add(_f(side.state, PRIO_BLOCKED, {"ct_state": ct_state(plus=CT_TRK),
                                          "ct_mark": MARK_BLOCKED}, goto=side.drop))
    out.add(_f(side.state, PRIO_NEW, {"ct_state": ct_state(plus=CT_NEW | CT_TRK, minus=CT_REL)},
               goto=side.rules))
    if same_net:
        out.add(_f(side.state, PRIO_SAME_NET_LABEL, {"ct_state": ct_state(plus=CT_TRK),
                                                     "ct_label": LABEL_SAME_NET},
                   goto=side.accept))
    for eth_type in (EthType.IPV4, EthType.IPV6):   # ct() needs the IP version matched
        out.add(_f(side.state, PRIO_CUT, {"ct_state": ct_state(plus=CT_TRK), "eth_type": eth_type},
                   [Ct(Reg.ACL_ZONE, commit=True, marks=(SetField("ct_mark", MARK_BLOCKED),))],
                   goto=side.drop))


def _validity(out: _Flows, side: Side, port: int, vif: VifView, view: StateView) -> None:
    """Clause 1 of "the connection's rule still applies": this VIF is in group G."""
    groups = [g for g in vif.security_groups if g in view.security_groups]
    if groups:
        out.conj(side.state, PRIO_VALID, {side.port_reg: port, "ct_state": _TRACKED},
                 [Conjunction(VALID_BASE | g, 1, 2) for g in groups])


def _group_labels(out: _Flows, side: Side, group) -> None:
    """Clause 2: the connection's label is a rule of ``group``; and the conj_id flow."""
    for rule in group.rules:
        out.conj(side.state, PRIO_VALID, {"ct_state": _TRACKED, "ct_label": rule.id},
                 [Conjunction(VALID_BASE | group.id, 2, 2)])
    out.add(_f(side.state, PRIO_VALID, {"conj_id": VALID_BASE | group.id}, goto=side.accept))


def _rule(out: _Flows, side: Side, port: int, rule: RuleView, stateful: bool,
          used_remotes: dict) -> None:
    ether = rule.ethertype
    for match in _proto_matches(ether, rule.protocol, rule.port_min, rule.port_max):
        match = {side.port_reg: port, **match}
        if rule.remote_group is not None:
            out.conj(side.rules, PRIO_CONJ, match, [Conjunction(rule.id, 2, 2)])
            used_remotes[(rule.remote_group, ether)].add(rule.id)
            out.add(_f(side.rules, PRIO_CONJ, {"conj_id": rule.id, "eth_type": _ETH[ether]},
                       _admit(rule.id, stateful), goto=side.accept))
            continue
        cidr = firewall.remote_cidr(rule)
        if cidr not in _EVERYONE:
            match[f"{_IP_FIELD[ether]}_{side.remote_end}"] = _prefix(cidr)
        out.add(_f(side.rules, PRIO_RULE, match, _admit(rule.id, stateful), goto=side.accept))


@lru_cache(maxsize=1 << 12)
def _proto_matches(ether: str, protocol: int | None, lo: int | None,
                   hi: int | None) -> tuple[dict, ...]:
    """The matches of a rule's ethertype/protocol/ports (a port range becomes masks); callers
    copy them before adding fields (cached)."""
    base = {"eth_type": _ETH[ether]}
    if protocol is None:
        return (base,)
    base["ip_proto"] = protocol
    if protocol in _PORT_FIELD:
        if lo is None:
            return (base,)
        name = f"{_PORT_FIELD[protocol]}_dst"
        return tuple({**base, name: m} for m in port_masks(lo, hi))
    if protocol in _ICMP_FIELD:
        prefix = _ICMP_FIELD[protocol]
        if lo is not None:
            base[f"{prefix}_type"] = lo
        if hi is not None:
            base[f"{prefix}_code"] = hi
    return (base,)


def port_masks(lo: int, hi: int) -> list:
    """The fewest (value, mask) pairs covering ports ``lo``..``hi`` (a single port stays an
    int): the standard range-to-prefix split, at most 30 pairs for 16-bit ports."""
    out: list = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        out.append(lo if size == 1 else (lo, 0xFFFF & ~(size - 1)))
        lo += size
    return out


@lru_cache(maxsize=1 << 16)
def _prefix(cidr: str):
    net = ipaddress.ip_network(cidr, strict=False)
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return (str(net.network_address), str(net.netmask))
