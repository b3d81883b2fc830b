"""The change feed: every committed write transaction records, under the ``state_revision`` it
produced, which rows it changed (table, kind, primary keys, and the networks they belong to);
readers ask what changed since the revision they saw (:func:`since`).

Recording (:class:`Recorder`) is hooked into ``sdn.db.api.transaction``: it watches the ORM
session (objects flushed as new/dirty/deleted; bulk ``update()``/``delete()`` statements are
recorded by table with unknown ids). On PostgreSQL the commit also sends
``NOTIFY sdn_state, '<revision>'`` (delivered at commit, never for a rolled-back transaction),
which wakes the controllers listening (:class:`Listener`); SQLite has no notifications, so its
readers keep polling the revision.

The feed is pruned (:func:`prune`) to the last ``KEEP`` revisions; a reader further behind gets
``None`` from :func:`since` and reloads everything.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, event, func, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from sdn.db import models

LOG = logging.getLogger("sdn.changes")

#: PostgreSQL notification channel; the payload is the new revision (decimal)
CHANNEL = "sdn_state"
#: revisions the feed keeps (older ones are pruned by the maintenance job)
KEEP = 10000

#: tables whose rows belong to one network: their change names it (else the change is global)
_NETWORK_OF = {
    "networks": lambda obj: obj.id,
    "fixed_ips": lambda obj: obj.network_id,
    "virtual_interfaces": lambda obj: obj.network_id,
}
#: tables whose rows belong to one instance: their change names the networks of its VIFs
#: (looked up at commit; a remote-group rule elsewhere is the reader's concern, see
#: ``sdn.apps.statefeed``)
_INSTANCE_OF = {
    "instances": lambda obj: obj.uuid,
    "security_group_instance_association": lambda obj: obj.instance_uuid,
}


@dataclass(frozen=True)
class Change:
    """What one transaction did to one table: ``kind`` insert|update|delete, ``ids`` the primary
    keys (None: unknown, e.g. a bulk statement), ``networks`` the network ids of those rows
    (None: unknown or not network-scoped)."""

    table: str
    kind: str
    ids: tuple | None = None
    networks: tuple[int, ...] | None = None

    def as_dict(self) -> dict:
        return {"table": self.table, "kind": self.kind,
                "ids": None if self.ids is None else list(self.ids),
                "networks": None if self.networks is None else list(self.networks)}

    @classmethod
    def from_dict(cls, d: dict) -> Change:
        ids, nets = d.get("ids"), d.get("networks")
        return cls(table=d["table"], kind=d["kind"],
                   ids=None if ids is None else tuple(ids),
                   networks=None if nets is None else tuple(nets))


def _pk(obj):
    from sqlalchemy import inspect as sa_inspect
    identity = sa_inspect(obj).identity
    if identity is None:
        return None
    return identity[0] if len(identity) == 1 else list(identity)


class Recorder:
    """Collects one transaction's changes from its session; :meth:`commit_record` writes them
    under the new revision. Attach with :func:`install`."""

    #: tables never recorded: the feed itself, and leases of controllers (no view reads them)
    IGNORED = frozenset({"state_changes", "leader_leases", "state_revision"})

    def __init__(self):
        self._rows: dict[tuple[str, str], dict] = {}
        self._pending_inserts: list = []

    def _add(self, table: str, kind: str, pk=None, network=None, bulk: bool = False,
             instance: str | None = None) -> None:
        if table in self.IGNORED:
            return
        entry = self._rows.setdefault((table, kind), {"ids": set(), "networks": set(),
                                                      "instances": set(), "unknown_ids": False,
                                                      "global": False})
        if bulk or pk is None:
            entry["unknown_ids"] = True
        else:
            entry["ids"].add(json.dumps(pk))
        if not bulk and table in _INSTANCE_OF and instance is not None:
            entry["instances"].add(instance)
        elif bulk or table not in _NETWORK_OF or network is None:
            entry["global"] = True      # may matter to any datapath
        else:
            entry["networks"].add(int(network))

    def _record(self, obj, kind: str) -> None:
        table = getattr(type(obj), "__tablename__", None)
        if table is not None:
            network, instance = _NETWORK_OF.get(table), _INSTANCE_OF.get(table)
            self._add(table, kind, _pk(obj), network(obj) if network else None,
                      instance=instance(obj) if instance else None)

    def before_flush(self, session: Session, _context, _instances) -> None:
        self._pending_inserts.extend(session.new)

    def after_flush(self, session: Session, _context) -> None:
        """Updates and deletes (their keys and network ids are known before the flush)."""
        for obj in session.dirty:
            # collections too: a VIF losing an allowed address pair (a delete-orphan, not in
            # session.deleted) changes only its collection
            if session.is_modified(obj, include_collections=True):
                self._record(obj, "update")
        for obj in session.deleted:
            self._record(obj, "delete")

    def after_flush_postexec(self, _session: Session, _context) -> None:
        """Inserts: their keys (and foreign keys set through relationships) exist now."""
        for obj in self._pending_inserts:
            self._record(obj, "insert")
        self._pending_inserts.clear()

    def statement(self, orm_state) -> None:
        """A bulk insert/update/delete through ``session.execute``: table known, ids not."""
        if not (orm_state.is_insert or orm_state.is_update or orm_state.is_delete):
            return
        name = getattr(getattr(orm_state.statement, "table", None), "name", None)
        if name is not None:
            kind = ("insert" if orm_state.is_insert else
                    "update" if orm_state.is_update else "delete")
            self._add(name, kind, bulk=True)

    def changes(self) -> list[Change]:
        out = []
        for (table, kind), entry in sorted(self._rows.items()):
            ids = None if entry["unknown_ids"] else tuple(sorted(json.loads(i) for i in entry["ids"]))
            networks = None if entry["global"] else tuple(sorted(entry["networks"]))
            out.append(Change(table, kind, ids, networks))
        return out

    def _resolve_instances(self, session: Session) -> None:
        """Instance-scoped changes: the networks of the instances' VIFs (as of this commit;
        VIFs deleted in the same transaction are recorded themselves)."""
        for entry in self._rows.values():
            if entry["instances"] and not entry["global"]:
                Vif = models.VirtualInterface
                entry["networks"] |= set(session.scalars(
                    select(Vif.network_id).where(Vif.instance_uuid.in_(sorted(entry["instances"])))))
                entry["instances"].clear()

    def commit_record(self, session: Session) -> int:
        """Write this transaction's changes under the revision it just produced (the caller has
        bumped ``state_revision`` in this transaction); PostgreSQL: NOTIFY at commit."""
        self._resolve_instances(session)
        revision = session.scalar(select(models.StateRevision.value)
                                  .where(models.StateRevision.id == 1))
        session.execute(insert(models.StateChange).values(
            revision=revision, changes=json.dumps([c.as_dict() for c in self.changes()]),
            created_at=models.utcnow()))
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_notify(:channel, :payload)"),
                            {"channel": CHANNEL, "payload": str(revision)})
        return revision


def install(session: Session) -> Recorder:
    """Attach a new Recorder to ``session`` (one write transaction)."""
    recorder = Recorder()
    event.listen(session, "before_flush", recorder.before_flush)
    event.listen(session, "after_flush", recorder.after_flush)
    event.listen(session, "after_flush_postexec", recorder.after_flush_postexec)
    event.listen(session, "do_orm_execute", recorder.statement)
    return recorder


def since(engine: Engine, revision: int, upto: int | None = None
          ) -> tuple[int, list[Change]] | None:
    """``(current revision, changes after revision)`` read in one transaction, oldest first,
    up to revision ``upto`` if given (the revision of the view the reader loaded); None when
    the feed no longer reaches back to ``revision`` (pruned, or written before the feed
    existed): the reader must reload everything."""
    from sdn.db.api import read_transaction

    with read_transaction(engine) as session:
        return since_in(session, revision, upto)


def since_in(session: Session, revision: int, upto: int | None = None
             ) -> tuple[int, list[Change]] | None:
    """:func:`since` inside the caller's read transaction."""
    current = session.scalar(select(models.StateRevision.value)
                             .where(models.StateRevision.id == 1)) or 0
    if upto is not None:
        current = min(current, upto)
    if current <= revision:
        return current, []
    rows = session.execute(select(models.StateChange.revision, models.StateChange.changes)
                           .where(models.StateChange.revision > revision,
                                  models.StateChange.revision <= current)
                           .order_by(models.StateChange.revision)).all()
    if [r.revision for r in rows] != list(range(revision + 1, current + 1)):
        return None
    return current, [Change.from_dict(d) for r in rows for d in json.loads(r.changes)]


