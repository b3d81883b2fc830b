"""nova's lease rules in one place (sdn/leases.py) and DHCP that outlives its database
(sdn/apps/dhcp_punt.LeaseCommitter)."""

from __future__ import annotations

import datetime
import sqlite3
import time

import pytest
from sqlalchemy import update

from sdn import leases
from sdn.apps.dhcp_punt import LeaseCommitter
from sdn.db import api, models
from sdn.dhcp import LeaseEvent
from tests.unit.test_manager import fixed

pytestmark = pytest.mark.both_databases  # every test using the database runs on SQLite and PostgreSQL


@pytest.fixture
def two(make_manager):
    mgr = make_manager("flatdhcp", dhcp_lease_time=120)
    mgr.create_networks("f", "10.6.0.0/24")
    return mgr, mgr.allocate_for_instance("a", "p"), mgr.allocate_for_instance("b", "p")


def test_unrenewed_lease_expires_and_renewed_one_stays(two, engine):
    mgr, a, b = two
    mgr.lease_fixed_ip(a["address"], a["mac"])
    mgr.lease_fixed_ip(b["address"], b["mac"])
    assert leases.leased(engine) == {a["address"]: a["mac"], b["address"]: b["mac"]}
    now = time.time()
    assert leases.expire(engine, now + 60, 120) == []          # within the lease: kept
    with api.transaction(engine) as s:                         # a's last ACK: 200 s ago
        s.execute(update(models.FixedIp).where(models.FixedIp.address == a["address"])
                  .values(updated_at=models.utcnow() - datetime.timedelta(seconds=200)))
    revision = api.current_revision(engine)
    assert leases.expire(engine, now, 120) == [a["address"]]   # b renewed within its lease
    assert not fixed(engine, a["address"]).leased and fixed(engine, b["address"]).leased
    assert fixed(engine, a["address"]).instance_uuid is not None   # still allocated: associated
    assert api.current_revision(engine) == revision            # no view shows `leased`


def test_fixed_list_shows_the_lease_end(two):
    mgr, a, _b = two
    mgr.lease_fixed_ip(a["address"], a["mac"])
    rows = {r["address"]: r for r in mgr.list_fixed_ips()}
    ip = fixed(mgr.engine, a["address"])
    assert rows[a["address"]]["lease_end"].startswith(
        (ip.updated_at.replace(microsecond=0) + datetime.timedelta(seconds=120))
        .isoformat(sep=" "))
    assert rows[_b["address"]]["lease_end"] is None


def test_one_check_for_every_path(two, engine):
    """The same nova checks whichever path records the event."""
    mgr, a, _b = two
    for kind in ("lease", "release"):
        with pytest.raises(Exception, match="10.6.0.250"):
            leases.one(engine, kind, "10.6.0.250", None)
        with pytest.raises(Exception, match="fa:16:3e:00:00:99"):
            leases.one(engine, kind, a["address"], "fa:16:3e:00:00:99")


def _committer(engine):
    """The controller's committer on ``engine``, with the DHCP path's short lock wait."""
    return LeaseCommitter(lambda events: leases.record(engine, events,
                                                       lock_wait=leases.DHCP_LOCK_WAIT),
                          leases.leased(engine), start=False)


def _locked(db_url):
    """Another process's write lock held open, as a connection to roll back and close: on
    SQLite the file's (BEGIN IMMEDIATE), on PostgreSQL the lease tables' (LOCK TABLE ... IN
    EXCLUSIVE MODE: readers pass, every writer waits)."""
    if db_url.startswith("sqlite:///"):
        conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        return conn
    import psycopg
    from sqlalchemy.engine import make_url
    conn = psycopg.connect(make_url(db_url).set(drivername="postgresql")
                           .render_as_string(hide_password=False), autocommit=True)
    conn.execute("BEGIN")
    conn.execute("LOCK TABLE fixed_ips, state_revision IN EXCLUSIVE MODE")
    return conn


