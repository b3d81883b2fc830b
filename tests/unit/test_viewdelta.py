"""``sdn.db.viewdelta.refresh``: the view derived from the previous one and the change feed
equals a full ``load_views`` after every kind of write the managers do, and keeps the objects
of unchanged VIFs (what lets ``sdn.flows.incremental`` recompile only the changed ones)."""

from __future__ import annotations

import pytest

from sdn.db import api, viewdelta
from sdn.secgroups import SecurityGroups

pytestmark = pytest.mark.both_databases


def _step(engine, old):
    view, feed = viewdelta.refresh(engine, old)
    assert view == api.load_views(engine)
    return view, feed


def test_refresh_equals_full_load_after_each_write(make_manager, engine):
    mgr = make_manager("flatdhcp")
    mgr.create_networks("a", "10.9.0.0/24", num_networks=2, network_size=128)
    for i in range(4):
        mgr.allocate_for_instance(f"i{i}", "alpha")
    view = api.load_views(engine)
    writes = [
        lambda: mgr.allocate_for_instance("n1", "alpha"),            # port-up: partial
        lambda: mgr.set_bandwidth("i1", rx_kbps=1000),
        lambda: mgr.add_address_pair("i2", "10.9.0.200"),            # pairs: full reload
        lambda: mgr.remove_address_pair("i2", "10.9.0.200"),
        lambda: mgr.set_port_security("i3", False),
        lambda: mgr.lease_fixed_ip(mgr.get_allocation("i0")["address"]),
        lambda: mgr.add_fixed_ip_to_instance("i0", "10.9.0.128/25"),
        lambda: mgr.remove_fixed_ip_from_instance(
            "i0", mgr.get_allocation("i0")["vifs"][-1]["address"]),
        lambda: SecurityGroups(engine).create("web", "alpha"),
        lambda: mgr.deallocate_for_instance("i1"),
        lambda: mgr.modify_network_host("10.9.0.0/25", host="h1"),
        lambda: mgr.allocate_for_instance("n2", "alpha"),
    ]
    for write in writes:
        old = view
        write()
        view, feed = _step(engine, old)
        assert view.revision >= old.revision and feed is not None
        kept = {v.uuid: v for v in old.vifs}
        # every VIF equal to the previous view's is the previous view's object
        assert all(v is kept[v.uuid] for v in view.vifs if kept.get(v.uuid) == v)


def test_port_up_reads_only_its_network(make_manager, engine):
    mgr = make_manager("flatdhcp")
    mgr.create_networks("a", "10.9.0.0/24", num_networks=2, network_size=128)
    mgr.allocate_for_instance("first", "alpha")
    view = api.load_views(engine)
    mgr.allocate_for_instance("second", "alpha")
    new, feed = _step(engine, view)
    assert {c.table for c in feed} <= viewdelta.VIF_TABLES
    assert all(a is b for a, b in zip(view.vifs, new.vifs))   # the old VIF kept its object
    assert len(new.vifs) == len(view.vifs) + 1
