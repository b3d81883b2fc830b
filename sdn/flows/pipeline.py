"""The pipeline, declared once: its stages in order, where each goes next, and its table-miss.

Like OVN's logical pipelines (``next;``), a feature never names its successor table: it sends
a packet to ``next_table(its_table)``, or, where the packet leaves the main line (the router's
branch), to a stage named here in ``BRANCHES``. ``compile_defaults`` gives every table its
priority-0 flow; tests check that every ``goto``/``resubmit`` the compiler emits is declared
here and that goto_table only moves forward (OpenFlow 1.3 §5.1).

Main line (every frame from a VIF)::

  classify -> port_security -> egress_acl(_state, _rules, _accept) -> services -> l2_lookup
    -> ingress_acl(_state, _rules, _accept) -> output

The ACL stages belong to ``sdn.flows.security_groups``; a VIF it does not filter (and what is
not IP) skips from ``egress_acl`` to ``services`` and from ``ingress_acl`` to ``output`` by
table-miss. Refusals go to ``egress_acl_drop``/``ingress_acl_drop`` (counted apart).

Frames from a trunk skip port security and the egress ACL (the far end ran them):
``classify -> services``. Routed frames (to a gateway MAC, or from the public port) take the
router branch ``services|uplink -> l3_unsnat ... l3_output`` and enter ``l2_lookup`` in their
destination segment. A flood group's copy to a port whose ingress a feature filters resubmits
to ``ingress_acl`` with its reg7; other copies go straight out (see ``sdn.flows.l2``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sdn.flows.model import Feature, Flow, Table, flow

DROP = "drop"
NEXT = "next"


@dataclass(frozen=True)
class Stage:
    table: Table
    miss: str | Table  #: DROP, NEXT (the next stage of the line), or a later stage
    purpose: str


#: The main line, in order.
MAIN = (
    Stage(Table.CLASSIFY, DROP, "which VIF/segment: reg5 source port, reg6 segment key"),
    Stage(Table.PORT_SECURITY, DROP, "a VIF speaks only as itself"),
    Stage(Table.EGRESS_ACL, Table.SERVICES, "from a filtered VIF: always-allowed, else conntrack"),
    Stage(Table.EGRESS_ACL_STATE, Table.EGRESS_ACL_DROP, "established: admitting rule still on?"),
    Stage(Table.EGRESS_ACL_RULES, Table.EGRESS_ACL_DROP, "new connections: egress rules"),
    Stage(Table.EGRESS_ACL_ACCEPT, NEXT, "accepted by the egress ACL"),
    Stage(Table.SERVICES, NEXT, "DHCP punt, gateway ARP responder, routed frames to the router"),
    Stage(Table.L2_LOOKUP, DROP, "destination in the segment: reg7, trunks or flood group"),
    Stage(Table.INGRESS_ACL, Table.OUTPUT, "to a filtered VIF: always-allowed, else conntrack"),
    Stage(Table.INGRESS_ACL_STATE, Table.INGRESS_ACL_DROP, "established: admitting rule still on?"),
    Stage(Table.INGRESS_ACL_RULES, Table.INGRESS_ACL_DROP,
          "new connections: provider drops, same network, ingress rules"),
    Stage(Table.INGRESS_ACL_ACCEPT, NEXT, "accepted by the ingress ACL"),
    Stage(Table.OUTPUT, DROP, "output to reg7"),
)

#: Where the ACLs drop (a table each, so drops are counted apart from accepts).
ACL_DROPS = (
    Stage(Table.EGRESS_ACL_DROP, DROP, "refused by the egress ACL"),
    Stage(Table.INGRESS_ACL_DROP, DROP, "refused by the ingress ACL"),
)

#: The router's branch (network host only), in order; each table's miss.
ROUTER = (
    Stage(Table.UPLINK, DROP, "from the public port: ARP for router addresses, accept"),
    Stage(Table.L3_UNSNAT, NEXT, "replies to SNATed connections"),
    Stage(Table.L3_DNAT, Table.L3_ROUTE, "floating IP, metadata, VPN: DNAT"),
    Stage(Table.L3_DNAT_COMMIT, NEXT, "commit new DNAT connections"),
    Stage(Table.L3_ROUTE, DROP, "next hop"),
    Stage(Table.L3_UNDNAT, NEXT, "replies from DNAT backends"),
    Stage(Table.L3_SNAT, Table.L3_OUTPUT, "which source NAT"),
    Stage(Table.L3_SNAT_COMMIT, DROP, "commit new SNAT connections"),
    Stage(Table.L3_OUTPUT, DROP, "into a segment (l2_lookup) or out of the public port"),
)

#: Jumps off the line: table -> the stages it may send to besides its next one.
BRANCHES: dict[Table, tuple[Table, ...]] = {
    Table.CLASSIFY: (Table.SERVICES, Table.UPLINK),        # trunk frames; the public port
    Table.SERVICES: (Table.L3_UNSNAT,),                    # to a gateway MAC on the router
    Table.UPLINK: (Table.L3_UNSNAT,),
    Table.L3_UNSNAT: (Table.L3_DNAT,),                     # via conntrack recirculation
    Table.L3_DNAT: (Table.L3_DNAT_COMMIT, Table.L3_ROUTE),
    Table.L3_DNAT_COMMIT: (Table.L3_ROUTE,),
    Table.L3_ROUTE: (Table.L3_UNDNAT,),
    Table.L3_UNDNAT: (Table.L3_SNAT,),
    Table.L3_SNAT: (Table.L3_SNAT_COMMIT, Table.L3_OUTPUT),
    Table.L3_SNAT_COMMIT: (Table.L3_OUTPUT,),
    Table.L3_OUTPUT: (Table.L2_LOOKUP,),                   # into the destination segment
    Table.L2_LOOKUP: (Table.INGRESS_ACL,),                 # flood group buckets (resubmit)
    Table.EGRESS_ACL: (Table.EGRESS_ACL_RULES, Table.EGRESS_ACL_ACCEPT),  # stateless; bypass
    Table.EGRESS_ACL_STATE: (Table.EGRESS_ACL_ACCEPT, Table.EGRESS_ACL_DROP),
    Table.EGRESS_ACL_RULES: (Table.EGRESS_ACL_DROP,),
    Table.INGRESS_ACL: (Table.INGRESS_ACL_RULES, Table.INGRESS_ACL_ACCEPT),
    Table.INGRESS_ACL_STATE: (Table.INGRESS_ACL_ACCEPT, Table.INGRESS_ACL_DROP),
    Table.INGRESS_ACL_RULES: (Table.INGRESS_ACL_DROP,),
}

STAGES: tuple[Stage, ...] = MAIN + ACL_DROPS + ROUTER
_NEXT = {a.table: b.table for line in (MAIN, ROUTER) for a, b in zip(line, line[1:])}
_MISS = {s.table: s.miss for s in STAGES}
_STAGE = {s.table: s for s in STAGES}


def next_table(table: Table) -> Table:
    """The stage after ``table`` on its line (``next;``); KeyError for a line's last stage."""
    return _NEXT[table]


def successors(table: Table) -> frozenset[Table]:
    """Every table ``table`` may send a packet to (next stage and declared branches)."""
    nxt = {_NEXT[table]} if table in _NEXT else set()
    miss = miss_goto(_STAGE[table])
    return frozenset(nxt | set(BRANCHES.get(table, ())) | ({miss} if miss is not None else set()))


def miss_goto(stage: Stage) -> Table | None:
    """Where ``stage``'s table-miss sends a packet (None: drop)."""
    if stage.miss == DROP:
        return None
    return next_table(stage.table) if stage.miss == NEXT else stage.miss


def compile_defaults(router: bool = False) -> list[Flow]:
    """One priority-0 flow per table: drop, or go on. The router's tables only when this
    datapath routes (``router``)."""
    stages = STAGES if router else MAIN + ACL_DROPS
    return [flow(Feature.PIPELINE, s.table, 0, goto=miss_goto(s)) for s in stages]


def compile(dp) -> list[Flow]:
    """Feature entry point (``sdn.flows.compiler.FEATURES``)."""
    return compile_defaults(router=dp.routes)
