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
    "icmpv4_code": "icmp_code",
}
_FIELD.update({f"reg{i}": f"reg{i}" for i in range(8)})
_FIELD["ct_state"] = "ct_state"
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


def _action(action: m.Action) -> str:
    if isinstance(action, m.Output):
        return "IN_PORT" if action.port == m.OFPP_IN_PORT else f"output:{action.port}"
    if isinstance(action, m.Controller):
        return f"controller(max_len={action.max_len})"
    if isinstance(action, m.PushVlan):
        return f"push_vlan:{action.ethertype:#06x}"
    if isinstance(action, m.PopVlan):
        return "pop_vlan"
    if isinstance(action, m.SetField):
        return f"set_field:{_value(action.value)}->{field_name(action.field)}"
    if isinstance(action, m.Move):
        return f"move:{field_name(action.src)}[]->{field_name(action.dst)}[]"
    if isinstance(action, m.Meter):
        return f"meter:{action.meter_id}"
    if isinstance(action, m.DecTtl):
        return "dec_ttl"
    if isinstance(action, m.Ct):
        args = (["commit"] if action.commit else []) + [f"zone={action.zone}"]
        args += [_nat(action.nat)] if action.nat else []
        args += [f"table={int(action.table)}"] if action.table is not None else []
        return f"ct({','.join(args)})"
    raise TypeError(f"no ovs-ofctl rendering for {action!r}")


def render(flow: m.Flow, generation: int | None = None) -> str:
    """``table=20,priority=300,udp,...,actions=...`` for one flow (cookie included if
    ``generation`` is given)."""
    parts = []
    if generation is not None:
        parts.append(f"cookie={m.cookie(flow.feature, generation):#x}")
    parts += [f"table={int(flow.table)}", f"priority={flow.priority}"]
    parts += [f"ct_state={_ct_state(v)}" if k == "ct_state" else f"{field_name(k)}={_value(v)}"
              for k, v in flow.match]
    acts = [_action(a) for a in flow.actions]
    if flow.goto is not None:
        acts.append(f"goto_table:{int(flow.goto)}")
    return ",".join(parts) + ",actions=" + (",".join(acts) if acts else "drop")
