"""The next StateView from the previous one and the change feed, reading only what changed.

:func:`refresh` reads, in one read transaction (one snapshot), the current revision, the
change feed since the previous view and, when every change is confined to some networks and
touches only VIF rows (``VIF_TABLES``), the networks (a few rows) and the VIFs of the touched
networks; every other VIF, the security groups, provider rules and floating IPs are the
previous view's. Anything else (a security group, a rule, a floating IP, a bulk statement, a
pruned feed) reloads everything with ``load_views``. Either way a VIF or network equal to the
previous view's is that same object, so ``sdn.flows.incremental`` recompiles only the
others. ``tests/unit/test_viewdelta.py`` checks the result equals ``load_views``.
"""

from __future__ import annotations

import dataclasses

from sqlalchemy.engine import Engine

from sdn.db import api, changes
from sdn.view import StateView

#: tables whose changes a partial reload covers (each change names its networks: the
#: recorder resolves instances and group memberships to their VIFs' networks)
VIF_TABLES = frozenset({"virtual_interfaces", "fixed_ips", "instances",
                        "security_group_instance_association", "networks"})


def refresh(engine: Engine, old: StateView, **view_opts) -> tuple[StateView, list | None]:
    """``(view at the current revision, the changes since old.revision)``; the changes are
    None when the feed does not reach back to ``old.revision`` (every switch must recompile).
    ``view_opts`` are ``load_views``' keyword options."""
    backend = view_opts.get("ipv6_backend", "rfc2462")
    with api.read_transaction(engine) as session:
        feed = changes.since_in(session, old.revision)
        touched = None if feed is None else changes.networks_touched(feed[1])
        if feed is not None and feed[1] and touched is not None \
                and all(c.table in VIF_TABLES for c in feed[1]):
            net_opts = {k: v for k, v in view_opts.items()
                        if k in ("domain", "lease_time", "mtu", "metadata_route", "ra_interval")}
            networks = api.network_views(session, **net_opts)
            fresh = api.vif_views(session, networks, backend, sorted(touched))
            try:
                return _partial(old, feed[0], networks, fresh, touched), feed[1]
            except _Stale:
                pass
    view = api.load_views(engine, **view_opts)
    feed = changes.since(engine, old.revision, upto=view.revision)
    return stable(old, view), (None if feed is None else feed[1])


def _partial(old: StateView, revision: int, networks: dict, fresh: tuple,
             touched: set[int]) -> StateView:
    networks = {nid: old.networks[nid] if old.networks.get(nid) == net else net
                for nid, net in networks.items()}
    changed_nets = {nid for nid, net in networks.items() if old.networks.get(nid) is not net}
    fresh_ids = {v.id for v in fresh}
    before = {v.id: v for v in old.vifs if v.network_id in touched or v.id in fresh_ids}
    fresh = [before[v.id] if before.get(v.id) == v else v for v in fresh]
    kept = [v for v in old.vifs if v.network_id not in touched and v.id not in fresh_ids]
    if changed_nets & {v.network_id for v in kept}:
        # a network's row changed without its VIFs named (cannot happen through the recorder:
        # its change names it); its VIFs' derived IPv6 addresses may differ: reload them too
        raise _Stale
    vifs = tuple(sorted(kept + fresh, key=lambda v: v.id))
    return dataclasses.replace(old, revision=revision, networks=networks, vifs=vifs)


class _Stale(Exception):
    pass


def stable(old: StateView, new: StateView) -> StateView:
    """``new`` with every VIF and network equal to ``old``'s replaced by ``old``'s object."""
    networks = {nid: old.networks[nid] if old.networks.get(nid) == net else net
                for nid, net in new.networks.items()}
    by_uuid = {v.uuid: v for v in old.vifs}
    vifs = tuple(by_uuid[v.uuid] if by_uuid.get(v.uuid) == v else v for v in new.vifs)
    return dataclasses.replace(new, networks=networks, vifs=vifs)
