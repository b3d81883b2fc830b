"""Leader leases in the state database (``leader_leases``), for ``sdn.apps.mastership``.

One round is one write transaction: the row is read under a write lock (SQLite: ``BEGIN
IMMEDIATE``; PostgreSQL: ``SELECT ... FOR UPDATE``), the pure ``decide`` picks the outcome and
the row is written if it changed hands or was renewed. Lease writes never bump
``state_revision`` (no view reads them) and are not in the change feed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select, update

from sdn.db import models
from sdn.db.api import keep_revision, transaction


@dataclass(frozen=True)
class Lease:
    """A lease row: ``holder`` (controller id), ``incarnation`` (one run of it), ``term``,
    ``expires_at`` (Unix seconds, the holder's clock)."""

    holder: str
    incarnation: str
    term: int
    expires_at: float


def lease_round(engine, name: str, decide: Callable, lock_wait: float = 1.0):
    """Read lease ``name``, apply ``decide(Lease | None)`` (its result has ``write`` and
    ``lease``), write the outcome; one transaction that waits at most ``lock_wait`` seconds for
    another writer (raises past it). Returns ``decide``'s result."""
    with transaction(engine, lock_wait=lock_wait) as session:
        keep_revision(session)
        row = session.scalar(select(models.LeaderLease).where(models.LeaderLease.name == name)
                             .with_for_update())
        current = (Lease(row.holder, row.incarnation, row.term, row.expires_at)
                   if row is not None else None)
        decision = decide(current)
        if decision.write:
            lease = decision.lease
            if row is None:
                session.add(models.LeaderLease(name=name, holder=lease.holder,
                                               incarnation=lease.incarnation, term=lease.term,
                                               expires_at=lease.expires_at))
            else:
                row.holder, row.incarnation = lease.holder, lease.incarnation
                row.term, row.expires_at = lease.term, lease.expires_at
        return decision


def release(engine, name: str, holder: str, incarnation: str) -> None:
    """Let lease ``name`` lapse now if ``holder``/``incarnation`` still hold it."""
    with transaction(engine, lock_wait=1.0) as session:
        keep_revision(session)
        session.execute(update(models.LeaderLease)
                        .where(models.LeaderLease.name == name,
                               models.LeaderLease.holder == holder,
                               models.LeaderLease.incarnation == incarnation)
                        .values(expires_at=0.0))


def current(engine, name: str) -> Lease | None:
    """Lease ``name`` as stored now (None: never taken)."""
    from sdn.db.api import read_transaction
    with read_transaction(engine) as session:
        row = session.get(models.LeaderLease, name)
        return (Lease(row.holder, row.incarnation, row.term, row.expires_at)
                if row is not None else None)
