"""Several controllers, one master: a lease in the state database and OpenFlow roles.

Every switch is connected to every controller of a deployment (``ovs-vsctl set-controller BR
tcp:A:6653 tcp:B:6653 tcp:C:6653``). One controller holds the **deployment lease** (a row of
``leader_leases`` named "deployment", with an expiry) and is MASTER on every switch; the others
are SLAVE (OpenFlow 1.3 §6.3.5, role request §7.3.9). Only the master writes flows, meters and
groups, answers DHCP and other packet-ins, and runs the periodic jobs (fixed-IP
disassociation, lease expiry); a slave keeps its view of state and of every switch's ports
warm, so a takeover needs only a role request and one (hitless) full sync.

Why one lease per deployment and not per datapath: the periodic jobs need a deployment-wide
holder anyway, one lease means one failover path to reason about and to test, and a
controller of this size serves thousands of switches; spreading masters over controllers would
buy load balancing at the price of N leases and N failovers. (Switching to per-datapath leases
would be a change of ``name`` in :class:`Mastership`.) Several network hosts whose controllers
each serve only their own switches set ``[ovs] mastership_group`` (e.g. the network host's
name): the group's lease then gives the switch roles among that group's controllers, and the
deployment lease, held by one controller of the whole deployment, only the periodic jobs.

Terms and fencing: every change of holder starts a new **term** (``next_term``: greater than the
previous one and than the current Unix second, so it also outgrows the generation ids a switch
saw from a deployment whose database was recreated). The term is the ``generation_id`` of the
master's role request: a switch refuses a MASTER or SLAVE request with a smaller one
(``OFPRRFC_STALE``) and demotes the old master's connection to SLAVE when the new master's
request arrives, so a stale master (paused, cut off from the database) can write nothing
(``OFPBRC_IS_SLAVE``). The term is also the upper half of the flow cookies' generation
(:func:`generation`): a full sync deletes flows of its own and older terms only, never a newer
master's (:func:`newer_term`).

Timing (``length`` = ``[ovs] mastership_lease`` seconds): the holder renews every
``length / 3``; another controller takes over once the row's ``expires_at`` (the holder's wall
clock) has passed, so clocks of the controllers must agree to well within ``length`` (NTP).
A holder that cannot renew (the database locked or unreachable) stops the periodic jobs
``length`` after the start of its last successful renewal (monotonic clock), but stays MASTER
on the switches, answering DHCP renewals from memory (``sdn.leases``), until a round shows
another holder or the switch demotes it: the switch is the arbiter, a new master's role request
with its larger generation_id takes the role away at once, so two masters never write at once
and a lock alone never leaves the switches without one. A controller that exits cleanly
releases the lease (``expires_at = 0``): its peer takes over at its next round. A restarted
controller with the same ``controller_id`` (host:port by default) takes its previous run's
lease over at once (that run is dead: the listen address is its own).

Faster than the lease: the holder also keeps a **holder lock** (``sdn.db.leader.HolderLock``:
a PostgreSQL session advisory lock, or ``flock`` next to a SQLite file) that the database
server or the kernel releases the moment the holder dies. A slave tries it every round; if it
gets it, the holder is gone (or lost its database session) and it takes the lease over at once
in a new term, without waiting for the expiry: failover within about a third of the lease.
(A holder that took the lease by expiry while a dead holder's session still held the lock
tries the lock every round; until it has it, a peer that gets it first takes over once.)
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sdn.db.leader import Lease

LOG = logging.getLogger("sdn.mastership")

#: the lease whose holder is master of every switch and runs the periodic jobs
DEPLOYMENT = "deployment"


def group_lease(group: str) -> str:
    """The lease name of mastership group ``group`` (``[ovs] mastership_group``)."""
    return f"group:{group}"


#: bits of a flow generation (48 in all) that count full syncs within one term
SYNC_BITS = 24
_TERM_MASK = (1 << (48 - SYNC_BITS)) - 1


@dataclass(frozen=True)
class Decision:
    """One renewal round's outcome: the lease as it is after the round, whether this
    controller must write it (took it or renewed it), and whether it is master."""

    lease: Lease
    write: bool
    master: bool


def next_term(previous: int, now: float) -> int:
    """The term after ``previous``: larger than it and than the Unix second ``now``."""
    return max(previous + 1, int(now))


def decide(row: Lease | None, me: str, incarnation: str, now: float, length: float,
           holder_gone: bool = False) -> Decision:
    """Pure lease logic for controller ``me`` (run ``incarnation``) at wall-clock ``now``:
    take a missing or lapsed lease (new term), renew its own (same term), take its previous
    run's lease or one whose holder is known gone (``holder_gone``: this controller got the
    holder lock) in a new term, else stay slave (nothing written)."""
    expires = now + length
    if row is None:
        return Decision(Lease(me, incarnation, next_term(0, now), expires), True, True)
    if row.holder == me and row.incarnation == incarnation:
        return Decision(Lease(me, incarnation, row.term, expires), True, True)
    if row.holder == me or row.expires_at <= now or holder_gone:
        return Decision(Lease(me, incarnation, next_term(row.term, now), expires), True, True)
    return Decision(row, False, False)


def generation(term: int, syncs: int) -> int:
    """A 48-bit flow generation: the term's low 24 bits above a 24-bit count of full syncs."""
    return ((term & _TERM_MASK) << SYNC_BITS) | (syncs & ((1 << SYNC_BITS) - 1))


