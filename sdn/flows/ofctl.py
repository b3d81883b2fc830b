"""Render :class:`~sdn.flows.model.Flow` as ``ovs-ofctl add-flow`` text.

Used for logs, tests and the flow-programming benchmark; the controller itself sends binary
OpenFlow (``sdn.apps.ofmsgs``). ovs-ofctl(8) field names are used so the text reads like a dump.
"""

from __future__ import annotations

from sdn.flows import model as m

_FIELD = {
    "in_port": "in_port", "eth_src": "dl_src", "eth_dst": "dl_dst", "eth_type": "dl_type",
    "vlan_vid": "vlan_vid", "ip_proto": "nw_proto", "ipv4_src": "nw_src", "ipv4_dst": "nw_dst",
    "udp_src": "udp_src", "udp_dst": "udp_dst", "tcp_src": "tcp_src", "tcp_dst": "tcp_dst",
    "arp_op": "arp_op", "arp_spa": "arp_spa", "arp_tpa": "arp_tpa", "arp_sha": "arp_sha",
    "arp_tha": "arp_tha", "ipv6_src": "ipv6_src", "ipv6_dst": "ipv6_dst",
    "icmpv6_type": "icmpv6_type", "icmpv6_code": "icmpv6_code", "ipv6_nd_target": "nd_target",
    "ipv6_nd_sll": "nd_sll", "ipv6_nd_tll": "nd_tll", "icmpv4_type": "icmp_type",
    "icmpv4_code": "icmp_code", "sctp_src": "sctp_src", "sctp_dst": "sctp_dst",
}
_FIELD.update({f"reg{i}": f"reg{i}" for i in range(8)})
_FIELD.update({f: f for f in ("ct_state", "ct_mark", "ct_label", "ct_zone", "conj_id")})
_CT_FLAGS = ((m.CT_NEW, "new"), (m.CT_EST, "est"), (m.CT_REL, "rel"), (m.CT_RPL, "rpl"),
             (m.CT_INV, "inv"), (m.CT_TRK, "trk"))


def field_name(oxm: str) -> str:
    """ovs-ofctl name of an OXM field; raises KeyError for a field sdn never uses."""
    return _FIELD[oxm]


def _ct_state(value: tuple[int, int]) -> str:
    want, mask = value
    return "".join(("+" if want & bit else "-") + name for bit, name in _CT_FLAGS if mask & bit)


def _nat(nat: m.Nat) -> str:
    if nat.kind is None:
        return "nat"
    target = nat.ip + (f":{nat.port}" if nat.port else "")
    return f"nat({nat.kind}={target})"


def _value(value) -> str:
    if isinstance(value, tuple):
        v, mask = value
        return f"{_value(v)}/{_value(mask)}"
    if isinstance(value, int):
        return hex(value) if value > 9 else str(value)
    return str(value)


def _zone(zone: int | str) -> str:
    return f"NXM_NX_{zone.upper()}[0..15]" if isinstance(zone, str) else str(zone)


def _ct(action: m.Ct) -> str:
    args = (["commit"] if action.commit else []) + [f"zone={_zone(action.zone)}"]
    args += [_nat(action.nat)] if action.nat else []
    if action.marks:
        args.append("exec(" + ",".join(m.dispatch(ACTIONS, a) for a in action.marks) + ")")
    args += [f"table={int(action.table)}"] if action.table is not None else []
    return f"ct({','.join(args)})"


#: ovs-ofctl text of each action (tables by number, as ``table=``/``goto_table:`` are).
ACTIONS = m.ActionTable("ofctl", {
    m.Output: lambda a: "IN_PORT" if a.port == m.OFPP_IN_PORT else f"output:{a.port}",
    m.Controller: lambda a: f"controller(max_len={a.max_len})",
    m.PushVlan: lambda a: f"push_vlan:{a.ethertype:#06x}",
    m.PopVlan: lambda a: "pop_vlan",
    m.SetField: lambda a: f"set_field:{_value(a.value)}->{field_name(a.field)}",
    m.Move: lambda a: f"move:{field_name(a.src)}[]->{field_name(a.dst)}[]",
    m.Meter: lambda a: f"meter:{a.meter_id}",
    m.DecTtl: lambda a: "dec_ttl",
    m.Ct: _ct,
    m.Group: lambda a: f"group:{a.group_id}",
    m.Resubmit: lambda a: f"resubmit(,{int(a.table)})",
    m.Conjunction: lambda a: f"conjunction({a.conj_id},{a.clause}/{a.n_clauses})",
})


def actions(acts) -> str:
    """``a,b,c`` for a sequence of actions (``drop`` when empty)."""
    return ",".join([m.dispatch(ACTIONS, a) for a in acts]) or "drop"


def render(flow: m.Flow, generation: int | None = None) -> str:
    """``table=20,priority=300,udp,...,actions=...`` for one flow (cookie included if
    ``generation`` is given)."""
    parts = []
    if generation is not None:
        parts.append(f"cookie={m.cookie(flow.feature, generation):#x}")
    parts += [f"table={int(flow.table)}", f"priority={flow.priority}"]
    parts += [f"ct_state={_ct_state(v)}" if k == "ct_state"
              else f"in_port={v}" if k == "in_port"     # ovs-ofctl reads a port number in decimal
              else f"{field_name(k)}={_value(v)}" for k, v in flow.match]
    acts = [m.dispatch(ACTIONS, a) for a in flow.actions]
    if flow.goto is not None:
        acts.append(f"goto_table:{int(flow.goto)}")
    return ",".join(parts) + ",actions=" + (",".join(acts) if acts else "drop")


def render_group(entry: m.GroupEntry) -> str:
    """``group_id=...,type=all,bucket=actions=...,bucket=...`` for ``ovs-ofctl -O OpenFlow13
    add-group`` (an empty bucket drops its copy)."""
    buckets = "".join(f",bucket=actions={actions(b)}" for b in entry.buckets)
    return f"group_id={entry.group_id},type={entry.type}{buckets}"


def render_meter(entry: m.MeterEntry) -> str:
    """``meter=...,kbps,burst,band=type=drop,rate=...,burst_size=...`` for ``ovs-ofctl -O
    OpenFlow13 add-meter`` (the meter ``sdn.apps.ofmsgs.meter_mod`` sends)."""
    return (f"meter={entry.meter_id},{entry.unit},burst,"
            f"band=type=drop,rate={entry.rate},burst_size={entry.burst_size}")
