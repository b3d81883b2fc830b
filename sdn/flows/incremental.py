"""Incremental compilation: what ``compile_datapath`` returns, recompiling only what changed.

``compile_datapath`` stays the reference (``tests/unit/test_incremental.py`` checks, for random
sequences of state changes, that both give the same flows, meters and groups). A feature may
split its output so that a change recompiles only its share (all optional, in the module):

- ``port_scope(dp)`` -> a value, or None when the feature cannot be split for this ``dp``;
  ``compile_port(dp, port, vif)``: what VIF ``vif`` on ``port`` contributes, reading only the
  port, the VIF, its network and what ``port_scope`` returned; ``compile_shared(dp)``: the
  rest. ``compile(dp)`` must equal the shared items plus every local VIF's.
- ``network_inputs(dp, network)`` -> a value holding everything
  ``compile_network_part(dp, inputs)`` reads: that network's share, added for every network
  present (``dp.networks``).

A feature without ``compile_port`` (or whose ``port_scope`` is None) is compiled whole every
time; its output is a part like any other. A VIF's parts are recompiled when its ``VifView``
or its ``NetworkView`` is another object than at the last compile (``sdn.db.viewdelta``
keeps unchanged rows' objects), or when the feature's ``port_scope`` changed (then every
port). Items are kept by key with reference counts, so the result is a flow index
(``FlowIndex``) updated by the parts that changed, and the keys that may differ from the
previous result: ``sdn.flows.reconcile.plan_incremental`` diffs only those.

When two parts give one key different contents (the reference resolves this by feature order
for flows, and raises for meters and groups), the compiler forgets its cache and returns
``compile_datapath``'s result: correctness over speed.
"""

from __future__ import annotations

import collections
import collections.abc
import dataclasses
import threading
from typing import Callable

from sdn.flows.compiler import FEATURES, compile_datapath
from sdn.flows.context import Binding, CompileSettings, DatapathContext
from sdn.flows.model import Ct, Desired, Flow, GroupEntry, MeterEntry
from sdn.view import StateView


#: flows handed to a ``flow_sink`` at a time: the switch parses one batch while the next compiles
SINK_BATCH = 4096


class FlowIndex(dict):
    """Flows by key (what ``reconcile.index`` returns) plus what the compiler knows of them:
    ``zones`` (conntrack zones they use), ``per_feature`` (flow count by feature), and
    ``base``/``changed``: the index this one was derived from and the keys that may differ
    from it (None: unknown)."""

    zones: frozenset = frozenset()
    per_feature: collections.Counter | None = None
    base: dict | None = None
    changed: dict | None = None


class FlowList(collections.abc.Sequence):
    """``Desired.flows`` of an incremental compile: the values of ``flow_index`` (a
    ``FlowIndex``), without building a list of them (hundreds of thousands at 10k VIFs)."""

    def __init__(self, flow_index: FlowIndex):
        self.flow_index = flow_index

    def __len__(self) -> int:
        return len(self.flow_index)

    def __iter__(self):
        return iter(self.flow_index.values())

    def __getitem__(self, i):
        return list(self.flow_index.values())[i]


def _zones(item: Flow):
    return [a.zone for a in item.actions if isinstance(a, Ct) and isinstance(a.zone, int)]