def newer_term(gen: int, term: int) -> bool:
    """True when flow generation ``gen`` was written in a term after ``term`` (serial number
    arithmetic on 24 bits, RFC 1982): a newer master's flows, which this one must not delete."""
    diff = ((gen >> SYNC_BITS) - term) & _TERM_MASK
    return 0 < diff < (1 << (48 - SYNC_BITS - 1))


class Mastership:
    """The deployment lease as seen by one controller.

    ``round(name, decide) -> Decision`` runs one renewal round in one database transaction
    (``sdn.db.leader.lease_round``); ``release(name, me, incarnation)`` gives the lease up.
    ``on_change(master, term)`` is called (on the lease thread) whenever this controller
    becomes or stops being master. ``clock`` is the wall clock (Unix seconds), ``monotonic``
    a monotonic one; both injectable for tests. Seconds everywhere.
    """

    def __init__(self, round: Callable, release: Callable, me: str, *, length: float = 3.0,
                 name: str = DEPLOYMENT, holder_lock=None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 on_change: Callable[[bool, int], None] | None = None):
        if length <= 0:
            raise ValueError(f"mastership lease must be positive seconds, got {length}")
        self._round = round
        self._release = release
        self.me = me
        self.incarnation = secrets.token_hex(8)
        self.length = length
        self.name = name
        self.clock = clock
        self.monotonic = monotonic
        self.on_change = on_change
        self.holder_lock = holder_lock
        self.term = 0                   # the latest term this controller knows of
        self.holder: str | None = None
        self._valid_until = float("-inf")
        #: MASTER on the switches: from a round that took or renewed the lease until a round
        #: that shows another holder (a failed round changes nothing)
        self.switch_master = False
        self._was_master = False
        self._failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def is_master(self) -> bool:
        """True while this controller's lease is valid by its own monotonic clock: it may run
        the periodic jobs."""
        return self.monotonic() < self._valid_until

    def role(self) -> tuple[bool, int]:
        """``(master, generation_id)`` to hold on the switches now."""
        return self.switch_master, self.term

    def tick(self) -> bool:
        """One renewal round; returns whether this controller is master of the switches
        afterwards."""
        started, now = self.monotonic(), self.clock()
        try:
            locked = self.holder_lock is not None and self.holder_lock.try_acquire()
            decision = self._round(self.name, lambda row: decide(row, self.me, self.incarnation,
                                                                 now, self.length, locked))
        except Exception as err:   # database locked/unreachable: the lease runs out by itself
            if not self._failing:
                LOG.warning("mastership lease round failed (master for %.1fs more at most): %s",
                            max(0.0, self._valid_until - self.monotonic()), err)
            self._failing = True
        else:
            if self._failing:
                LOG.warning("mastership lease rounds work again")
            self._failing = False
            self.term, self.holder = decision.lease.term, decision.lease.holder
            self._valid_until = started + self.length if decision.master else float("-inf")
            self.switch_master = decision.master
        return self._check()

    def _check(self) -> bool:
        master = self.switch_master
        if master != self._was_master:
            self._was_master = master
            LOG.warning("%s is now %s (term %d%s)", self.me, "MASTER" if master else "SLAVE",
                        self.term, "" if master else f", holder {self.holder}")
            if self.on_change is not None:
                self.on_change(master, self.term)
        return master

    def next_wait(self) -> float:
        """Seconds until the next round: a third of the lease."""
        return self.length / 3

    def start(self) -> Mastership:
        self.tick()
        self._thread = threading.Thread(target=self._run, name="mastership", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.next_wait()):
            try:
                self.tick()
            except Exception as err:   # an on_change hook failing must not end the lease
                LOG.error("mastership round: %s", err)

    def stop(self, release: bool = True) -> None:
        """Stop renewing; with ``release`` give the lease up now (a clean exit), so a peer
        takes over at its next round instead of after the lease."""
        self._stop.set()
        if release and self.switch_master:
            self._valid_until = float("-inf")
            self.switch_master = False
            try:
                self._release(self.name, self.me, self.incarnation)
            except Exception as err:
                LOG.warning("could not release the mastership lease: %s", err)
        if release and self.holder_lock is not None:
            self.holder_lock.release()
