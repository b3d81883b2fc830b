"""The backends' window on state (OpenFlow controller and Linux agent alike): reads views and
revisions, writes DHCP lease events."""

from __future__ import annotations

import datetime
import os

from sdn import leases
from sdn import manager as managers
from sdn.db import api as db
from sdn.dhcp.server import LeaseEvent
from sdn.view import StateView


class StateSource:
    """Wraps the engine and network manager; every call is one transaction."""

    def __init__(self, engine, manager, *, domain: str, lease_time: int, mtu: int | None,
                 metadata_route: bool = False, allow_same_net_traffic: bool = True,
                 ipv6_backend: str = "rfc2462", ra_interval: int = 10):
        self.engine = engine
        self.manager = manager
        self._view_opts = dict(domain=domain, lease_time=lease_time, mtu=mtu,
                               metadata_route=metadata_route,
                               allow_same_net_traffic=allow_same_net_traffic,
                               ipv6_backend=ipv6_backend, ra_interval=ra_interval)

    @classmethod
    def from_conf(cls, conf) -> StateSource:
        engine = db.get_engine(conf.database.connection)
        return cls(engine, managers.get_manager(engine, conf), domain=conf.dhcp_domain,
                   lease_time=conf.dhcp_lease_time, mtu=conf.network_device_mtu,
                   metadata_route=bool(conf.metadata_host),
                   allow_same_net_traffic=conf.allow_same_net_traffic,
                   ipv6_backend=conf.ipv6_backend, ra_interval=conf.ipv6_ra_interval)

    def revision(self) -> int:
        return db.current_revision(self.engine)

    def write_marker(self):
        """A cheap token that changes when a transaction commits to a SQLite file database
        (size and modification time of the file and its write-ahead log: two ``stat`` calls,
        no query), or None where there is none (PostgreSQL notifies instead; in-memory).
        Coarse file timestamps may hide a commit: readers keep a slower revision poll."""
        url = self.engine.url
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return None
        marks = []
        for path in (url.database, url.database + "-wal"):
            try:
                st = os.stat(path)
            except OSError:
                marks.append(None)
            else:
                marks.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(marks)

    def load(self) -> StateView:
        return db.load_views(self.engine, **self._view_opts)

    def refresh(self, old: StateView) -> tuple[StateView, list | None]:
        """The view at the current revision, derived from ``old`` reading only what the change
        feed says changed where it can (``sdn.db.viewdelta``), and the changes since ``old``
        (None: the feed does not reach back that far)."""
        from sdn.db import viewdelta
        return viewdelta.refresh(self.engine, old, **self._view_opts)

    def changes_since(self, revision: int, upto: int | None = None):
        """The change feed after ``revision`` (up to ``upto``): a list of
        ``sdn.db.changes.Change``, or None when it does not reach back that far."""
        from sdn.db import changes
        feed = changes.since(self.engine, revision, upto)
        return None if feed is None else feed[1]

    def prune_changes(self) -> int:
        from sdn.db import changes
        return changes.prune(self.engine)

    def timeout_fixed_ips(self, now: float) -> int:
        """Disassociate fixed IPs deallocated longer than fixed_ip_disassociate_timeout."""
        naive_utc = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).replace(tzinfo=None)
        return self.manager.timeout_fixed_ips(naive_utc)

    def apply_lease_events(self, events: list[LeaseEvent]) -> list[Exception | None]:
        """Record a batch of lease events in one transaction (``sdn.leases.record``): an error
        or None per event; returns after the commit (write-ahead); raises when the database
        cannot be written within ``leases.DHCP_LOCK_WAIT`` seconds."""
        return leases.record(self.engine, events, lock_wait=leases.DHCP_LOCK_WAIT)

    def expire_leases(self, now: float, keep: frozenset[str] = frozenset()) -> list[str]:
        """Clear leases not renewed within the lease time, but those in ``keep``
        (``sdn.leases.expire``)."""
        return leases.expire(self.engine, now, self._view_opts["lease_time"], keep)

    def leased(self) -> dict[str, str]:
        """Leases recorded now: address -> MAC (``sdn.leases.leased``)."""
        return leases.leased(self.engine)
