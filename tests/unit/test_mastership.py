"""The deployment lease and OpenFlow roles (sdn/apps/mastership.py, sdn/db/leader.py) with a
fake clock: who is master when, terms, fencing generations, and the role requests a sync unit
sends (tests/unit/fakeswitch.py answers them as Open vSwitch does)."""

from __future__ import annotations

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp

from sdn.apps import mastership as m
from sdn.db import leader
from sdn.db.leader import Lease

NOW = 1_800_000_000.0


class Clock:
    """Wall and monotonic clock of one controller, moved by hand."""

    def __init__(self, wall=NOW):
        self.wall = wall
        self.mono = 100.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


class MemoryStore:
    """One lease row in memory, as lease_round/release treat it in the database."""

    def __init__(self):
        self.rows: dict[str, Lease] = {}
        self.down = False

    def round(self, name, decide):
        if self.down:
            raise ConnectionError("database unreachable")
        decision = decide(self.rows.get(name))
        if decision.write:
            self.rows[name] = decision.lease
        return decision

    def release(self, name, holder, incarnation):
        row = self.rows.get(name)
        if row and (row.holder, row.incarnation) == (holder, incarnation):
            self.rows[name] = Lease(row.holder, row.incarnation, row.term, 0.0)


def controller(store, name, clock, length=3.0, changes=None):
    return m.Mastership(store.round, store.release, name, length=length,
                        clock=lambda: clock.wall, monotonic=lambda: clock.mono,
                        on_change=(lambda master, term: changes.append((name, master, term)))
                        if changes is not None else None)


# ---- decide: the pure rule ---------------------------------------------------------------------

def test_a_missing_lease_is_taken_with_a_term_above_the_unix_second():
    d = m.decide(None, "a", "run1", NOW, 3.0)
    assert d.write and d.master
    assert d.lease == Lease("a", "run1", int(NOW), NOW + 3.0)


def test_a_live_lease_of_another_controller_is_left_alone():
    row = Lease("b", "x", 7, NOW + 0.5)
    d = m.decide(row, "a", "run1", NOW, 3.0)
    assert not d.write and not d.master and d.lease == row


def test_a_lapsed_lease_is_taken_over_in_a_new_term():
    row = Lease("b", "x", int(NOW) + 5, NOW)      # expires exactly now: lapsed
    d = m.decide(row, "a", "run1", NOW, 3.0)
    assert d.master and d.lease.holder == "a" and d.lease.term == int(NOW) + 6


def test_renewal_keeps_the_term_and_moves_the_expiry():
    row = Lease("a", "run1", 42, NOW + 1.0)
    d = m.decide(row, "a", "run1", NOW, 3.0)
    assert d.master and d.lease == Lease("a", "run1", 42, NOW + 3.0)


def test_a_restarted_controller_takes_its_previous_runs_lease_in_a_new_term():
    row = Lease("a", "old-run", 42, NOW + 2.0)
    d = m.decide(row, "a", "new-run", NOW, 3.0)
    assert d.master and d.lease.incarnation == "new-run" and d.lease.term > 42


def test_terms_only_grow_even_when_the_clock_goes_back():
    assert m.next_term(5_000_000_000, NOW) == 5_000_000_001
    assert m.next_term(0, NOW) == int(NOW)


# ---- generations: the term in the flow cookies ---------------------------------------------------

def test_generation_puts_the_term_above_the_sync_count():
    gen = m.generation(0x123456789, 5)
    assert gen == (0x456789 << 24) | 5 and gen < 1 << 48


@pytest.mark.parametrize("mine,theirs,newer", [
    (100, 101, True), (100, 100, False), (100, 99, False),
    (0xFFFFFF, 0x1000000, True),       # across the 24-bit wrap
])
def test_only_a_later_terms_flows_are_foreign(mine, theirs, newer):
    assert m.newer_term(m.generation(theirs, 9), mine) is newer


# ---- Mastership: two controllers, one lease, a fake clock -----------------------------------------

def test_one_master_the_other_takes_over_only_after_the_lease_lapses():
    store, clock, changes = MemoryStore(), Clock(), []
    a = controller(store, "a", clock, changes=changes)
    b = controller(store, "b", clock, changes=changes)
    assert a.tick() and not b.tick()
    assert changes == [("a", True, a.term)]
    term_a = a.term
    assert b.term == term_a and b.holder == "a"      # a slave knows the term (role requests)
    # a stops renewing (killed): b waits a full lease
    clock.advance(2.9)
    assert not b.tick() and a.is_master()
    clock.advance(0.2)
    assert not a.is_master()                        # a's own view lapses too
    assert b.tick() and b.term > term_a
    assert changes[-1] == ("b", True, b.term)