class IncrementalCompiler:
    """One datapath's compiler state (use one per switch; a lock serialises compiles: the
    worker of a replaced connection may still be finishing one). ``stats`` counts
    ``compiles``, ``fallbacks`` (conflicts resolved by the full compile) and the ports and
    networks recompiled."""

    def __init__(self):
        self.stats = collections.Counter()
        self._lock = threading.Lock()
        self._sink: Callable[[list[Flow]], None] | None = None
        self._pending: list[Flow] = []
        self._reset()

    def _reset(self) -> None:
        self._vifs: dict = {}
        self._nets: dict = {}
        self._scopes: dict = {}
        self._net_inputs: dict = {}
        self._parts: dict[tuple, list] = {}
        self._index = FlowIndex()
        self._refs: dict = {}
        self._meters: dict[int, MeterEntry] = {}
        self._groups: dict[int, GroupEntry] = {}
        self._entry_refs: dict = {}
        self._zone_refs = collections.Counter()
        self._per_feature = collections.Counter()
        self._out: FlowIndex | None = None
        self._touched: dict = {}
        self._conflict = False

    def compile(self, view: StateView, binding: Binding,
                settings: CompileSettings | None = None,
                flow_sink: Callable[[list[Flow]], None] | None = None) -> Desired:
        """What ``compile_datapath(view, binding, settings)`` returns (flows as a
        ``FlowList``). ``flow_sink`` (optional, as ``compile_datapath``'s) is handed the flows
        of the parts recompiled, in batches of about ``SINK_BATCH``, while the compile goes
        on; a key may come twice (the last version counts) and the result is authoritative."""
        with self._lock:
            self._sink, self._pending = flow_sink, []
            try:
                return self._compile(view, binding, settings)
            finally:
                self._sink, self._pending = None, []

    def _flush(self) -> None:
        if self._sink is not None and self._pending:
            batch, self._pending = self._pending, []
            self._sink(batch)

    def _compile(self, view: StateView, binding: Binding,
                 settings: CompileSettings | None) -> Desired:
        settings = settings or CompileSettings()
        self.stats["compiles"] += 1
        dp = DatapathContext(view, binding, settings)
        filtered = {port for feature in FEATURES if hasattr(feature, "ingress_filtered")
                    for port in feature.ingress_filtered(dp)}
        if filtered:
            dp = dataclasses.replace(dp, ingress_filtered=frozenset(filtered))
        self._touched, self._conflict = {}, False
        try:
            self._update(dp)
        except Exception:
            self._reset()
            raise
        if self._conflict:
            self.stats["fallbacks"] += 1
            self._reset()
            self._pending = []
            return compile_datapath(view, binding, settings, self._sink)
        self._flush()
        out = FlowIndex(self._index)
        out.zones = frozenset(z for z, n in self._zone_refs.items() if n)
        out.per_feature = +self._per_feature
        out.base, out.changed = self._out, self._touched
        self._out = out
        return Desired(flows=FlowList(out), meters=dict(self._meters), groups=dict(self._groups))

    # ---- which parts to recompile -------------------------------------------------------------

    def _update(self, dp: DatapathContext) -> None:
        view, vifs = dp.view, dp.binding.vifs
        old_nets = self._nets
        changed_nets = {nid for nid, net in view.networks.items() if old_nets.get(nid) is not net}
        changed_nets |= old_nets.keys() - view.networks.keys()
        old_vifs = self._vifs
        dirty = [port for port, vif in vifs.items()
                 if old_vifs.get(port) is not vif or vif.network_id in changed_nets]
        gone = [port for port in old_vifs if port not in vifs]
        for feature in FEATURES:
            name = feature.__name__
            scope = feature.port_scope(dp) if hasattr(feature, "compile_port") else None
            if scope is None:
                if name in self._scopes:
                    self._drop_parts(name)
                self._set((name, "whole"), feature.compile(dp))
                continue
            self._set((name, "whole"), [])
            if name not in self._scopes or self._scopes[name] != scope:
                ports = list(vifs)
                self.stats["scope_changes"] += 1
            else:
                ports = dirty
            self._scopes[name] = scope
            for port in gone:
                self._set((name, "port", port), [])
            for port in ports:
                self._set((name, "port", port), feature.compile_port(dp, port, vifs[port]))
            self.stats["ports"] += len(ports)
            if hasattr(feature, "network_inputs"):
                self._networks(feature, name, dp)
            self._set((name, "shared"), feature.compile_shared(dp))
        self._vifs, self._nets = vifs, view.networks     # frozen views' own dicts

    def _networks(self, feature, name: str, dp: DatapathContext) -> None:
        present = set()
        for network in dp.networks:
            present.add(network.id)
            pid = (name, "net", network.id)
            inputs = feature.network_inputs(dp, network)
            if pid not in self._net_inputs or self._net_inputs[pid] != inputs:
                self._set(pid, feature.compile_network_part(dp, inputs))
                self._net_inputs[pid] = inputs
                self.stats["networks"] += 1
        for pid in [p for p in self._net_inputs if p[0] == name and p[2] not in present]:
            self._set(pid, [])
            del self._net_inputs[pid]

    def _drop_parts(self, name: str) -> None:
        for pid in [p for p in self._parts if p[0] == name and p[1] != "whole"]:
            self._set(pid, [])
        self._scopes.pop(name, None)
        for pid in [p for p in self._net_inputs if p[0] == name]:
            del self._net_inputs[pid]

    # ---- items by key, with reference counts -------------------------------------------------

    def _set(self, pid: tuple, items) -> None:
        items = list(items)
        old = self._parts.get(pid)
        if old == items or (old is None and not items):
            return
        for item in old or ():
            self._remove(item)
        for item in items:
            self._add(item)
        if items:
            self._parts[pid] = items
            if self._sink is not None:
                self._pending.extend(i for i in items if isinstance(i, Flow))
                if len(self._pending) >= SINK_BATCH:
                    self._flush()
        else:
            self._parts.pop(pid, None)

    def _add(self, item) -> None:
        if isinstance(item, Flow):
            key = item.key
            current = self._index.get(key)
            if current is None:
                self._index[key] = item
                self._refs[key] = 1
                self._touched[key] = None
                self._per_feature[item.feature] += 1
                self._zone_refs.update(_zones(item))
            elif current == item:
                self._refs[key] += 1
            else:
                self._conflict = True
            return
        if isinstance(item, MeterEntry):
            table, key = self._meters, ("meter", item.meter_id)
            entry_id = item.meter_id
        elif isinstance(item, GroupEntry):
            table, key = self._groups, ("group", item.group_id)
            entry_id = item.group_id
        else:
            raise TypeError(f"a feature returned {item!r}: flows, MeterEntry or GroupEntry only")
        current = table.get(entry_id)
        if current is None:
            table[entry_id] = item
            self._entry_refs[key] = 1
        elif current == item:
            self._entry_refs[key] += 1
        else:
            self._conflict = True

    def _remove(self, item) -> None:
        if isinstance(item, Flow):
            key = item.key
            if self._index.get(key) != item:
                return        # a conflicting item never got in (the compile falls back)
            self._refs[key] -= 1
            if not self._refs[key]:
                del self._refs[key], self._index[key]
                self._touched[key] = None
                self._per_feature[item.feature] -= 1
                self._zone_refs.subtract(_zones(item))
            return
        if isinstance(item, MeterEntry):
            table, key, entry_id = self._meters, ("meter", item.meter_id), item.meter_id
        else:
            table, key, entry_id = self._groups, ("group", item.group_id), item.group_id
        if table.get(entry_id) != item:
            return
        self._entry_refs[key] -= 1
        if not self._entry_refs[key]:
            del self._entry_refs[key], table[entry_id]
