"""Walk a packet through compiled flows, in logical terms (like ``ofproto/trace``, without a switch).

Used by unit tests to assert outcomes ("leaves on port 2 tagged 100", "dropped") and by
people to ask what sdn's pipeline does with a packet. It models exactly the subset of
OpenFlow 1.3 that ``sdn.flows`` emits: exact and masked matches, set-field, move, push/pop
VLAN, output (in_port excluded unless IN_PORT), controller, meter and dec_ttl (ignored),
goto-table, groups of type all (each bucket on a copy of the packet) and resubmit (the walk
goes through the table and returns). Conntrack is not simulated: a ``ct`` action is recorded in ``Result.cts`` and, if
it recirculates, the walk continues in its table with the packet's ``ct_state`` as the caller
gave it (so a test states "this is a new connection"). A committing ``nat(src=...)`` or
``nat(dst=...)`` rewrites the packet as conntrack would for a new connection; re-applying an
existing binding (bare ``nat``) changes nothing, so for established traffic the caller gives
the already-translated addresses.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass, field

from sdn.flows import model as m

MAC_FIELDS = {"eth_src", "eth_dst", "arp_sha", "arp_tha"}
IP_FIELDS = {"ipv4_src", "ipv4_dst", "arp_spa", "arp_tpa", "ipv6_src", "ipv6_dst",
             "ipv6_nd_target"}


def _int(field_name: str, value) -> int:
    if isinstance(value, int):
        return value
    if field_name in MAC_FIELDS:
        return int(value.replace(":", ""), 16)
    if field_name in IP_FIELDS:
        return int(ipaddress.ip_address(value))
    raise ValueError(f"cannot compare {field_name}={value!r}")


def _matches(packet: dict, match: tuple) -> bool:
    for name, want in match:
        if name not in packet:
            return False
        have = _int(name, packet[name])
        if isinstance(want, tuple):
            value, mask = _int(name, want[0]), _int(name, want[1])
            if have & mask != value & mask:
                return False
        elif have != _int(name, want):
            return False
    return True


@dataclass
class Result:
    """Where the packet went: ``outputs`` [(port, vlan_vid or None)], ``to_controller``, and
    the flows it hit, in order."""

    outputs: list[tuple[int, int | None]] = field(default_factory=list)
    to_controller: bool = False
    path: list[m.Flow] = field(default_factory=list)
    cts: list[m.Ct] = field(default_factory=list)
    packet: dict = field(default_factory=dict)

    #: why the switch would drop the packet whole (OVS's translation limits), or None
    failed: str | None = None

    @property
    def dropped(self) -> bool:
        return not self.outputs and not self.to_controller

    def ports(self) -> set[int]:
        return {port for port, _ in self.outputs}


_DEPTH_MAX = 64   # resubmits/groups nested deeper than this are a loop (OVS stops at 64 too)
#: OVS translates one packet with at most 4,096 resubmits and goto_tables, nested or not
#: (MAX_RESUBMITS, ofproto/ofproto-dpif-xlate.c); past it the packet is dropped whole
RESUBMITS_MAX = 4096


class _TooManyResubmits(Exception):
    pass


def trace(flows, packet: dict, groups=None) -> Result:
    """Run ``packet`` (OXM field -> value; needs ``in_port``; ``vlan_vid`` 0 = untagged) through
    ``flows`` starting at table 0. ``flows`` may be a list of flows or a
    :class:`~sdn.flows.model.Desired` (whose groups are then used); ``groups`` maps group id ->
    :class:`~sdn.flows.model.GroupEntry`."""
    if isinstance(flows, m.Desired):
        groups = flows.groups if groups is None else groups
        flows = flows.flows
    tables: dict[int, list[m.Flow]] = defaultdict(list)
    for f in flows:
        tables[int(f.table)].append(f)
    for entries in tables.values():
        entries.sort(key=lambda f: -f.priority)
    pkt = {"vlan_vid": m.OFPVID_NONE, **packet}
    pkt.update({f"reg{i}": 0 for i in range(8) if f"reg{i}" not in pkt})
    for name in ("ct_state", "ct_mark", "ct_label"):
        pkt.setdefault(name, 0)
    result = Result(packet=pkt)
    try:
        _Walk(tables, groups or {}, result).run(0, pkt, 0)
    except _TooManyResubmits:
        result.outputs, result.to_controller = [], False
        result.failed = f"too many resubmits (more than {RESUBMITS_MAX})"
    return result


def _lookup(entries: list[m.Flow], pkt: dict) -> m.Flow | None:
    """The flow a packet hits in one table (``entries`` by descending priority), conjunctive
    matches included: flows whose actions are all ``conjunction`` only vote; when every clause
    of an id is matched at a priority, the flow matching ``conj_id`` = that id is hit."""
    votes: dict[int, set[int]] = defaultdict(set)
    needed: dict[int, int] = {}
    level = None
    for f in entries:
        if level is not None and f.priority < level:
            hit = _complete(entries, pkt, votes, needed)
            if hit is not None:
                return hit
            votes.clear()
        level = f.priority
        if any(name == "conj_id" for name, _ in f.match) or not _matches(pkt, f.match):
            continue
        if f.actions and all(isinstance(a, m.Conjunction) for a in f.actions):
            for a in f.actions:
                votes[a.conj_id].add(a.clause)
                needed[a.conj_id] = a.n_clauses
            continue
        if not votes:
            return f
    return _complete(entries, pkt, votes, needed)


def _complete(entries, pkt, votes, needed) -> m.Flow | None:
    for conj_id in sorted(c for c, clauses in votes.items() if len(clauses) == needed[c]):
        probe = {**pkt, "conj_id": conj_id}
        for f in entries:
            if any(name == "conj_id" for name, _ in f.match) and _matches(probe, f.match):
                return f
    return None


@dataclass
class _Walk:
    tables: dict
    groups: dict
    result: Result
    resubmits: int = 0
    recirculate: int | None = None

    def _count(self) -> None:
        self.resubmits += 1
        if self.resubmits > RESUBMITS_MAX:
            raise _TooManyResubmits()

    def run(self, table: int | None, pkt: dict, depth: int) -> None:
        if depth > _DEPTH_MAX:
            raise RecursionError(f"resubmit/group nesting deeper than {_DEPTH_MAX}")
        while table is not None:
            hit = _lookup(self.tables.get(table, []), pkt)
            if hit is None:
                return  # table-miss without a flow: drop (OpenFlow 1.3 §5.4)
            self.result.path.append(hit)
            table = int(hit.goto) if hit.goto is not None else None
            if self.actions(hit.actions, pkt, depth):
                table = self.recirculate
                self.resubmits = 0   # recirculation: a new translation in OVS
                continue
            if table is not None:
                self._count()

    def actions(self, actions, pkt: dict, depth: int) -> bool:
        """Apply ``actions``; True when a ct() recirculates (to ``self.recirculate``)."""
        for action in actions:
            if isinstance(action, m.Ct):
                self.result.cts.append(action)
                _nat(action, pkt)
                if action.commit:
                    for mark in action.marks:
                        pkt[mark.field] = mark.value
                if action.table is None:
                    continue   # no recirculation: the actions go on
                self.recirculate = int(action.table) if action.table is not None else None
                return True  # the rest of the pipeline runs on the recirculated packet
            if isinstance(action, m.Resubmit):
                self._count()
                self.run(int(action.table), pkt, depth + 1)
            elif isinstance(action, m.Group):
                group = self.groups.get(action.group_id)
                if group is None:
                    raise KeyError(f"group {action.group_id:#x} is applied but not defined")
                for bucket in group.buckets:     # type all: each bucket on its own copy
                    copy = dict(pkt)
                    if self.actions(bucket, copy, depth + 1):
                        self.run(self.recirculate, copy, depth + 1)
            else:
                _apply(action, pkt, self.result)
        return False


def _nat(ct: m.Ct, pkt: dict) -> None:
    if not (ct.commit and ct.nat and ct.nat.kind):
        return
    side = "src" if ct.nat.kind == "src" else "dst"
    pkt[f"ipv4_{side}"] = ct.nat.ip
    if ct.nat.port:
        pkt[f"tcp_{side}"] = pkt[f"udp_{side}"] = ct.nat.port


def _output(action: m.Output, pkt: dict, result: Result) -> None:
    tag = pkt["vlan_vid"] & 0xFFF if pkt["vlan_vid"] & m.OFPVID_PRESENT else None
    if action.port == m.OFPP_IN_PORT:
        result.outputs.append((pkt["in_port"], tag))
    elif action.port != pkt["in_port"]:
        result.outputs.append((action.port, tag))


def _controller(action: m.Controller, pkt: dict, result: Result) -> None:
    result.to_controller = True


def _set(field_name: str, value):
    def apply(action, pkt: dict, result: Result) -> None:
        pkt[field_name] = value
    return apply


def _set_field(action: m.SetField, pkt: dict, result: Result) -> None:
    pkt[action.field] = action.value


def _move(action: m.Move, pkt: dict, result: Result) -> None:
    pkt[action.dst] = pkt.get(action.src)


def _ignore(action, pkt: dict, result: Result) -> None:
    """Meters and TTLs are not simulated."""


#: Actions that change the walk's control flow, handled by ``_Walk.actions`` itself.
WALK_ACTIONS = (m.Ct, m.Group, m.Resubmit)

#: Effect of every other action on the packet and the result.
ACTIONS = m.ActionTable("trace", {
    m.Output: _output,
    m.Controller: _controller,
    m.PushVlan: _set("vlan_vid", m.OFPVID_PRESENT),
    m.PopVlan: _set("vlan_vid", m.OFPVID_NONE),
    m.SetField: _set_field,
    m.Move: _move,
    m.Meter: _ignore,
    m.DecTtl: _ignore,
    m.Conjunction: _ignore,   # handled by the table lookup (``_lookup``)
})


def _apply(action: m.Action, pkt: dict, result: Result) -> None:
    m.dispatch(ACTIONS, action, pkt, result)
