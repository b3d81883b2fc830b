"""DHCP on the OpenFlow path: answer the punts of ``sdn.flows.dhcp`` and record leases.

``DhcpPunt.on_packet_in`` runs on the switch's receive thread (``sdn.apps.fastdp``): it finds
the binding (the VIF of the ingress port, or for a relay port the network by giaddr and the
VIF by chaddr), asks the pure responder (``sdn.dhcp.server``) and returns the packet-out of an
OFFER/NAK at once. An ACK waits for its lease to be committed (write-ahead: a lease a client
was told about survives a controller crash) on the :class:`LeaseCommitter`'s thread.

DHCP outlives its dependencies: when the database cannot take a batch (locked, unreachable),
renewals of leases already recorded for the same MAC are answered from memory and written
once the database is back; a new binding still needs its commit first (no ACK for an
unrecorded lease).

What happened is counted (``sdn.metrics.ControllerMetrics``: every decision by message type,
outcome and reason; lease commits and their latency) and the outcomes worth knowing are
logged at INFO (:class:`DhcpLog`): an ACK once its lease is recorded, with address and MAC; a
NAK, a RELEASE/DECLINE, an ignored or malformed request, with the reason; at most one line per
client and outcome every ``interval`` seconds, the next one saying how many were suppressed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from sdn.apps import ofmsgs
from sdn.dhcp.rawsocket import LINGER_BELOW
from sdn.dhcp.relay import RelayBindings, request_fields, with_tag
from sdn.dhcp.server import DhcpBinding, DhcpResponder, LeaseEvent
from sdn.flows.context import Binding
from sdn.log import RateLimiter
from sdn.metrics import ControllerMetrics, dpid_label
from sdn.view import StateView

LOG = logging.getLogger("sdn.dhcp")

LEASE_BATCH_MAX = 512
#: seconds the committer waits after a lease event for more to join its transaction (group
#: commit; see ``sdn.dhcp.rawsocket.COMMIT_LINGER_S``)
COMMIT_LINGER_S = 0.01

#: decision outcomes logged at INFO by DhcpPunt (an ACK is logged by the committer, once sent)
LOGGED_OUTCOMES = frozenset({"nak", "release", "decline", "ignored", "malformed", "error"})


class DhcpLog:
    """INFO lines for DHCP outcomes, at most one per (client, outcome) every ``interval``
    seconds (``sdn.log.RateLimiter``); the next line that passes says how many were suppressed.
    ``client`` is the VIF's MAC, or the port for a request no VIF is bound to."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.limiter = RateLimiter(interval)
        self._clock = clock

    def note(self, client, outcome: str, text: str) -> bool:
        """Log ``DHCP <text>`` unless rate-limited; True when logged."""
        suppressed = self.limiter.allow((client, outcome), self._clock())
        if suppressed is None:
            return False
        if outcome == "error":
            LOG.warning("DHCP %s%s", text, _suppressed(suppressed))
        else:
            LOG.info("DHCP %s%s", text, _suppressed(suppressed))
        return True


def _suppressed(count: int) -> str:
    return f" ({count} more suppressed)" if count else ""


