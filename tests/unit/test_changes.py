"""The change feed (sdn/db/changes.py) and what the controller does with it
(sdn/apps/statefeed.py): every write transaction records its revision and rows; a reader gets
what changed since the revision it saw; a datapath recompiles only when its networks changed."""

from __future__ import annotations

import threading

import pytest

from sdn.apps.statefeed import datapath_affected
from sdn.db import api, changes
from sdn.flows.context import Binding
from sdn.secgroups import SecurityGroups
from sdn.view import VifView

pytestmark = pytest.mark.both_databases


def _changes(engine, since):
    feed = changes.since(engine, since)
    assert feed is not None
    return feed[1]


def test_every_write_records_its_revision_and_rows(make_manager, engine):
    mgr = make_manager("flatdhcp")
    start = api.current_revision(engine)
    nets = mgr.create_networks("a", "10.9.0.0/24", num_networks=2, network_size=128)
    after_create = api.current_revision(engine)
    assert after_create == start + 1
    created = _changes(engine, start)
    tables = {(c.table, c.kind) for c in created}
    assert ("networks", "insert") in tables and ("fixed_ips", "insert") in tables
    net_insert = next(c for c in created if c.table == "networks")
    assert sorted(net_insert.ids) == sorted(n["id"] for n in nets)

    alloc = mgr.allocate_for_instance("i1", "alpha")
    feed = _changes(engine, after_create)
    vif = next(c for c in feed if c.table == "virtual_interfaces")
    assert vif.kind == "insert" and vif.networks == (alloc["network_id"],)
    fixed = next(c for c in feed if c.table == "fixed_ips")
    assert fixed.kind == "update" and fixed.networks == (alloc["network_id"],)
    instance = next(c for c in feed if c.table == "instances")
    assert instance.networks == (alloc["network_id"],)     # by its VIFs
    # the project's first launch created its default security group: global
    assert changes.networks_touched(feed) is None
    rev = api.current_revision(engine)
    second = mgr.allocate_for_instance("i2", "alpha")
    assert changes.networks_touched(_changes(engine, rev)) == {second["network_id"]}


def test_a_transaction_that_writes_nothing_records_nothing(make_manager, engine):
    mgr = make_manager("flatdhcp")
    mgr.create_networks("a", "10.9.0.0/24")
    rev = api.current_revision(engine)
    with api.transaction(engine):
        pass
    assert changes.since(engine, rev) == (rev, [])


def test_removing_an_address_pair_is_recorded_for_its_network(make_manager, engine):
    """The pair goes by delete-orphan (never in session.deleted): its VIF's collection changed,
    and that change must reach the switches of the VIF's network."""
    mgr = make_manager("flatdhcp")
    mgr.create_networks("a", "10.9.0.0/24")
    alloc = mgr.allocate_for_instance("i1", "alpha")
    mgr.add_address_pair("i1", "10.9.0.200", "fa:16:3e:00:00:99")
    rev = api.current_revision(engine)
    mgr.remove_address_pair("i1", "10.9.0.200", "fa:16:3e:00:00:99")
    assert api.current_revision(engine) == rev + 1
    assert changes.networks_touched(_changes(engine, rev)) == {alloc["network_id"]}


def test_security_group_changes_are_global(make_manager, engine):
    make_manager("flatdhcp")
    rev = api.current_revision(engine)
    SecurityGroups(engine).create("web", "alpha")
    feed = _changes(engine, rev)
    assert {c.table for c in feed} == {"security_groups", "security_group_rules"}  # default rules
    assert changes.networks_touched(feed) is None


def test_a_pruned_feed_tells_the_reader_to_reload_everything(make_manager, engine):
    mgr = make_manager("flatdhcp")
    first = api.current_revision(engine)
    mgr.create_networks("a", "10.9.0.0/24")
    mgr.create_networks("b", "10.9.1.0/24")
    assert changes.prune(engine, keep=1) == 1
    assert changes.since(engine, first) is None
    assert changes.since(engine, first + 1)[0] == first + 2


def test_since_stops_at_the_revision_of_the_view_read(make_manager, engine):
    mgr = make_manager("flatdhcp")
    rev = api.current_revision(engine)
    mgr.create_networks("a", "10.9.0.0/24")
    mgr.create_networks("b", "10.9.1.0/24")
    current, feed = changes.since(engine, rev, upto=rev + 1)
    assert current == rev + 1
    assert [c.table for c in feed if c.table == "networks"] == ["networks"]


def test_revisions_before_the_feed_existed_mean_reload(engine):
    # the migration leaves older revisions without feed rows: a reader there reloads all
    with api.transaction(engine) as session:
        from sqlalchemy import update
        from sdn.db import models
        session.execute(update(models.StateRevision).values(value=models.StateRevision.value + 5))
    rev = api.current_revision(engine)
    assert changes.since(engine, rev - 3) is None


# ---- which datapaths recompile ------------------------------------------------------------------

def _vif(uuid, network_id):
    return VifView(uuid=uuid, mac="fa:16:3e:00:00:01", network_id=network_id, instance="i",
                   hostname="i", addresses=("10.0.0.5",), project_id="p")


def test_only_datapaths_with_a_touched_network_recompile():
    on_net1 = Binding(vifs={5: _vif("a" * 36, 1)}, trunks=(1,))
    ports = {"trunk": 1, "tap" + "a" * 11: 5}
    assert datapath_affected(on_net1, ports, {1})
    assert not datapath_affected(on_net1, ports, {2})
    assert not datapath_affected(on_net1, ports, set())
    assert datapath_affected(on_net1, ports, None)               # a global change
    assert datapath_affected(on_net1, ports, {2}, remote_groups=True)
    assert datapath_affected(None, ports, {2})                   # never compiled


def test_routers_transit_switches_and_unbound_taps_always_recompile():
    vifs = {5: _vif("a" * 36, 1)}
    ports = {"tap" + "a" * 11: 5}
    assert datapath_affected(Binding(vifs, (), public_port=9), ports, {2})
    assert datapath_affected(Binding(vifs, (1, 2)), ports, {2})
    assert datapath_affected(Binding(vifs, (), relays=(3,)), ports, {2})
    # a tap port with no VIF yet: a VIF of any network may be created for it
    assert datapath_affected(Binding(vifs, ()), {**ports, "tapbbbbbbbbbbb": 6}, {2})


# ---- PostgreSQL: LISTEN/NOTIFY wakes the reader -----------------------------------------------

def test_a_commit_notifies_its_revision_and_a_rollback_nothing(pg_database):
    from sdn.db import models
    engine = api.get_engine(pg_database)
    woken: list = []
    arrived = threading.Event()

    def wake(revision):
        woken.append(revision)
        if revision is not None:
            arrived.set()

    listener = changes.Listener(pg_database, wake).start()
    try:
        assert _wait(lambda: None in woken), "the listener never connected"
        with pytest.raises(RuntimeError):
            with api.transaction(engine) as session:
                session.add(models.ProviderFirewallRule(protocol=6, cidr="10.0.0.0/8"))
                session.flush()
                raise RuntimeError("rolled back")
        rev = api.current_revision(engine)
        SecurityGroups(engine).create("web", "alpha")
        assert arrived.wait(5), "no notification after the commit"
        assert [r for r in woken if r is not None] == [rev + 1]
        assert {c.table for c in changes.since(engine, rev)[1]} >= {"security_groups"}
    finally:
        listener.stop()
        engine.dispose()


def _wait(predicate, timeout=5.0):
    import time
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False
