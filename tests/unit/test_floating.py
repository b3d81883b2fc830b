"""Floating IPs and cloudpipe VPN in state, with nova's semantics and no partial writes."""

import pytest

from sdn import exception, vpn
from sdn.db import api
from sdn.floating import FloatingIps, parse_range

pytestmark = pytest.mark.both_databases  # every test using the database runs on SQLite and PostgreSQL


@pytest.fixture
def env(make_manager, make_conf, engine):
    mgr = make_manager("vlan")
    mgr.create_networks("t", "10.40.0.0/24", 2, 64)
    mgr.allocate_for_instance("v1", "alpha")
    mgr.allocate_for_instance("w1", "beta")
    fips = FloatingIps(engine, mgr.conf)
    fips.create("203.0.113.0/29")
    return mgr, fips


def test_range_parsing():
    assert parse_range("203.0.113.0/30") == ["203.0.113.1", "203.0.113.2"]
    assert parse_range("203.0.113.9") == ["203.0.113.9"]
    for bad in ("203.0.113.0/8", "fd00::/120", "nope"):
        with pytest.raises(exception.InvalidCidr):
            parse_range(bad)


def test_lifecycle_and_view(env, engine):
    mgr, fips = env
    a = fips.allocate("alpha")
    b = fips.allocate("alpha")
    fips.associate(a, "v1", "alpha")
    fips.associate(b, "v1", "alpha")          # two floating IPs on one fixed IP
    fixed = mgr.get_allocation("v1")["address"]
    view = api.load_views(engine)
    assert {(f.address, f.fixed_address) for f in view.floating_ips} == {(a, fixed), (b, fixed)}
    fips.disassociate(a, "alpha")
    assert [f.address for f in api.load_views(engine).floating_ips] == [b]
    fips.deallocate(a, "alpha")
    assert next(r for r in fips.list() if r["address"] == a)["project_id"] is None


def test_refusals_change_nothing(env, engine):
    mgr, fips = env
    a = fips.allocate("alpha")
    revision = api.current_revision(engine)
    with pytest.raises(exception.FloatingIpNotAllocated):
        fips.associate(a, "w1", "beta")
    with pytest.raises(exception.InstanceNotInProject, match="w1 belongs to project beta, not alpha"):
        fips.associate(a, "w1", "alpha")
    with pytest.raises(exception.FloatingIpExists):
        fips.create("203.0.113.4/30")           # overlaps: nothing of it is added
    assert api.current_revision(engine) == revision
    fips.associate(a, "v1", "alpha")
    with pytest.raises(exception.FloatingIpInUse):
        fips.deallocate(a, "alpha")
    with pytest.raises(exception.FloatingIpInUse):
        fips.delete("203.0.113.0/29")
    assert len(fips.list()) == 6


def test_pool_exhaustion(env):
    _, fips = env
    for _ in range(6):
        fips.allocate("alpha")
    with pytest.raises(exception.NoMoreFloatingIps) as err:
        fips.allocate("alpha")
    assert "nova" in str(err.value)


def test_auto_assign_and_instance_deletion(make_manager, engine):
    mgr = make_manager("vlan", auto_assign_floating_ip=True)
    mgr.create_networks("t", "10.40.0.0/24", 1, 64)
    fips = FloatingIps(engine, mgr.conf)
    fips.create("203.0.113.10")
    mgr.allocate_for_instance("v1", "alpha")
    (row,) = fips.list()
    assert row["instance"] == "v1" and row["auto_assigned"]
    mgr.deallocate_for_instance("v1")
    (row,) = fips.list()
    assert row["project_id"] is None and row["fixed_ip"] is None  # back in the pool


def test_vpn_run_uses_the_reserved_address_and_is_idempotent(env, engine):
    mgr, _ = env
    (alpha,) = [r for r in vpn.list_vpns(engine) if r["project"] == "alpha"]
    assert alpha["state"] == "down"
    alloc = vpn.run_vpn(mgr, "alpha")
    assert f"{alloc['address']}:1194" == alpha["private"]
    assert vpn.run_vpn(mgr, "alpha") == alloc
    net = api.load_views(engine).networks[alloc["network_id"]]
    assert net.vpn_running and net.vpn_private_address == alloc["address"]
    assert [r["state"] for r in vpn.list_vpns(engine) if r["project"] == "alpha"] == ["running"]


def test_floating_range_over_a_network_or_with_host_bits_is_refused(make_manager, engine):
    mgr = make_manager("flat")
    mgr.create_networks("f", cidr="10.0.0.0/24")
    fips = FloatingIps(engine, mgr.conf)
    rev = api.current_revision(engine)
    with pytest.raises(exception.FloatingRangeConflict,
                       match=r"floating range 10.0.0.128/25 overlaps network 10.0.0.0/24 \(f\)"):
        fips.create("10.0.0.128/25")
    with pytest.raises(exception.InvalidCidr, match="did you mean 198.51.100.0/29"):
        fips.create("198.51.100.7/29")
    assert fips.list() == [] and api.current_revision(engine) == rev
    assert fips.create("198.51.100.7") == ["198.51.100.7"]