def prune(engine: Engine, keep: int = KEEP) -> int:
    """Delete feed rows older than the last ``keep`` revisions; returns how many."""
    from sdn.db.api import transaction, keep_revision

    with transaction(engine, lock_wait=2.0) as session:
        keep_revision(session)
        newest = session.scalar(select(func.max(models.StateChange.revision))) or 0
        result = session.execute(delete(models.StateChange)
                                 .where(models.StateChange.revision <= newest - keep))
        return result.rowcount or 0


def networks_touched(changes: Iterable[Change]) -> set[int] | None:
    """The network ids a batch of changes is confined to, or None if any change is global (a
    security group, a rule, a floating IP, an instance, a bulk statement: may matter anywhere)."""
    out: set[int] = set()
    for change in changes:
        if change.networks is None:
            return None
        out |= set(change.networks)
    return out


class Listener:
    """PostgreSQL ``LISTEN sdn_state`` on its own connection and thread: ``wake()`` is called
    with each notified revision. Reconnects after a lost connection (and calls ``wake(None)``
    then: notifications may have been missed). Needs psycopg 3 (the ``postgresql`` extra)."""

    def __init__(self, url: str, wake, *, retry: float = 1.0):
        self.url = url
        self.wake = wake
        self.retry = retry
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="state-listener", daemon=True)

    @staticmethod
    def dsn(url: str) -> str:
        from sqlalchemy.engine import make_url
        parsed = make_url(url)
        return parsed.set(drivername="postgresql").render_as_string(hide_password=False)

    def start(self) -> Listener:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def _run(self) -> None:
        import psycopg

        failing = False
        while not self.stopped.is_set():
            try:
                with psycopg.connect(self.dsn(self.url), autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if failing:
                        LOG.warning("listening for state notifications again")
                    failing = False
                    self.wake(None)
                    while not self.stopped.is_set():
                        for note in conn.notifies(timeout=1.0):
                            try:
                                self.wake(int(note.payload))
                            except ValueError:
                                self.wake(None)
            except Exception as err:   # lost connection: reconnect; the poller still reads
                if not failing:
                    LOG.warning("state notifications lost (%s); reconnecting every %.1fs",
                                err, self.retry)
                failing = True
                self.stopped.wait(self.retry)
