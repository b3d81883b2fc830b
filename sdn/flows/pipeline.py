"""Table defaults: what happens to a packet no feature flow claims.

Security-relevant tables end in an explicit drop; service tables fall through to the next
stage. One place, so the whole pipeline's shape is visible at a glance.
"""

from __future__ import annotations

from sdn.flows.model import Feature, Flow, Table, flow

#: Table -> where its table-miss goes (None = drop).
MISS = {
    Table.CLASSIFY: None,
    Table.PORT_SECURITY: None,
    Table.SERVICES: Table.DELIVERY,
    Table.DELIVERY: None,
}


def compile_defaults() -> list[Flow]:
    """One priority-0 flow per used table: drop, or goto the next stage."""
    return [flow(Feature.PIPELINE, table, 0, goto=nxt) for table, nxt in MISS.items()]
