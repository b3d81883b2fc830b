"""The controller's window on state: reads views and revisions, writes DHCP lease events."""

from __future__ import annotations

import datetime

from sdn import exception
from sdn import manager as managers
from sdn.db import api as db
from sdn.db import models
from sdn.dhcp.server import LeaseEvent
from sdn.view import StateView


class StateSource:
    """Wraps the engine and network manager; every call is one transaction."""

    def __init__(self, engine, manager, *, domain: str, lease_time: int, mtu: int | None):
        self.engine = engine
        self.manager = manager
        self._view_opts = dict(domain=domain, lease_time=lease_time, mtu=mtu)

    @classmethod
    def from_conf(cls, conf) -> StateSource:
        engine = db.get_engine(conf.database.connection)
        return cls(engine, managers.get_manager(engine, conf), domain=conf.dhcp_domain,
                   lease_time=conf.dhcp_lease_time, mtu=conf.network_device_mtu)

    def revision(self) -> int:
        return db.current_revision(self.engine)

    def load(self) -> StateView:
        return db.load_views(self.engine, **self._view_opts)

    def timeout_fixed_ips(self, now: float) -> int:
        """Disassociate fixed IPs deallocated longer than fixed_ip_disassociate_timeout."""
        naive_utc = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).replace(tzinfo=None)
        return self.manager.timeout_fixed_ips(naive_utc)

    def apply_lease_event(self, event: LeaseEvent) -> None:
        """ACK -> lease_fixed_ip; RELEASE and DECLINE -> release_fixed_ip (nova semantics)."""
        if event.kind == "lease":
            self.manager.lease_fixed_ip(event.address, event.mac)
        else:
            self.manager.release_fixed_ip(event.address, event.mac)

    def apply_lease_events(self, events: list[LeaseEvent]) -> list[Exception | None]:
        """Record a batch of lease events in **one** transaction (group commit).

        Same semantics per event as ``apply_lease_event`` (nova's lease_fixed_ip /
        release_fixed_ip); an event that state rejects (unknown address, MAC mismatch ...)
        is skipped and its error returned at its index, the others still commit. Returns
        only after the commit, so callers may send ACKs afterwards (write-ahead).
        """
        results: list[Exception | None] = []
        with db.transaction(self.engine) as session:
            now = models.utcnow()
            for event in events:
                lease = event.kind == "lease"
                try:
                    ip = self.manager._lease_target(session, event.address, event.mac,
                                                    "leased" if lease else "released")
                except exception.SdnError as err:
                    results.append(err)
                    continue
                if lease:
                    ip.leased = True
                else:   # as NetworkManager.release_fixed_ip
                    ip.leased = False
                    if not ip.allocated:
                        ip.instance_uuid = None
                        ip.host = None
                ip.updated_at = now
                results.append(None)
        return results