def test_renewals_answered_from_memory_while_the_database_is_locked(two, engine, db_url):
    mgr, a, b = two
    mgr.lease_fixed_ip(a["address"], a["mac"])           # a: recorded before the outage
    sent: list[bytes] = []
    committer = _committer(engine)
    lock = _locked(db_url)
    try:
        started = time.monotonic()
        committer.commit([(LeaseEvent("lease", a["address"], a["mac"]), sent.append, b"ACK-a"),
                          (LeaseEvent("lease", b["address"], b["mac"]), sent.append, b"ACK-b")])
        waited = time.monotonic() - started
        # the renewal of a's recorded lease is answered; b's new lease is not (never recorded)
        assert sent == [b"ACK-a"], sent
        assert waited < 5, f"a lease batch waited {waited:.1f}s for the lock"
        assert committer.pending and committer.stats["withheld"] == 1
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    # back: the memory renewal is written with the next batch, and b's retry is acknowledged
    before = fixed(engine, a["address"]).updated_at
    committer.commit([(LeaseEvent("lease", b["address"], b["mac"]), sent.append, b"ACK-b")])
    assert sent == [b"ACK-a", b"ACK-b"]
    assert not committer.pending
    assert fixed(engine, a["address"]).updated_at > before and fixed(engine, b["address"]).leased


def test_forgotten_lease_is_not_renewed_from_memory(two, engine, db_url):
    mgr, a, _b = two
    mgr.lease_fixed_ip(a["address"], a["mac"])
    committer = _committer(engine)
    committer.forget([a["address"]])                      # expired in the database
    sent: list[bytes] = []
    lock = _locked(db_url)
    try:
        committer.commit([(LeaseEvent("lease", a["address"], a["mac"]), sent.append, b"ACK")])
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert sent == []


def test_release_then_lease_of_a_deallocated_address_in_one_batch(two, engine):
    """Each event is checked against the row as the events before it left it: after the
    release disassociates the address, the lease is refused, as it would be alone."""
    mgr, a, _b = two
    mgr.lease_fixed_ip(a["address"], a["mac"])
    mgr.deallocate_for_instance("a")
    results = leases.record(engine, [LeaseEvent("release", a["address"], a["mac"]),
                                     LeaseEvent("lease", a["address"], a["mac"])])
    assert results[0] is None and type(results[1]).__name__ == "FixedIpNotAssociated"
    ip = fixed(engine, a["address"])
    assert (ip.instance_uuid, ip.leased) == (None, False)


def test_no_ack_for_a_lease_that_was_not_recorded(two, engine):
    mgr, a, b = two
    sent: list[bytes] = []
    committer = _committer(engine)
    committer.commit([(LeaseEvent("lease", a["address"], "fa:16:3e:00:00:99"), sent.append,
                       b"ACK-wrong-mac"),
                      (LeaseEvent("lease", b["address"], b["mac"]), sent.append, b"ACK-b")])
    assert sent == [b"ACK-b"]


def test_expiry_keeps_renewals_not_yet_written_and_the_committer_survives(two, engine):
    mgr, a, b = two
    mgr.lease_fixed_ip(a["address"], a["mac"])
    with api.transaction(engine) as s:
        s.execute(update(models.FixedIp).where(models.FixedIp.address == a["address"])
                  .values(updated_at=models.utcnow() - datetime.timedelta(seconds=200)))
    committer = _committer(engine)
    committer.pending[a["address"]] = LeaseEvent("lease", a["address"], a["mac"])
    assert leases.expire(engine, time.time(), 120, committer.pending_addresses()) == []
    committer.forget([a["address"]])
    assert a["address"] in committer.recorded          # still renewable from memory
    sent: list[bytes] = []

    def send(packet):             # the first hand-off to a switch fails (it just went away)
        if not sent:
            sent.append(b"")
            raise OSError("gone")
        sent.append(packet)
    committer = LeaseCommitter(lambda events: [None] * len(events), start=True)
    committer.submit(LeaseEvent("lease", a["address"], a["mac"]), send, b"ACK-1")
    deadline = time.monotonic() + 5
    while not sent and time.monotonic() < deadline:
        time.sleep(0.01)
    committer.submit(LeaseEvent("lease", a["address"], a["mac"]), send, b"ACK-2")
    while len(sent) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sent == [b"", b"ACK-2"]                      # the thread lived on
