"""One switch, kept equal to what state says it must hold: the per-datapath sync unit.

A :class:`DatapathSync` owns everything sdn knows about one connected datapath (its ports,
the flows, meters and groups it installed, its generation) and one worker thread that does all
of that switch's OpenFlow request/reply work, so a slow or dead switch never delays another.

Thread model (written down because three kinds of thread meet here):

- os-ken's event thread calls ``set_ports``/``port_changed``/``request`` and the reply hooks
  ``on_reply``/``on_barrier``/``on_error`` (replies only wake a waiter; no work is done there);
- the worker thread (one per switch, ``sync-<dpid>``) runs syncs and audits, one at a time; it
  alone touches ``installed``/``meters``/``groups``/``generation``;
- ``close()`` (switch gone: EventOFPStateChange to DEAD, echo timeout, a new connection of the
  same datapath) may come from any thread: it fails the waiter in flight at once and stops
  the worker.

What a sync does is decided by pure code: ``compile(ports) -> Desired`` (``sdn.flows``) and the
``sdn.flows.reconcile`` plans; this module only sends messages and waits for replies:
meters and groups first (OVS cannot bundle meter mods; groups a flow applies must exist),
then all flow changes in one atomic ONF bundle (extension 230), then the deletions of meters
and groups no flow uses any more, each step confirmed by a barrier (OpenFlow 1.3 §6.2).

Self-healing: every ``audit_interval`` seconds (busy or not) the worker counts the switch's sdn flows
(two aggregate-stats requests: this generation's, and any sdn cookie) and, every
``deep_audit_every`` audits, lists its meters and groups. Any difference from what it
installed (``ovs-ofctl del-flows``, a hand-added 0x5d flow, a deleted meter) triggers a full
sync, which is hitless: it re-adds everything under a new generation and deletes the rest.
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from os_ken.ofproto import ofproto_v1_3 as ofp

from sdn.apps import ofmsgs, ofwire
from sdn.flows import reconcile
from sdn.metrics import ControllerMetrics, dpid_label
from sdn.flows.model import (COOKIE_APP, COOKIE_APP_MASK, GENERATION_MASK, Desired, Flow,
                             Group, GroupEntry, Meter, is_sdn_id)

LOG = logging.getLogger("sdn.datapath")

FULL, INCREMENTAL, AUDIT = "full", "incremental", "audit"
RETRY_MAX = 30.0   # seconds between retries of a switch whose syncs keep failing


class DatapathGone(Exception):
    """The switch disconnected (or was replaced) while a request waited for its reply."""


class DatapathRejected(Exception):
    """The switch answered a request with an OpenFlow error (type/code named)."""


@dataclass
class _Waiter:
    """Replies to the requests of one step (from ``first_xid`` on) and their barrier."""

    first_xid: int
    done: threading.Event = field(default_factory=threading.Event)
    body: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    reply_xid: int | None = None
    gone: bool = False


def error_text(type_: int, code: int) -> str:
    """``OFPET_BAD_ACTION/OFPBAC_BAD_OUT_GROUP`` style names of an OpenFlow error (§7.4.4)."""
    types = {v: k for k, v in vars(ofp).items() if k.startswith("OFPET_") and isinstance(v, int)}
    name = types.get(type_, f"type {type_}")
    prefix = {"OFPET_BAD_REQUEST": "OFPBRC_", "OFPET_BAD_ACTION": "OFPBAC_",
              "OFPET_BAD_INSTRUCTION": "OFPBIC_", "OFPET_BAD_MATCH": "OFPBMC_",
              "OFPET_FLOW_MOD_FAILED": "OFPFMFC_", "OFPET_GROUP_MOD_FAILED": "OFPGMFC_",
              "OFPET_METER_MOD_FAILED": "OFPMMFC_", "OFPET_TABLE_MOD_FAILED": "OFPTMFC_",
              "OFPET_ROLE_REQUEST_FAILED": "OFPRRFC_"}.get(name)
    codes = {v: k for k, v in vars(ofp).items()
             if prefix and k.startswith(prefix) and isinstance(v, int)}
    if name == "OFPET_EXPERIMENTER":     # ONF extension errors: their exp_type (ext-230 bundles)
        onf = {v: k for k, v in vars(ofp).items() if k.startswith("ONFERR_ET_") and isinstance(v, int)}
        return f"{name}/{onf.get(code, f'exp_type {code}')}"
    return f"{name}/{codes.get(code, f'code {code}')}"


class Liveness:
    """Echo bookkeeping of one switch connection: is the switch still answering?

    The controller sends an echo request every interval; the switch is dead when more than
    ``max_misses`` of them stay unanswered (os-ken's rule). Except while a bundle commit of
    this switch is outstanding (bundle opened, its barrier not yet answered): ovs-vswitchd
    parses the bundle-adds and commits on its main thread, so a ~130k-flow bundle delays
    every echo reply by seconds. Echo requests sent in that window are not counted; the
    window itself is bounded by the sync unit's ``reply_timeout`` on the barrier, after which
    unanswered echoes count again. Thread-safe: the echo loop, the receive thread and the
    sync worker call it.
    """

    def __init__(self, max_misses: int):
        self.max_misses = max_misses
        self._lock = threading.Lock()
        self._counted: set[int] = set()     # xids of unanswered echoes that count
        self._excused: set[int] = set()     # xids sent while a commit was outstanding
        self._commits = 0

    def echo_sent(self, xid: int) -> None:
        with self._lock:
            (self._excused if self._commits else self._counted).add(xid)

    def echo_answered(self, xid: int) -> None:
        with self._lock:
            self._counted.discard(xid)
            self._excused.discard(xid)

    def commit_started(self) -> None:
        with self._lock:
            self._commits += 1

    def commit_ended(self) -> None:
        """The commit's barrier was answered, or the sync gave up waiting for it."""
        with self._lock:
            self._commits = max(0, self._commits - 1)
            if not self._commits:       # the switch was busy for us: forgive those echoes
                self._excused.clear()

    @property
    def misses(self) -> int:
        """Unanswered echo requests that count against the switch."""
        return len(self._counted)

    def alive(self) -> bool:
        return len(self._counted) <= self.max_misses


#: what a barrier's wait allows per flow mod still queued at the switch: ovs-vswitchd parses
#: ~100k bundled flow mods/s here (``ovs-ofctl --bundle``: 380k in 3.9 s), 5x slack for load
SWITCH_SECONDS_PER_FLOW = 50e-6


class DatapathSync:
    """The sync unit of one datapath ``dp`` (an os-ken Datapath, or anything with ``id``,
    ``xid``, ``ofproto_parser``, ``set_xid(msg)``, ``send_msg(msg)`` and ``send(bytes)``).

    ``compile(ports)`` returns the :class:`~sdn.flows.model.Desired` of this switch for its
    ports (name -> ofport) under the current state; ``next_generation()`` a fresh 48-bit
    generation for a full sync; ``name_tables(dpid)`` (optional) names the tables in OVSDB.
    ``metrics`` (a ``sdn.metrics.ControllerMetrics``) counts syncs, audits and what they sent.
    Times are seconds.

    ``streaming``: ``compile`` also takes ``flow_sink`` (``compile_datapath``'s): an
    incremental sync then sends each feature's new flows into the open bundle while the
    next feature compiles, so the switch parses while sdn compiles (``_BundleStream``).

    Several controllers (``sdn.apps.mastership``): ``role()`` returns ``(master,
    generation_id)``, the role this controller must hold on the switch now; the worker sends
    a role request (OpenFlow 1.3 §7.3.9) whenever that changes, and as SLAVE writes nothing
    (a takeover starts with a full sync). ``foreign_generation(gen)`` is True for flow
    generations a full sync must not delete (a newer master's). Both None: no roles (a
    single controller, EQUAL role).
    """

    def __init__(self, dp, compile: Callable[[dict[str, int]], Desired],
                 next_generation: Callable[[], int], *,
                 name_tables: Callable[[int], None] | None = None,
                 reply_timeout: float = 15.0, audit_interval: float = 1.0,
                 deep_audit_every: int = 10, start: bool = True,
                 metrics: ControllerMetrics | None = None,
                 role: Callable[[], tuple[bool, int]] | None = None,
                 foreign_generation: Callable[[int], bool] | None = None,
                 streaming: bool = False):
        self.dp = dp
        self._streaming = streaming
        self.dpid: int = dp.id
        self.metrics = metrics if metrics is not None else ControllerMetrics()
        self._label = dpid_label(self.dpid)
        self._compile = compile
        self._next_generation = next_generation
        self._name_tables = name_tables
        self.reply_timeout = reply_timeout
        self.audit_interval = audit_interval
        self.deep_audit_every = max(1, deep_audit_every)
        self.ports: dict[str, int] = {}
        self.ports_known = False
        self.generation = 0
        self.installed: dict[tuple, Flow] = {}
        self._reflush: set[int] = set()    # conntrack zones to flush once more (sync())
        self.meters: dict[int, tuple | None] = {}   # id -> MeterEntry.spec (None: unknown)
        self.groups: dict[int, GroupEntry | None] = {}
        self.synced = False
        self.closed = False
        self.failures = 0
        self.last_sync: dict = {}
        self._work: queue.Queue = queue.Queue()
        self._waiter: _Waiter | None = None
        self._lock = threading.Lock()
        self._bundle_ids = itertools.count(1)
        self._audits = 0
        self._last_audit = time.monotonic()
        self._named = False
        self._role = role
        self._foreign_generation = foreign_generation
        self.role_held: tuple[bool, int] | None = None   # (master, generation_id) the switch knows
        self._thread = threading.Thread(target=self._run, name=f"sync-{self.dpid:016x}",
                                        daemon=True)
        if start:
            self._thread.start()

    # ---- called from os-ken's event thread ------------------------------------------------

    def set_ports(self, ports: dict[str, int]) -> None:
        """The switch's full port list is known (port-desc reply): a full sync follows."""
        self.ports = dict(ports)
        self.ports_known = True
        self.request(FULL)

    def port_changed(self, name: str, ofport: int | None) -> None:
        """A port was added/modified (``ofport``) or deleted (None)."""
        if ofport is None:
            self.ports.pop(name, None)
        else:
            self.ports[name] = ofport
        self.request(INCREMENTAL)

    def request(self, kind: str = INCREMENTAL) -> None:
        """Ask for a sync (FULL or INCREMENTAL); bursts coalesce on the worker."""
        if not self.closed:
            self._work.put(kind)

    def on_reply(self, xid: int, body: list, more: bool) -> None:
        """A multipart reply (flow/meter/group stats, aggregate) part."""
        waiter = self._waiter
        if waiter is not None and waiter.reply_xid == xid:
            waiter.body += body if isinstance(body, list) else [body]
            if not more:
                waiter.done.set()

    def on_barrier(self, xid: int) -> None:
        waiter = self._waiter
        if waiter is not None and waiter.reply_xid == xid:
            waiter.done.set()

    def on_error(self, xid: int, type_: int, code: int) -> None:
        """An OpenFlow error from this switch: it belongs to the step in flight if its xid was
        sent by that step (xids grow per switch; packet-outs use xid 0, see
        ``ofmsgs.packet_out_bytes``)."""
        waiter = self._waiter
        text = error_text(type_, code)
        if waiter is not None and xid and ((xid - waiter.first_xid) & 0xFFFFFFFF) < 1 << 31:
            waiter.errors.append(f"xid {xid}: {text}")
            if waiter.reply_xid == xid:     # the request itself failed: no reply will come
                waiter.done.set()
        else:
            LOG.warning("datapath %016x: error for xid %s outside a sync: %s", self.dpid, xid,
                        text)

    def close(self) -> None:
        """The switch is gone: fail the request in flight now, stop the worker."""
        self.closed = True
        waiter = self._waiter
        if waiter is not None:
            waiter.gone = True
            waiter.done.set()
        self._work.put(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # ---- the worker -------------------------------------------------------------------------

    def _run(self) -> None:
        while not self.closed:
            # audits are due every audit_interval even while changes keep coming: an
            # incremental sync diffs against what was installed and would not see drift
            due = self._last_audit + self.audit_interval - time.monotonic()
            try:
                kind = self._work.get(timeout=max(0.0, due) if self.synced else None)
            except queue.Empty:
                kind = AUDIT
            if kind is None:
                break
            pending = {kind}
            while True:                       # coalesce bursts of changes
                try:
                    pending.add(self._work.get_nowait())
                except queue.Empty:
                    break
            if None in pending:
                break
            if self.synced and time.monotonic() - self._last_audit >= self.audit_interval:
                pending.add(AUDIT)
            try:
                if not self._hold_role():
                    continue          # SLAVE: nothing to write
                if FULL in pending:
                    self.step(FULL)
                else:
                    if INCREMENTAL in pending:
                        self.step(INCREMENTAL)
                    if AUDIT in pending:
                        self.step(AUDIT)
            except DatapathGone:
                break
            except Exception as err:  # this switch only; retried with a full sync, backing off
                self.failures += 1
                self.metrics.sync_failures.labels(self._label).inc()
                retry = min(RETRY_MAX, self.audit_interval * 2 ** min(self.failures - 1, 8))
                LOG.error("datapath %016x: sync failed (%d in a row, retry in %.0fs): %s",
                          self.dpid, self.failures, retry, err)
                self.synced = False
                if not self.closed:
                    time.sleep(retry)
                    self._work.put(FULL)
            else:
                self.failures = 0
        LOG.info("datapath %016x: sync unit stopped", self.dpid)

    def _hold_role(self) -> bool:
        """Make the switch know this controller's role (if roles are in use); True if this
        controller may write to it (MASTER, or no roles)."""
        if self._role is None:
            return True
        master, generation_id = want = self._role()
        if want != self.role_held:
            role = ofp.OFPCR_ROLE_MASTER if master else ofp.OFPCR_ROLE_SLAVE
            self._ask_role(role, generation_id)
            self.role_held = want
            LOG.info("datapath %016x: role %s, generation_id %d", self.dpid,
                     "MASTER" if master else "SLAVE", generation_id)
        if not master:
            self.synced = False      # a takeover starts with a full sync
        return master

    def _ask_role(self, role: int, generation_id: int) -> None:
        """OFPT_ROLE_REQUEST and its reply; a switch that saw a larger generation_id refuses
        (OFPET_ROLE_REQUEST_FAILED/OFPRRFC_STALE: this controller is fenced)."""
        msg = self.dp.ofproto_parser.OFPRoleRequest(self.dp, role, generation_id)
        self._wait(self._begin(), msg, f"role request (generation_id {generation_id})")

    def on_role_reply(self, xid: int) -> None:
        self.on_barrier(xid)

    def step(self, kind: str) -> None:
        """Run one sync (FULL/INCREMENTAL) or audit (AUDIT) now, on the calling thread."""
        if not self.ports_known:
            return
        if kind == AUDIT:
            self._last_audit = time.monotonic()
            if self._reflush:
                zones, self._reflush = sorted(self._reflush), set()
                self._send_step([ofmsgs.ct_flush_zone(self.dp, z) for z in zones],
                                "conntrack zone flushes")
            if self.synced:
                clean = self.audit()
                self.metrics.audit_seconds.labels(self._label).observe(
                    time.monotonic() - self._last_audit)
                if clean:
                    return
                self.metrics.drift_repairs.labels(self._label).inc()
            kind = FULL
        if kind == INCREMENTAL and not self.synced:
            kind = FULL
        self.sync(full=(kind == FULL))
        if kind == FULL:
            self._last_audit = time.monotonic()   # a full sync leaves the switch as audited

    def sync(self, full: bool) -> None:
        """Make the switch hold the compiled desired state (see the module docstring)."""
        started = time.monotonic()
        stream = _BundleStream(self) if self._streaming and not full else None
        try:
            desired = (self._compile(dict(self.ports)) if stream is None
                       else self._compile(dict(self.ports), flow_sink=stream.feed))
        except BaseException:
            if stream is not None:
                stream.abort()
            raise
        flows = reconcile.index(desired.flows)
        compiled = time.monotonic()
        if full:
            if self._name_tables and not self._named:   # once per connection, best effort
                self._named = True
                self._name_tables(self.dpid)
            self.generation = self._next_generation() & GENERATION_MASK
            cookies = [s.cookie for s in self._ask(ofmsgs.sdn_flow_stats_request(self.dp))]
            if self._foreign_generation is not None:   # a newer master's flows stay
                cookies = [c for c in cookies
                           if not self._foreign_generation(c & GENERATION_MASK)]
            plan = reconcile.plan_full(flows, cookies, self.generation)
            self.meters = self._switch_meters()
            self.groups = dict.fromkeys(self._switch_groups())
        else:
            plan = reconcile.plan_incremental(self.installed, flows)
        meter_plan = reconcile.plan_meters(self.meters, desired.meters)
        group_plan = reconcile.plan_groups(self.groups, desired.groups)
        before = [ofmsgs.meter_mod(self.dp, i, e, ofp.OFPMC_ADD)
                  for i, e in sorted(meter_plan.add.items())]
        before += [ofmsgs.meter_mod(self.dp, i, e, ofp.OFPMC_MODIFY)
                   for i, e in sorted(meter_plan.modify.items())]
        before += [ofmsgs.group_mod(self.dp, g, g.group_id, ofp.OFPGC_ADD) for g in group_plan.add]
        before += [ofmsgs.group_mod(self.dp, g, g.group_id, ofp.OFPGC_MODIFY)
                   for g in group_plan.modify]
        to_send = plan
        if stream is not None and stream.bundle_id is not None:
            # the bundle is open with the adds streamed so far: meter and group mods go
            # outside it, confirmed (with those adds) by a barrier before the rest, the flows
            # applying them among it, joins the bundle
            stream.confirm(before)
            to_send = stream.rest(plan, flows)
        else:
            self._send_step(before, "meter/group mods")
        planned = time.monotonic()
        sent = committed = planned
        if to_send or (stream is not None and stream.bundle_id is not None):
            sent = (self._send_bundle(to_send) if stream is None or stream.bundle_id is None
                    else self._send_bundle(to_send, stream.bundle_id, stream.waiter,
                                           len(stream.streamed)))
            committed = time.monotonic()
        zones = reconcile.ct_zones(flows)
        gone_zones = reconcile.ct_zones(self.installed) - zones
        # flushed again at the next audit: a packet on a datapath flow cached before the
        # bundle (revalidated a moment later) may re-create an entry in the zone meanwhile
        self._reflush = (self._reflush | gone_zones) - zones
        self.installed = flows
        after = [ofmsgs.group_mod(self.dp, None, i, ofp.OFPGC_DELETE) for i in group_plan.delete]
        # a zone no flow uses any more (a VIF deleted or unfiltered): its connections go too
        after += [ofmsgs.ct_flush_zone(self.dp, zone) for zone in sorted(gone_zones)]
        after += [ofmsgs.meter_mod(self.dp, i, None, ofp.OFPMC_DELETE) for i in meter_plan.delete]
        self._send_step(after, "meter/group deletes")
        self.meters = {i: m.spec for i, m in desired.meters.items()}
        self.groups = dict(desired.groups)
        self.synced = True
        meter_mods = len(meter_plan.add) + len(meter_plan.modify) + len(meter_plan.delete)
        group_mods = len(group_plan.add) + len(group_plan.modify) + len(group_plan.delete)
        self.last_sync = dict(kind="full" if full else "incremental", added=len(plan.adds),
                              deleted=len(plan.deletes), stale=len(plan.stale_cookies),
                              meter_mods=meter_mods, group_mods=group_mods, flows=len(flows),
                              seconds=time.monotonic() - started,
                              # where the time went: compile, plan (+ meter/group step),
                              # encode + send the bundle, the switch's commit up to the barrier
                              phases=dict(compile=compiled - started, plan=planned - compiled,
                                          send=sent - planned, commit=committed - sent))
        self._count_sync(self.last_sync, flows)
        LOG.info("datapath %016x %s sync: %d added, %d deleted, %d stale cookies, "
                 "%d meter and %d group mods, gen %d, %d flows, %.3fs (%s)", self.dpid,
                 self.last_sync["kind"], len(plan.adds), len(plan.deletes),
                 len(plan.stale_cookies), meter_mods, group_mods, self.generation, len(flows),
                 self.last_sync["seconds"],
                 ", ".join(f"{k} {v:.3f}s" for k, v in self.last_sync["phases"].items()))

    def _count_sync(self, done: dict, flows: dict) -> None:
        m, label = self.metrics, self._label
        m.sync_seconds.labels(label, done["kind"]).observe(done["seconds"])
        for kind, key in (("add", "added"), ("delete", "deleted"), ("delete_cookie", "stale")):
            if done[key]:
                m.flow_mods.labels(label, kind).inc(done[key])
        if done["group_mods"]:
            m.group_mods.labels(label).inc(done["group_mods"])
        if done["meter_mods"]:
            m.meter_mods.labels(label).inc(done["meter_mods"])
        per_feature = getattr(flows, "per_feature", None)    # an incremental compile's count
        if per_feature is None:
            per_feature = collections.Counter(f.feature for f in flows.values())
        m.set_flows(self.dpid, per_feature)

    def audit(self) -> bool:
        """True if the switch still holds what was installed; logs the drift otherwise."""
        self._audits += 1
        app = COOKIE_APP << 56
        ours = self._count(app | self.generation, COOKIE_APP_MASK | GENERATION_MASK)
        every = self._count(app, COOKIE_APP_MASK)
        drift = []
        if ours != len(self.installed):
            drift.append(f"{ours} of {len(self.installed)} flows present")
        if every != ours:
            drift.append(f"{every - ours} sdn flows of another generation")
        if self._audits % self.deep_audit_every == 0:
            meters, groups = set(self._switch_meters()), set(self._switch_groups())
            if meters != set(self.meters):
                drift.append(f"meters differ ({len(meters)} present, {len(self.meters)} installed)")
            if groups != set(self.groups):
                drift.append(f"groups differ ({len(groups)} present, {len(self.groups)} installed)")
        if drift:
            LOG.warning("datapath %016x drifted (%s): full resync", self.dpid, "; ".join(drift))
        return not drift

    # ---- requests and replies -----------------------------------------------------------------

    def _count(self, cookie: int, mask: int) -> int:
        body = self._ask(ofmsgs.aggregate_request(self.dp, cookie, mask))
        return sum(getattr(entry, "flow_count", 0) for entry in body)

    def _switch_meters(self) -> dict[int, tuple | None]:
        return {c.meter_id: ofmsgs.meter_spec(c)
                for c in self._ask(ofmsgs.meter_config_request(self.dp)) if is_sdn_id(c.meter_id)}

    def _switch_groups(self) -> list[int]:
        return [g.group_id for g in self._ask(ofmsgs.group_desc_request(self.dp))
                if is_sdn_id(g.group_id)]

    def _begin(self) -> _Waiter:
        waiter = _Waiter(first_xid=(self.dp.xid + 1) & 0xFFFFFFFF)
        self._waiter = waiter       # first registered, then checked: close() cannot miss it
        if self.closed:
            self._waiter = None
            raise DatapathGone(f"datapath {self.dpid:016x} is gone")
        return waiter

    def _wait(self, waiter: _Waiter, msg, what: str, backlog: int = 0) -> _Waiter:
        """Send ``msg`` (a reply-bearing request) and wait for its reply: ``reply_timeout``
        plus ``SWITCH_SECONDS_PER_FLOW`` for each of the ``backlog`` flow mods the switch may
        still have to parse before it answers (a streamed 380k-flow bundle took longer than
        15 s on a busy switch, and the sync retried it forever)."""
        timeout = self.reply_timeout + backlog * SWITCH_SECONDS_PER_FLOW
        try:
            self.dp.set_xid(msg)
            waiter.reply_xid = msg.xid
            self.dp.send_msg(msg)
            if not waiter.done.wait(timeout):
                raise TimeoutError(f"datapath {self.dpid:016x} did not answer {what} "
                                   f"within {timeout:.0f}s")
            if waiter.gone or self.closed:
                raise DatapathGone(f"datapath {self.dpid:016x} disconnected during {what}")
            if waiter.errors:
                raise DatapathRejected(f"datapath {self.dpid:016x} rejected {what}: "
                                       f"{', '.join(waiter.errors[:3])}")
            return waiter
        finally:
            self._waiter = None

    def _ask(self, msg) -> list:
        """A multipart request and all parts of its reply."""
        return self._wait(self._begin(), msg, type(msg).__name__).body

    def _send_step(self, msgs: list, what: str) -> None:
        """Send ``msgs``, then a barrier; errors of any of them fail the step."""
        if not msgs:
            return
        waiter = self._begin()
        for msg in msgs:
            self.dp.send_msg(msg)
        self._wait(waiter, self.dp.ofproto_parser.OFPBarrierRequest(self.dp), what)

    def _liveness(self) -> Liveness | None:
        return getattr(self.dp, "liveness", None)

    def _send_bundle(self, plan: reconcile.Plan, opened: int | None = None,
                     waiter: _Waiter | None = None, streamed: int = 0) -> float:
        """Apply ``plan`` atomically in one ONF bundle, confirmed by a barrier; returns when
        (monotonic) the last byte of the bundle was handed to the connection. ``opened``: the
        id of a bundle a ``_BundleStream`` opened (and marked as a commit in flight), with
        its ``waiter`` if no barrier confirmed what it sent yet, and the number of flow mods it
        ``streamed`` into it (the switch may still be parsing them)."""
        bundle_id = opened if opened is not None else next(self._bundle_ids) & 0xFFFFFFFF
        waiter = waiter if waiter is not None else self._begin()
        # struct-packed bundle-adds (byte-equal to os-ken's, see sdn/apps/ofwire.py), each
        # with its own xid from dp's counter; encoded chunk by chunk, so the switch parses
        # one while the next is packed
        chunks = ofmsgs.plan_bundle_adds(self.dp, bundle_id, plan.deletes, plan.adds,
                                         self.generation, plan.stale_cookies)
        # echoes the switch leaves unanswered while it parses and commits are not misses
        liveness = self._liveness()
        if liveness is not None and opened is None:
            liveness.commit_started()
        try:
            if opened is None:
                self.dp.send_msg(ofmsgs.bundle_ctrl(self.dp, bundle_id, ofp.ONF_BCT_OPEN_REQUEST))
            try:
                for chunk in chunks:
                    self.dp.send(chunk)
            except Exception:   # a flow that cannot be encoded: nothing of the plan may apply
                self.dp.send_msg(ofmsgs.bundle_ctrl(self.dp, bundle_id,
                                                    ofp.ONF_BCT_DISCARD_REQUEST))
                self._waiter = None
                raise
            self.dp.send_msg(ofmsgs.bundle_ctrl(self.dp, bundle_id, ofp.ONF_BCT_COMMIT_REQUEST))
            sent = time.monotonic()
            self._wait(waiter, self.dp.ofproto_parser.OFPBarrierRequest(self.dp),
                       f"bundle {bundle_id} ({len(plan.adds)} adds, {len(plan.deletes)} deletes)",
                       backlog=len(plan.adds) + len(plan.deletes) + streamed)
            return sent
        finally:
            if liveness is not None:
                liveness.commit_ended()


def _applies_entries(flow: Flow) -> bool:
    """True if ``flow`` applies a group or meter (which must exist before it is added)."""
    return any(isinstance(a, (Group, Meter)) for a in flow.actions)


class _BundleStream:
    """The adds of one incremental sync, sent into an open bundle while the compile runs.

    ``feed`` gets each feature's flows (``compile_datapath(flow_sink=...)``) and sends those
    that differ from what is installed, except flows applying a group or meter (the group and
    meter mods come when the compile is done): the bundle is opened at the first of them.
    Nothing applies before the commit (ONF bundles are atomic), so a failed compile or step
    only discards it (``abort``). Runs on the sync worker only."""

    def __init__(self, sync: DatapathSync):
        self.sync = sync
        self.dp = sync.dp
        self.installed = sync.installed
        self.generation = sync.generation
        self.streamed: dict[tuple, Flow] = {}
        self.bundle_id: int | None = None
        self.waiter: _Waiter | None = None

    def feed(self, flows: list[Flow]) -> None:
        installed = self.installed
        adds = [f for f in flows if installed.get(f.key) != f and not _applies_entries(f)]
        if not adds:
            return
        if self.bundle_id is None:
            self.bundle_id = next(self.sync._bundle_ids) & 0xFFFFFFFF
            self.waiter = self.sync._begin()
            liveness = self.sync._liveness()
            if liveness is not None:
                liveness.commit_started()     # ended by _send_bundle or abort
            self.dp.send_msg(ofmsgs.bundle_ctrl(self.dp, self.bundle_id,
                                                ofp.ONF_BCT_OPEN_REQUEST))
        streamed = self.streamed
        for f in adds:
            streamed[f.key] = f
        for chunk in ofwire.bundled_flow_adds(self.dp, self.bundle_id, adds, self.generation):
            self.dp.send(chunk)

    def confirm(self, before: list) -> None:
        """Send the meter/group mods ``before`` (outside the bundle) and a barrier; raises,
        discarding the bundle, if the switch refused any of them or a streamed add. With no
        mods there is nothing to wait for: the commit's barrier answers for the streamed adds
        too (``waiter`` stays in flight)."""
        if not before:
            return
        try:
            for msg in before:
                self.dp.send_msg(msg)
            self.sync._wait(self.waiter, self.dp.ofproto_parser.OFPBarrierRequest(self.dp),
                            f"meter/group mods and {len(self.streamed)} streamed adds of bundle "
                            f"{self.bundle_id}", backlog=len(self.streamed) + len(before))
            self.waiter = None
        except BaseException:
            self.abort()
            raise

    def rest(self, plan: reconcile.Plan, flows: dict[tuple, Flow]) -> reconcile.Plan:
        """What ``plan`` (the full diff) still needs: adds not streamed, or streamed in
        another version than the final one (a later duplicate key wins), and the deletes
        (with streamed adds the final result dropped)."""
        streamed = self.streamed
        adds = [f for f in plan.adds if f.key not in streamed]
        adds += [flows[k] for k, f in streamed.items() if k in flows and flows[k] != f]
        # a streamed add the final result does not hold (an incremental compile that fell
        # back to the full one) is deleted again inside the same bundle
        deletes = plan.deletes + [f for k, f in streamed.items()
                                  if k not in flows and k not in self.installed]
        return reconcile.Plan(adds=adds, deletes=deletes)

    def abort(self) -> None:
        if self.bundle_id is None:
            return
        try:
            self.dp.send_msg(ofmsgs.bundle_ctrl(self.dp, self.bundle_id,
                                                ofp.ONF_BCT_DISCARD_REQUEST))
        finally:
            self.sync._waiter = None
            liveness = self.sync._liveness()
            if liveness is not None:
                liveness.commit_ended()
            self.bundle_id = None