class LeaseCommitter:
    """Group commit of lease events, then the ACKs of the committed ones (one thread).

    ``record(events) -> [error or None]`` writes one batch in one transaction (raises when the
    database is unavailable); ``recorded`` maps address -> MAC of the leases known to be in the
    database (seeded by the caller, kept up to date here).
    """

    def __init__(self, record: Callable[[list[LeaseEvent]], list],
                 recorded: dict[str, str] | None = None, start: bool = True,
                 metrics: ControllerMetrics | None = None, log: DhcpLog | None = None,
                 linger: float = COMMIT_LINGER_S):
        self._record = record
        self.linger = linger
        self.metrics = metrics if metrics is not None else ControllerMetrics()
        self.log = log if log is not None else DhcpLog()
        self.recorded: dict[str, str] = dict(recorded or {})
        #: renewals ACKed from memory while the database was unavailable, not yet written
        self.pending: dict[str, LeaseEvent] = {}
        self._queue: queue.Queue = queue.Queue()
        self._outage_since: float | None = None
        self._lock = threading.Lock()   # recorded/pending: the committer and maintenance threads
        self.stats = {"committed": 0, "from_memory": 0, "withheld": 0}
        if start:
            threading.Thread(target=self._run, name="lease-commit", daemon=True).start()

    def submit(self, event: LeaseEvent, send: Callable[[bytes], object] | None,
               packet: bytes | None) -> None:
        """Queue ``event``; ``send(packet)`` once it is recorded (``packet`` None: nothing)."""
        self._queue.put((event, send, packet, time.monotonic()))

    def seed(self, recorded: dict[str, str]) -> None:
        """Leases the database holds now (address -> MAC), e.g. after a state reload."""
        with self._lock:
            self.recorded = dict(recorded)

    def forget(self, addresses) -> None:
        """Leases that expired in the database: no longer renewable from memory. (Expiry skips
        the addresses in ``pending_addresses()``: their renewals are still to be written.)"""
        with self._lock:
            for address in addresses:
                if address not in self.pending:
                    self.recorded.pop(address, None)

    def pending_addresses(self) -> frozenset[str]:
        """Addresses renewed from memory and not yet written: not expired meanwhile."""
        with self._lock:
            return frozenset(self.pending)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            if self.linger > 0 and self._queue.qsize() < LINGER_BELOW:
                time.sleep(self.linger)
            while len(batch) < LEASE_BATCH_MAX:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self.commit(batch)
            except Exception:   # never let the thread die: no ACK would ever leave again
                LOG.exception("lease batch of %d events dropped; clients will retry", len(batch))

    def commit(self, batch: list[tuple]) -> None:
        """Record ``batch`` [(event, send, packet[, submitted])] and send what may be sent: an
        ACK only for a lease that was recorded (write-ahead). ``submitted`` (time.monotonic()
        at ``submit``) gives the commit latency."""
        queued = [item[3] if len(item) > 3 else None for item in batch if item is not _RETRY]
        batch = [item[:3] for item in batch if item is not _RETRY]
        with self._lock:
            in_batch = {event.address for event, _, _ in batch}
            pending = [e for a, e in self.pending.items() if a not in in_batch]
        if not batch and not pending:
            return
        events = [item[0] for item in batch] + pending
        try:
            results = self._record(events)
        except Exception as err:   # database unavailable: nothing of this batch is recorded
            self.metrics.database_errors.labels("lease_commit").inc()
            self._answer_from_memory(batch, err)
            return
        self._count_commits(batch, queued, results)
        out: dict[Callable, list[bytes]] = {}
        with self._lock:
            if self._outage_since is not None:
                LOG.warning("database back after %.1fs: %d renewals answered from memory "
                            "written", time.monotonic() - self._outage_since, len(pending))
                self._outage_since = None
            for event in pending:
                self.pending.pop(event.address, None)
            for (event, send, packet), error in zip(batch, results):
                if error is not None:
                    LOG.error("could not record DHCP %s of %s: %s; nothing sent", event.kind,
                              event.address, error)
                    continue
                self.stats["committed"] += 1
                if event.kind == "lease":
                    self.recorded[event.address] = event.mac.lower()
                else:
                    self.recorded.pop(event.address, None)
                if packet and send is not None:
                    out.setdefault(send, []).append(packet)
                    if event.kind == "lease":
                        self.log.note(event.mac, "ack", f"ACK {event.address} to {event.mac} "
                                                        "(lease recorded)")
        for send, packets in out.items():   # one hand-off to the send thread per switch
            send(b"".join(packets))

    def _count_commits(self, batch: list[tuple], queued: list, results: list) -> None:
        now, m = time.monotonic(), self.metrics
        committed = refused = 0
        for submitted, error in zip(queued, results):
            if error is not None:
                refused += 1
                continue
            committed += 1
            if submitted is not None:
                m.lease_commit_seconds.observe(now - submitted)
        committed += sum(1 for error in results[len(batch):] if error is None)   # pending
        if committed:
            m.lease_commits.labels("committed").inc(committed)
        if refused:
            m.lease_commits.labels("refused").inc(refused)

    def _answer_from_memory(self, batch: list[tuple], err: Exception) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            LOG.warning("database unavailable (%s): renewals of recorded leases are answered "
                        "from memory, new leases wait", err)
        out: dict[Callable, list[bytes]] = {}
        with self._lock:
            for event, send, packet in batch:
                renewal = (event.kind == "lease"
                           and self.recorded.get(event.address) == event.mac.lower())
                if renewal:
                    self.pending[event.address] = event
                    self.stats["from_memory"] += 1
                    self.metrics.lease_commits.labels("from_memory").inc()
                    if packet and send is not None:
                        out.setdefault(send, []).append(packet)
                else:
                    self.stats["withheld"] += 1
                    self.metrics.lease_commits.labels("withheld").inc()
            retry = bool(self.pending)
        for send, packets in out.items():
            send(b"".join(packets))
        if retry:
            # retried with the next batch; make sure there is one even if clients go quiet
            threading.Timer(1.0, self._queue.put, args=(_RETRY,)).start()


