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


class HolderLock:
    """A lock the lease holder keeps for as long as its process (and its database session)
    lives, released by the operating system or the database server the moment it dies: a
    slave that can take it knows the holder is gone without waiting for the lease to lapse.

    PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) on a connection of its own
    (the server releases it when the holder's connection closes, at once on a kill -9). SQLite:
    ``flock`` on ``<database file>-leader.lock`` (single host, like SQLite itself). Other
    databases: none (:func:`holder_lock` returns None; failover waits for the lease)."""

    def try_acquire(self) -> bool:
        """True if this process holds the lock now (already, or just taken)."""
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError


class FileLock(HolderLock):
    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        import fcntl
        import os
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        import os
        if self._fd is not None:
            os.close(self._fd)     # closing the descriptor drops the flock
            self._fd = None


class AdvisoryLock(HolderLock):
    #: the advisory lock key: "sdn" and "lead" in ASCII
    KEY = 0x73646E_6C656164

    def __init__(self, engine, key: int = KEY):
        self.engine = engine
        self.key = key
        self._conn = None

    def try_acquire(self) -> bool:
        from sqlalchemy import text
        if self._conn is not None:
            try:   # the lock lives as long as this session: check the session still does
                self._conn.execute(text("SELECT 1"))
                return True
            except Exception:
                self.release()
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"),
                               {"key": self.key}).scalar()
        except Exception:
            conn.close()
            raise
        if got:
            self._conn = conn
        else:
            conn.close()
        return bool(got)

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()    # drop the session (and its lock), not back to the pool
            finally:
                self._conn = None


def holder_lock(engine, name: str = "deployment") -> HolderLock | None:
    """The HolderLock of lease ``name`` for ``engine``'s database (None: none available)."""
    import zlib

    from sqlalchemy.engine import make_url
    url = make_url(str(engine.url))
    deployment = name == "deployment"
    if url.get_backend_name() == "postgresql":
        key = AdvisoryLock.KEY if deployment else (AdvisoryLock.KEY & ~0xFFFFFFFF) | zlib.crc32(
            name.encode())
        return AdvisoryLock(engine, key)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        import os
        suffix = "" if deployment else "-" + "".join(c if c.isalnum() else "_" for c in name)
        return FileLock(os.path.abspath(url.database) + f"-leader{suffix}.lock")
    return None