def test_a_master_cut_off_from_the_database_stops_periodic_jobs_but_keeps_its_switches():
    """The switch is the arbiter: a master that cannot renew stays MASTER there (DHCP renewals
    answered from memory while the database is locked) until a round shows another holder."""
    store, clock, changes = MemoryStore(), Clock(), []
    a = controller(store, "a", clock, changes=changes)
    b = controller(store, "b", clock, changes=changes)
    assert a.tick() and a.is_master()
    store.down = True
    clock.advance(3.1)
    assert a.tick() and a.role() == (True, a.term)      # still MASTER of the switches
    assert not a.is_master()                          # but no periodic jobs
    store.down = False
    assert a.tick() and a.is_master()                 # nobody took it: renewed, same term
    assert changes == [("a", True, a.term)]
    # now cut off again while b takes over: a learns it at its next good round
    store.down = True
    clock.advance(3.1)
    store.down = False
    assert b.tick()
    assert not a.tick() and a.role() == (False, b.term)
    assert changes[-2:] == [("b", True, b.term), ("a", False, b.term)]


def test_renewals_keep_mastership_and_the_term():
    store, clock = MemoryStore(), Clock()
    a, b = controller(store, "a", clock), controller(store, "b", clock)
    a.tick()
    term = a.term
    for _ in range(20):
        clock.advance(1.0)
        assert a.tick() and not b.tick()
    assert a.term == term


def test_a_released_lease_is_taken_at_the_next_round():
    store, clock = MemoryStore(), Clock()
    a, b = controller(store, "a", clock), controller(store, "b", clock)
    a.tick()
    a.stop(release=True)
    assert not a.is_master()
    assert b.tick()


def test_rounds_come_every_third_of_the_lease():
    assert controller(MemoryStore(), "a", Clock(), length=3.0).next_wait() == pytest.approx(1.0)


def test_a_lease_must_have_a_length():
    with pytest.raises(ValueError, match="positive seconds"):
        m.Mastership(None, None, "a", length=0)


# ---- the same rounds against the database ------------------------------------------------------

def db_controller(engine, name, clock):
    """A Mastership whose rounds are sdn.db.leader's transactions on ``engine``."""
    return m.Mastership(lambda n, d: leader.lease_round(engine, n, d),
                        lambda n, h, i: leader.release(engine, n, h, i), name,
                        clock=lambda: clock.wall, monotonic=lambda: clock.mono)


@pytest.mark.both_databases
def test_lease_rounds_in_the_database_write_no_revision(engine):
    from sdn.db import api
    clock = Clock()
    rev = api.current_revision(engine)
    a, b = db_controller(engine, "a", clock), db_controller(engine, "b", clock)
    assert a.tick() and not b.tick()
    assert leader.current(engine, m.DEPLOYMENT).holder == "a"
    clock.advance(3.5)
    assert b.tick() and leader.current(engine, m.DEPLOYMENT).holder == "b"
    a.tick()
    assert not a.is_master()
    b.stop(release=True)
    assert leader.current(engine, m.DEPLOYMENT).expires_at == 0.0
    assert a.tick()
    assert api.current_revision(engine) == rev      # no controller reloads for a lease


# ---- role requests from the sync unit --------------------------------------------------------------

def test_a_slave_unit_sends_its_role_and_no_flow_then_syncs_as_master():
    from tests.unit.fakeswitch import FakeSwitch
    from tests.unit.test_datapath_sync import State, unit_on

    fake, state = FakeSwitch(), State()
    role = [(False, 77)]
    unit = unit_on(fake, state, role=lambda: role[0])
    assert not unit._hold_role()
    assert fake.roles == [(ofp.OFPCR_ROLE_SLAVE, 77)]
    assert not fake.flows
    role[0] = (True, 78)
    assert unit._hold_role()
    unit.step("full")
    assert fake.roles[-1] == (ofp.OFPCR_ROLE_MASTER, 78) and fake.flows