#: A no-op queue item that makes the committer retry its pending renewals.
_RETRY = (LeaseEvent("retry", "", ""), None, None)


class DhcpPunt:
    """Answers DHCP packet-ins from VIF ports and relay ports of every switch.

    ``view()`` is the current StateView; ``binding(dpid)`` the datapath's current port binding
    (None before its first sync); ``committer`` records lease events before their ACKs leave.
    """

    def __init__(self, view: Callable[[], StateView], binding: Callable[[int], Binding | None],
                 committer: LeaseCommitter, clock: Callable[[], float] = time.time,
                 metrics: ControllerMetrics | None = None, log: DhcpLog | None = None):
        self._view = view
        self._binding = binding
        self.committer = committer
        self._clock = clock
        self.metrics = metrics if metrics is not None else committer.metrics
        self.log = log if log is not None else committer.log
        self.responder = DhcpResponder()
        self._relay: tuple[StateView, RelayBindings] | None = None
        self._vif_bindings: dict[int, tuple] = {}   # dpid -> (view, binding, {port: DhcpBinding})

    def _vif_binding(self, dpid: int, view: StateView, binding: Binding,
                     in_port: int) -> DhcpBinding | None:
        """The DhcpBinding of the VIF on ``in_port``, one object per (switch, view, binding):
        the responder caches reply templates by binding identity (a fresh object per packet
        cost 3x the time of a repeated request)."""
        cached = self._vif_bindings.get(dpid)
        if cached is None or cached[0] is not view or cached[1] is not binding:
            table = {port: DhcpBinding.for_vif(vif, view.networks[vif.network_id])
                     for port, vif in binding.vifs.items() if vif.network_id in view.networks}
            cached = self._vif_bindings[dpid] = (view, binding, table)
        return cached[2].get(in_port)

    def on_packet_in(self, dp, in_port: int | None, frame: bytes) -> bytes:
        """The packet-out to send now (OFFER, NAK, ...) or b"" (nothing, or an ACK that waits
        for its lease commit)."""
        binding = self._binding(dp.id)
        if binding is None or in_port is None:
            return b""
        view = self._view()
        tag = b""
        if in_port in binding.relays:
            # a relay agent's request: giaddr picks the network, chaddr the VIF
            # (sdn.dhcp.relay); the reply carries the request's VLAN tag back
            fields = request_fields(frame)
            if fields is None:
                return b""
            tag, giaddr, chaddr = fields
            cached = self._relay
            if cached is None or cached[0] is not view:
                cached = self._relay = (view, RelayBindings(view))
            dhcp_binding = cached[1].lookup(giaddr, chaddr)
        else:
            dhcp_binding = self._vif_binding(dp.id, view, binding, in_port)
        decision = self.responder.handle(frame, dhcp_binding, self._clock())
        reason = decision.reason
        self.metrics.count_dhcp(reason)
        if reason.outcome in LOGGED_OUTCOMES:
            client = dhcp_binding.mac if dhcp_binding is not None else (dp.id, in_port)
            self.log.note(client, reason.outcome,
                          f"{reason} (datapath {dpid_label(dp.id)} port {in_port})")
        elif LOG.isEnabledFor(logging.DEBUG):
            LOG.debug("DHCP on %016x port %s: %s", dp.id, in_port, reason)
        reply = with_tag(decision.reply, tag) if decision.reply else None
        packet = ofmsgs.packet_out_bytes(in_port, reply) if reply else None
        if decision.event:
            self.committer.submit(decision.event, getattr(dp, "send_now", dp.send), packet)
            return b""
        return packet or b""
