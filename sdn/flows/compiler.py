"""Compile what one datapath must hold from state: the one entry point of the engine.

``compile_datapath(view, binding, settings) -> Desired``: each feature module in ``FEATURES``
contributes flows, meters and groups for this datapath through ``compile(dp)`` (dp is a
:class:`~sdn.flows.context.DatapathContext`). A feature that filters what local VIFs receive
(security groups) also defines ``ingress_filtered(dp) -> ofports``, so that floods send only
those ports' copies through the ingress ACL. A new feature is one module in ``sdn/flows/``
plus one line in ``FEATURES``; the controller imports none of them. Pure: no I/O,
deterministic order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from sdn.flows import (arp_responder, classifier, dhcp, dhcpv6, l2, nd, pipeline, port_security,
                       qos, router, security_groups)
from sdn.flows.context import Binding, CompileSettings, DatapathContext, bind_ports
from sdn.flows.model import Desired, Flow, GroupEntry, MeterEntry
from sdn.view import StateView

__all__ = ["Binding", "CompileSettings", "FEATURES", "bind_ports", "compile_datapath",
           "compile_flows"]

#: Every feature, in the order its output is collected (order does not change behaviour:
#: tables and priorities do).
FEATURES = (pipeline, classifier, port_security, security_groups, dhcp, arp_responder, l2, router,
            qos, nd, dhcpv6)


def compile_datapath(view: StateView, binding: Binding,
                     settings: CompileSettings | None = None,
                     flow_sink: Callable[[list[Flow]], None] | None = None) -> Desired:
    """Everything datapath ``binding`` must hold for ``view`` under ``settings``.

    ``flow_sink`` (optional) is handed each feature's flows as soon as that feature is
    compiled, so a caller can start sending them while the rest compiles (the result still
    holds every flow).

    Raises ValueError when two features claim one meter or group id (a programming error).
    """
    dp = DatapathContext(view, binding, settings or CompileSettings())
    filtered = {port for feature in FEATURES if hasattr(feature, "ingress_filtered")
                for port in feature.ingress_filtered(dp)}
    if filtered:
        dp = dataclasses.replace(dp, ingress_filtered=frozenset(filtered))
    desired = Desired(flows=[], meters={}, groups={})
    for feature in FEATURES:
        start = len(desired.flows)
        _collect(desired, feature.compile(dp))
        if flow_sink is not None and len(desired.flows) > start:
            flow_sink(desired.flows[start:])
    return desired


def compile_flows(view: StateView, binding: Binding,
                  settings: CompileSettings | None = None) -> list[Flow]:
    """Only the flows of :func:`compile_datapath` (tests and tools that trace packets)."""
    return compile_datapath(view, binding, settings).flows


def _collect(desired: Desired, items: Iterable) -> None:
    for item in items:
        if isinstance(item, Flow):
            desired.flows.append(item)
        elif isinstance(item, MeterEntry):
            _claim(desired.meters, item.meter_id, item)
        elif isinstance(item, GroupEntry):
            _claim(desired.groups, item.group_id, item)
        else:
            raise TypeError(f"a feature returned {item!r}: flows, MeterEntry or GroupEntry only")


def _claim(table: dict, entry_id: int, item) -> None:
    if entry_id in table and table[entry_id] != item:
        raise ValueError(f"id {entry_id:#x} claimed twice: {table[entry_id]!r} and {item!r}")
    table[entry_id] = item
