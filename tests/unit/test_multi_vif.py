"""Several VIFs per instance, add/remove fixed IP, add_network_to_project, lease listing
(manager semantics on a real temporary SQLite database, and the CLI verbs)."""

import datetime

import pytest
from sqlalchemy import select

from sdn import cli, exception
from sdn.db import api, models
from sdn.floating import FloatingIps

pytestmark = pytest.mark.both_databases  # every test using the database runs on SQLite and PostgreSQL


def revision(engine):
    return api.current_revision(engine)


def fixed(engine, address):
    with api.read_transaction(engine) as s:
        return s.scalar(select(models.FixedIp).where(models.FixedIp.address == address))


@pytest.fixture
def vlan(make_manager):
    """VLAN manager, three /26 networks vl_0..vl_2 (VLAN 100..102); project p has vl_0."""
    mgr = make_manager("vlan")
    mgr.create_networks("vl", "10.20.0.0/24", num_networks=3, network_size=64, vlan_start=100)
    mgr.allocate_for_instance("first", "p")
    return mgr


def test_add_network_to_project_gives_the_lowest_free_then_refuses(vlan, engine):
    net = vlan.add_network_to_project("p")
    assert (net["label"], net["vlan"], net["project_id"]) == ("vl_1", 101, "p")
    rev = revision(engine)
    with pytest.raises(exception.NetworkAlreadyInProject, match="vl_1 .* already belongs to project p"):
        vlan.add_network_to_project("p", "vl_1")
    with pytest.raises(exception.NetworkAlreadyInProject, match="belongs to project p; a VLAN network"):
        vlan.add_network_to_project("q", "vl_0")
    with pytest.raises(exception.NetworkNotFound, match="no network labelled nope"):
        vlan.add_network_to_project("p", "nope")
    assert revision(engine) == rev          # refused: nothing written
    assert vlan.add_network_to_project("q", "10.20.0.128/26")["label"] == "vl_2"
    with pytest.raises(exception.NoMoreNetworks, match="project r"):
        vlan.add_network_to_project("r")


def test_add_network_to_project_is_vlan_only(make_manager):
    mgr = make_manager("flatdhcp")
    mgr.create_networks("f", "10.21.0.0/24", bridge="br100")
    with pytest.raises(exception.Invalid, match="network_manager=vlan only, not flatdhcp"):
        mgr.add_network_to_project("p")


def test_launch_on_two_networks_gives_two_vifs(vlan, engine):
    vlan.add_network_to_project("p")
    alloc = vlan.allocate_for_instance("m", "p", networks=["vl_0", "vl_1"])
    vifs = alloc["vifs"]
    assert [(v["label"], v["vlan"]) for v in vifs] == [("vl_0", 100), ("vl_1", 101)]
    assert vifs[0]["address"].startswith("10.20.0.") and vifs[1]["address"].startswith("10.20.0.")
    assert vifs[0]["mac"] != vifs[1]["mac"] and vifs[0]["port_name"] != vifs[1]["port_name"]
    assert alloc["address"] == vifs[0]["address"]          # top-level keys: the first VIF
    view = api.load_views(engine)
    mine = [v for v in view.vifs if v.instance == "m"]
    assert [v.addresses for v in mine] == [(vifs[0]["address"],), (vifs[1]["address"],)]
    # security groups are the instance's: every VIF carries them
    assert mine[0].security_groups == mine[1].security_groups != ()
    assert vlan.allocate_for_instance("m", "p") == alloc      # idempotent


def test_launch_refusals_change_nothing(vlan, engine):
    rev = revision(engine)
    with pytest.raises(exception.NetworkNotUsable, match=r"belongs to no project .*add-to-project.*"
                                                         r"project p may use: vl_0 \(10.20.0.0/26\)"):
        vlan.allocate_for_instance("m", "p", networks=["vl_0", "vl_1"])
    with pytest.raises(exception.Invalid, match="asked for twice"):
        vlan.allocate_for_instance("m", "p", networks=["vl_0", "10.20.0.0/26"])
    with pytest.raises(exception.NetworkNotFound, match="labelled vl_9"):
        vlan.allocate_for_instance("m", "p", networks=["vl_9"])
    vlan.add_network_to_project("q")
    rev = revision(engine)
    with pytest.raises(exception.NetworkNotUsable, match="belongs to project q; project p may use"):
        vlan.allocate_for_instance("m", "p", networks=["vl_1"])
    assert revision(engine) == rev
    with pytest.raises(exception.InstanceNotFound):
        vlan.get_allocation("m")


