"""Walk a packet through compiled flows, in logical terms (like ``ofproto/trace``, without a switch).

Used by unit tests to assert outcomes ("leaves on port 2 tagged 100", "dropped") and by
people to ask what sdn's pipeline does with a packet. It models exactly the subset of
OpenFlow 1.3 that ``sdn.flows`` emits: exact and masked matches, set-field, move, push/pop
VLAN, output (in_port excluded unless IN_PORT), controller, meter and dec_ttl (ignored),
goto-table. Conntrack is not simulated: a ``ct`` action is recorded in ``Result.cts`` and, if
it recirculates, the walk continues in its table with the packet's ``ct_state`` as the caller
gave it (so a test states "this is a new connection"). A committing ``nat(src=...)`` or
``nat(dst=...)`` rewrites the packet as conntrack would for a new connection; re-applying an
existing binding (bare ``nat``) changes nothing, so for established traffic the caller gives
the already-translated addresses.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable
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

    @property
    def dropped(self) -> bool:
        return not self.outputs and not self.to_controller

    def ports(self) -> set[int]:
        return {port for port, _ in self.outputs}


def trace(flows: Iterable[m.Flow], packet: dict) -> Result:
    """Run ``packet`` (OXM field -> value; needs ``in_port``; ``vlan_vid`` 0 = untagged) through
    ``flows`` starting at table 0."""
    tables: dict[int, list[m.Flow]] = defaultdict(list)
    for f in flows:
        tables[int(f.table)].append(f)
    for entries in tables.values():
        entries.sort(key=lambda f: -f.priority)
    pkt = {"vlan_vid": m.OFPVID_NONE, **packet}
    pkt.update({f"reg{i}": 0 for i in range(8) if f"reg{i}" not in pkt})
    pkt.setdefault("ct_state", 0)
    result = Result(packet=pkt)
    table: int | None = 0
    while table is not None:
        hit = next((f for f in tables.get(table, []) if _matches(pkt, f.match)), None)
        if hit is None:
            break  # table-miss without a flow: drop (OpenFlow 1.3 §5.4)
        result.path.append(hit)
        table = int(hit.goto) if hit.goto is not None else None
        for action in hit.actions:
            _apply(action, pkt, result)
            if isinstance(action, m.Ct):
                result.cts.append(action)
                _nat(action, pkt)
                table = int(action.table) if action.table is not None else None
                break  # the rest of the pipeline runs on the recirculated packet
    return result


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
})


def _apply(action: m.Action, pkt: dict, result: Result) -> None:
    m.dispatch(ACTIONS, action, pkt, result)