def test_a_stale_generation_id_is_refused_and_named():
    from sdn.apps.datapath import DatapathRejected
    from tests.unit.fakeswitch import FakeSwitch
    from tests.unit.test_datapath_sync import State, unit_on

    fake = FakeSwitch()
    fake.generation_id = 90
    unit = unit_on(fake, State(), role=lambda: (True, 89))
    with pytest.raises(DatapathRejected, match="OFPRRFC_STALE"):
        unit._hold_role()
    assert not fake.flows


def test_a_full_sync_keeps_a_newer_masters_flows():
    from sdn.flows.model import COOKIE_APP
    from tests.unit.fakeswitch import FakeSwitch
    from tests.unit.test_datapath_sync import State, unit_on

    fake, state = FakeSwitch(), State()
    mine = 500
    unit = unit_on(fake, state, generations=iter([m.generation(mine, 1), m.generation(mine, 2)]),
                   role=lambda: (True, mine),
                   foreign_generation=lambda gen: m.newer_term(gen, mine))
    unit._hold_role()
    unit.step("full")
    newer = (COOKIE_APP << 56) | (2 << 48) | m.generation(mine + 1, 1)
    older = (COOKIE_APP << 56) | (2 << 48) | m.generation(mine - 1, 1)
    fake.tamper_add_flow(table_id=99, priority=7, cookie=newer)
    fake.tamper_add_flow(table_id=99, priority=8, cookie=older)
    unit.step("full")
    cookies = {f.cookie for f in fake.flows.values()}
    assert newer in cookies and older not in cookies


@pytest.mark.both_databases
def test_racing_controllers_never_both_take_the_lease(engine):
    """Eight controllers start at once on a fresh database: one master, the losers slaves or
    failed rounds (a unique-key race on PostgreSQL), never two masters."""
    import threading
    clock = Clock()
    ctls = [db_controller(engine, f"c{i}", clock) for i in range(8)]
    barrier = threading.Barrier(len(ctls))
    results = {}

    def go(ctl):
        barrier.wait()
        results[ctl.me] = ctl.tick()

    threads = [threading.Thread(target=go, args=(c,)) for c in ctls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    masters = [name for name, master in results.items() if master]
    assert len(masters) == 1
    assert leader.current(engine, m.DEPLOYMENT).holder == masters[0]


class FakeLock:
    """A holder lock: one owner at a time; ``die(owner)`` is the kernel dropping it."""

    owner = None

    def __init__(self, name):
        self.name = name

    def try_acquire(self):
        if FakeLock.owner in (None, self.name):
            FakeLock.owner = self.name
            return True
        return False

    def release(self):
        if FakeLock.owner == self.name:
            FakeLock.owner = None


def test_a_slave_that_gets_the_holder_lock_takes_over_before_the_lease_lapses():
    FakeLock.owner = None
    store, clock = MemoryStore(), Clock()
    a = m.Mastership(store.round, store.release, "a", holder_lock=FakeLock("a"),
                     clock=lambda: clock.wall, monotonic=lambda: clock.mono)
    b = m.Mastership(store.round, store.release, "b", holder_lock=FakeLock("b"),
                     clock=lambda: clock.wall, monotonic=lambda: clock.mono)
    assert a.tick() and not b.tick()
    assert FakeLock.owner == "a"                   # b tried, failed, holds nothing
    clock.advance(1.0)
    assert not b.tick()                            # a alive: lease valid, lock held
    FakeLock.owner = None                          # a killed: the kernel drops its flock
    clock.advance(0.1)
    assert b.tick() and b.term > a.term            # 1.1 s after a's round, lease still valid
    assert FakeLock.owner == "b"


def test_a_holder_without_its_lock_is_taken_over_by_whoever_gets_it():
    FakeLock.owner = None
    store, clock = MemoryStore(), Clock()
    store.rows[m.DEPLOYMENT] = Lease("a", "run", 5, NOW + 3.0)   # a holds the row, no lock
    b = m.Mastership(store.round, store.release, "b", holder_lock=FakeLock("b"),
                     clock=lambda: clock.wall, monotonic=lambda: clock.mono)
    assert b.tick()                                # holder without its lock: gone, b takes over
    assert FakeLock.owner == "b"


@pytest.mark.both_databases
def test_the_holder_lock_of_the_database_is_exclusive_and_dies_with_its_holder(engine):
    first, second = leader.holder_lock(engine), leader.holder_lock(engine)
    assert first is not None and first.try_acquire() and first.try_acquire()
    assert not second.try_acquire()
    first.release()                                # as the kernel/server does at a kill -9
    assert second.try_acquire()
    second.release()