def test_flat_modes_use_shared_networks_by_label(make_manager):
    mgr = make_manager("flatdhcp")
    mgr.create_networks("a", "10.22.0.0/24", bridge="bra")
    mgr.create_networks("b", "10.22.1.0/24", bridge="brb")
    mgr.create_networks("own", "10.22.2.0/24", bridge="bro", project_id="other")
    alloc = mgr.allocate_for_instance("m", "p", networks=["b", "a"])
    assert [v["cidr"] for v in alloc["vifs"]] == ["10.22.1.0/24", "10.22.0.0/24"]
    with pytest.raises(exception.NetworkNotUsable, match="belongs to project other"):
        mgr.add_fixed_ip_to_instance("m", "own")
    mgr.create_networks("a", "10.22.3.0/24", bridge="brx")
    with pytest.raises(exception.NetworkLabelAmbiguous, match="names 2 networks .*give the network's CIDR"):
        mgr.add_fixed_ip_to_instance("m", "a")


def test_add_and_remove_fixed_ip(vlan, engine):
    vlan.add_network_to_project("p")
    alloc = vlan.add_fixed_ip_to_instance("first", "vl_1")
    assert [v["label"] for v in alloc["vifs"]] == ["vl_0", "vl_1"]
    second = alloc["vifs"][1]
    rev = revision(engine)
    with pytest.raises(exception.InstanceHasVifOnNetwork, match=f"already has a VIF on network vl_1 .*"
                                                                f"{second['address']}"):
        vlan.add_fixed_ip_to_instance("first", "vl_1")
    with pytest.raises(exception.FixedIpNotOfInstance, match="10.20.0.99 is not allocated to instance "
                                                             "first; its addresses are: 10.20.0.3, 10.20.0.67"):
        vlan.remove_fixed_ip_from_instance("first", "10.20.0.99")
    assert revision(engine) == rev
    done = vlan.remove_fixed_ip_from_instance("first", second["address"])
    assert done["removed"]["port_name"] == second["port_name"]
    assert [v["label"] for v in done["allocation"]["vifs"]] == ["vl_0"]
    ip = fixed(engine, second["address"])
    # VLAN manager (DHCP): deallocated, associated until the lease is released or times out
    assert (ip.allocated, ip.virtual_interface_id, ip.instance_uuid is not None) == (False, None, True)
    assert second["mac"] not in {v.mac for v in api.load_views(engine).vifs}
    rev = revision(engine)
    with pytest.raises(exception.LastVifOfInstance, match="last VIF of instance first; .*sdn instance delete"):
        vlan.remove_fixed_ip_from_instance("first", alloc["address"])
    assert revision(engine) == rev
    # the address comes back after release, and a VIF on vl_1 can be added again (a new MAC)
    again = vlan.add_fixed_ip_to_instance("first", "vl_1")["vifs"][1]
    assert again["mac"] != second["mac"] and again["address"] != second["address"]


def test_remove_fixed_ip_releases_its_floating_ips(make_manager, engine):
    mgr = make_manager("flatdhcp", force_dhcp_release=True)
    mgr.create_networks("a", "10.23.0.0/24", bridge="bra")
    mgr.create_networks("b", "10.23.1.0/24", bridge="brb")
    alloc = mgr.allocate_for_instance("m", "p", networks=["a", "b"])
    fips = FloatingIps(engine, mgr.conf)
    fips.create("172.31.0.8/30")
    fip = fips.allocate("p")
    fips.associate(fip, "m", "p", fixed_address=alloc["vifs"][1]["address"])
    mgr.remove_fixed_ip_from_instance("m", alloc["vifs"][1]["address"])
    row = next(r for r in fips.list() if r["address"] == fip)
    assert (row["fixed_ip"], row["project_id"]) == (None, "p")     # disassociated, still the project's
    ip = fixed(engine, alloc["vifs"][1]["address"])
    assert (ip.allocated, ip.instance_uuid, ip.leased) == (False, None, False)   # force_dhcp_release


