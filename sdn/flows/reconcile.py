"""Decide what to send so a datapath's flow table becomes the desired one, without a wipe.

Two situations (the per-datapath sync unit executes the plan, see sdn/apps/datapath.py):

- **Full sync** (switch connected or reconnected, controller restarted): every desired flow is
  sent as an OpenFlow ADD carrying a *new generation* in its cookie. An ADD whose table,
  priority and match equal an installed flow's replaces it in place (OpenFlow 1.3 §6.4), so
  forwarding never stops. Flows still carrying an older sdn generation afterwards are stale
  and are deleted by exact cookie. All of it goes in one bundle, committed atomically.
- **Incremental** (state or ports changed): diff the new desired set against what this
  controller installed; ADD new or changed flows, DELETE_STRICT vanished ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sdn.flows.model import COOKIE_APP, GENERATION_MASK, Ct, Flow, GroupEntry, MeterEntry


@dataclass
class Plan:
    """Messages to send: ``adds`` (OFPFC_ADD), ``deletes`` (OFPFC_DELETE_STRICT by key) and
    ``stale_cookies`` (OFPFC_DELETE of every flow with exactly that cookie)."""

    adds: list[Flow] = field(default_factory=list)
    deletes: list[Flow] = field(default_factory=list)
    stale_cookies: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.adds or self.deletes or self.stale_cookies)


def index(flows: Iterable[Flow]) -> dict[tuple, Flow]:
    """Flows by switch identity (table, priority, match). A later duplicate key wins. An
    incremental compile's flows (``sdn.flows.incremental.FlowList``) carry theirs."""
    built = getattr(flows, "flow_index", None)
    return built if built is not None else {f.key: f for f in flows}


def plan_full(desired: Mapping[tuple, Flow], installed_cookies: Iterable[int],
              generation: int) -> Plan:
    """Full sync: add all ``desired``; delete every sdn cookie on the switch whose generation
    is not ``generation``. ``installed_cookies`` are the cookies a flow-stats dump returned."""
    stale = sorted({c for c in installed_cookies
                    if c >> 56 == COOKIE_APP and c & GENERATION_MASK != generation})
    return Plan(adds=list(desired.values()), stale_cookies=stale)


def plan_incremental(installed: Mapping[tuple, Flow], desired: Mapping[tuple, Flow]) -> Plan:
    """Diff: flows to add or replace (new key, or same key with other actions/feature) and flows
    to delete (key no longer desired). When ``desired`` was derived from ``installed`` by an
    incremental compile (``sdn.flows.incremental.FlowIndex``), only its changed keys are
    looked at."""
    changed = getattr(desired, "changed", None)
    if changed is not None and getattr(desired, "base", None) is installed:
        adds = [desired[k] for k in changed if k in desired and installed.get(k) != desired[k]]
        deletes = [installed[k] for k in changed if k in installed and k not in desired]
        return Plan(adds=adds, deletes=deletes)
    adds = [f for k, f in desired.items() if installed.get(k) != f]
    deletes = [f for k, f in installed.items() if k not in desired]
    return Plan(adds=adds, deletes=deletes)


@dataclass
class MeterPlan:
    """Meter mods: ``add`` and ``modify`` (id -> MeterEntry) go before the flows that use them,
    ``delete`` after the flows that used them are gone (deleting a meter deletes its flows)."""

    add: dict[int, MeterEntry] = field(default_factory=dict)
    modify: dict[int, MeterEntry] = field(default_factory=dict)
    delete: list[int] = field(default_factory=list)


def plan_meters(installed: Mapping[int, tuple | None],
                desired: Mapping[int, MeterEntry]) -> MeterPlan:
    """Diff meters: ``installed`` maps id -> ``MeterEntry.spec`` (unit, rate, burst size), or
    None when unknown (re-set it); it must hold only sdn's meters."""
    return MeterPlan(add={i: e for i, e in desired.items() if i not in installed},
                     modify={i: e for i, e in desired.items()
                             if i in installed and installed[i] != e.spec},
                     delete=sorted(i for i in installed if i not in desired))


@dataclass
class GroupPlan:
    """Group mods, in the order to send them: ``add`` then ``modify`` before the flows (a group
    applied by another comes first), ``delete`` after the flows are gone (deleting a group
    deletes the flows that apply it; OpenFlow 1.3 §6.5), groups applying others first."""

    add: list[GroupEntry] = field(default_factory=list)
    modify: list[GroupEntry] = field(default_factory=list)
    delete: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.add or self.modify or self.delete)


def plan_groups(installed: Mapping[int, GroupEntry | None],
                desired: Mapping[int, GroupEntry]) -> GroupPlan:
    """Diff groups by id; an installed entry of None means "exists, content unknown" (after a
    reconnect), so it is modified. ``installed`` must hold only sdn's groups."""
    def leaves_first(entries):
        return sorted(entries, key=lambda g: (bool(g.children), g.group_id))

    add = [g for i, g in desired.items() if i not in installed]
    modify = [g for i, g in desired.items() if i in installed and installed[i] != g]
    gone = [i for i in installed if i not in desired]
    parents = {i for i in gone if installed[i] is None or installed[i].children}
    return GroupPlan(add=leaves_first(add), modify=leaves_first(modify),
                     delete=sorted(gone, key=lambda i: (i not in parents, i)))


def ct_zones(flows: dict[tuple, Flow]) -> set[int]:
    """The conntrack zones ``flows`` send packets through (numbered zones; a zone taken from a
    register is also numbered in the flow that loads it)."""
    known = getattr(flows, "zones", None)    # an incremental compile's FlowIndex counted them
    if known is not None:
        return set(known)
    return {a.zone for f in flows.values() for a in f.actions
            if isinstance(a, Ct) and isinstance(a.zone, int)}
