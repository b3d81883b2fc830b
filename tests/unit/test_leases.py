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


def _locked(db_path):
    """Another process's write lock on the SQLite file (BEGIN IMMEDIATE held open)."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_renewals_answered_from_memory_while_the_database_is_locked(two, engine, db_url):
    mgr, a, b = two
    mgr.lease_fixed_ip(a["address"], a["mac"])           # a: recorded before the outage
    sent: list[bytes] = []
    committer = LeaseCommitter(lambda events: leases.record(engine, events),
                               leases.leased(engine), start=False)
    lock = _locked(db_url.removeprefix("sqlite:///"))
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
    committer = LeaseCommitter(lambda events: leases.record(engine, events),
                               leases.leased(engine), start=False)
    committer.forget([a["address"]])                      # expired in the database
    sent: list[bytes] = []
    lock = _locked(db_url.removeprefix("sqlite:///"))
    try:
        committer.commit([(LeaseEvent("lease", a["address"], a["mac"]), sent.append, b"ACK")])
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert sent == []