def test_port_security_applies_to_every_vif(vlan, engine):
    vlan.add_network_to_project("p")
    vlan.add_fixed_ip_to_instance("first", "vl_1")
    vlan.set_port_security("first", False)
    assert [v.port_security for v in api.load_views(engine).vifs] == [False, False]


def test_list_leases(vlan, engine):
    vlan.add_network_to_project("p")
    alloc = vlan.add_fixed_ip_to_instance("first", "vl_1")
    a, b = alloc["vifs"]
    assert vlan.list_leases() == []
    vlan.lease_fixed_ip(a["address"], a["mac"])
    vlan.lease_fixed_ip(b["address"], b["mac"])
    rows = vlan.list_leases()
    assert [(r["address"], r["mac"], r["instance"]) for r in rows] == \
        [(a["address"], a["mac"], "first"), (b["address"], b["mac"], "first")]
    end = datetime.datetime.fromisoformat(rows[0]["lease_end"])
    assert abs((end - datetime.datetime.utcnow()).total_seconds() - vlan.conf.dhcp_lease_time) < 30
    assert [r["address"] for r in vlan.list_leases("vl_1")] == [b["address"]]
    vlan.remove_fixed_ip_from_instance("first", b["address"])
    assert [r["address"] for r in vlan.list_leases()] == [a["address"]]   # no VIF holds it any more
    with pytest.raises(exception.NetworkNotFound):
        vlan.list_leases("nope")


def test_cli_verbs(tmp_path, db_url, capsys):
    from tests.unit.conftest import write_conf
    conf = write_conf(tmp_path / "c.conf", DEFAULT={"network_manager": "vlan"}, database={"connection": db_url})

    def sdn(*argv):
        code = cli.main(["--config-file", conf, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    assert sdn("db", "sync")[0] == 0
    assert sdn("network", "create", "--label", "vl", "--fixed_range_v4", "10.24.0.0/24",
               "--num_networks", "2", "--network_size", "128", "--vlan", "200")[0] == 0
    code, out, _ = sdn("network", "add-to-project", "--project", "p")
    assert code == 0 and "vl_0 10.24.0.0/25 vlan 200" in out and "project p" in out
    code, out, _ = sdn("network", "add-to-project", "--project", "p")
    assert code == 0 and "vlan 201" in out
    code, out, err = sdn("network", "add-to-project", "--project", "p")
    assert code == 1 and err.startswith("sdn: error: no unassigned network left for project p")
    code, out, _ = sdn("instance", "launch", "m", "--project", "p", "--network", "vl_0", "--network", "vl_1")
    assert code == 0 and "10.24.0.3 on 10.24.0.0/25 vlan 200" in out and "10.24.0.131 on 10.24.0.128/25 vlan 201" in out
    code, _, err = sdn("instance", "remove-fixed-ip", "m", "--address", "10.24.0.9")
    assert code == 1 and "its addresses are: 10.24.0.3, 10.24.0.131" in err and err.count("\n") == 1
    code, out, _ = sdn("instance", "remove-fixed-ip", "m", "--address", "10.24.0.131")
    assert code == 0 and out.startswith("removed 10.24.0.131")
    code, out, _ = sdn("instance", "add-fixed-ip", "m", "--network", "vl_1")
    assert code == 0 and "10.24.0.132 on 10.24.0.128/25" in out
    code, out, _ = sdn("dhcp", "leases")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["network", "IP", "address"]
    code, out, _ = sdn("dhcp", "leases", "--network", "vl_1", "--json")
    assert code == 0 and out.strip() == "[]"
