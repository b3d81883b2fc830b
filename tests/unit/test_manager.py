"""Manager semantics against a real (temporary) SQLite database."""

import datetime
import re

import pytest
from sqlalchemy import func, select

from sdn import exception, manager
from sdn.db import api, models

pytestmark = pytest.mark.both_databases  # every test using the database runs on SQLite and PostgreSQL


def count(engine, model):
    with api.read_transaction(engine) as s:
        return s.scalar(select(func.count()).select_from(model))


def fixed(engine, address):
    with api.read_transaction(engine) as s:
        return s.scalar(select(models.FixedIp).where(models.FixedIp.address == address))


def reserved(engine, network_id):
    with api.read_transaction(engine) as s:
        return [ip.address for ip in s.scalars(select(models.FixedIp).where(
            models.FixedIp.network_id == network_id, models.FixedIp.reserved.is_(True)).order_by(models.FixedIp.id))]


# -- carving -----------------------------------------------------------------------------------

def test_flat_carving_and_reserved(make_manager, engine):
    mgr = make_manager("flat")
    nets = mgr.create_networks("pub", "10.0.0.0/24", num_networks=2, network_size=100)
    assert [n["cidr"] for n in nets] == ["10.0.0.0/25", "10.0.0.128/25"]  # 100 rounds up to 128
    assert [n["label"] for n in nets] == ["pub_0", "pub_1"]
    n = nets[1]
    assert (n["netmask"], n["gateway"], n["broadcast"], n["dhcp_start"]) == \
        ("255.255.255.128", "10.0.0.129", "10.0.0.255", "10.0.0.130")
    assert n["vlan"] is None and n["dns1"] == "8.8.4.4"
    assert reserved(engine, n["id"]) == ["10.0.0.128", "10.0.0.129", "10.0.0.255"]
    assert count(engine, models.FixedIp) == 256


def test_ipv6_subnets_are_not_reused(make_manager):
    mgr = make_manager("flatdhcp", use_ipv6=True, fixed_range_v6="fd00:1::/48")
    mgr.create_networks("a", "10.0.0.0/24")
    mgr.create_networks("b", "10.0.1.0/24", num_networks=2, network_size=128)
    assert [n.cidr_v6 for n in _networks(mgr.engine)] == ["fd00:1::/64", "fd00:1:0:1::/64", "fd00:1:0:2::/64"]


def _networks(engine):
    with api.read_transaction(engine) as s:
        return list(s.scalars(select(models.Network).order_by(models.Network.id)))


def test_size_defaults_to_what_the_range_holds(make_manager):
    nets = make_manager("flat").create_networks("small", "192.168.5.0/26")
    assert [n["cidr"] for n in nets] == ["192.168.5.0/26"]


def test_vlan_carving_vpn_and_reserved(make_manager, engine):
    mgr = make_manager("vlan", cnt_vpn_clients=2, my_ip="192.0.2.10")
    nets = mgr.create_networks("prj", "10.20.0.0/24", num_networks=2, network_size=64, vlan_start=200,
                               vpn_start=2000)
    a, b = nets
    assert (a["vlan"], a["bridge"], b["vlan"], b["bridge"]) == (200, "br200", 201, "br201")
    assert (a["vpn_private_address"], a["dhcp_start"], a["gateway"]) == ("10.20.0.2", "10.20.0.3", "10.20.0.1")
    assert (a["vpn_public_address"], a["vpn_public_port"], b["vpn_public_port"]) == ("192.0.2.10", 2000, 2001)
    assert a["project_id"] is None
    # bottom: network, gateway, VPN; top: broadcast + cnt_vpn_clients
    assert reserved(engine, b["id"]) == ["10.20.0.64", "10.20.0.65", "10.20.0.66",
                                         "10.20.0.125", "10.20.0.126", "10.20.0.127"]


@pytest.mark.parametrize("kwargs, error, text", [
    ({"vlan_start": 4094, "num_networks": 2}, exception.VlanOutOfRange, "up to 4095; start at 4093 at most"),
    ({"vlan_start": 4000, "num_networks": 96}, exception.VlanOutOfRange, "96 networks from VLAN 4000"),
    ({"vlan_start": 4095}, exception.VlanOutOfRange, "1-4094"),
    ({"vlan_start": 0}, exception.VlanOutOfRange, "1-4094"),
    ({"cidr": "10.0.0.0/33"}, exception.InvalidCidr, "IPv4"),
    ({"cidr": "fd00::/64"}, exception.InvalidCidr, "only IPv4"),
    ({"cidr": "10.0.0.5/24"}, exception.InvalidCidr, "did you mean 10.0.0.0/24"),
    ({"cidr": "10.0.0.0/28", "num_networks": 2, "network_size": 16}, exception.Invalid, "cannot hold 2"),
    ({"network_size": 2}, exception.Invalid, "from 4 to 65536"),
    ({"network_size": 0}, exception.Invalid, "network_size must be from 4 to 65536, not 0"),
    ({"cidr": ""}, exception.InvalidCidr, "empty"),
    ({"cidr": "10.0.0.0/8", "network_size": 2 ** 24}, exception.Invalid, "from 4 to 65536, not 16777216"),
    ({"cidr": "10.0.0.0/8", "num_networks": 1024}, exception.Invalid, "at most 65536"),
    ({"dns1": "dns.example"}, exception.Invalid, "DNS"),
])
def test_create_rejects_bad_input_without_writing(make_manager, engine, kwargs, error, text):
    args = {"cidr": "10.9.0.0/24", **kwargs}
    rev = api.current_revision(engine)
    with pytest.raises(error) as err:
        make_manager("vlan").create_networks("x", **args)
    assert text in str(err.value)
    assert count(engine, models.Network) == 0 and api.current_revision(engine) == rev


def test_overlap_and_vlan_reuse_refused_atomically(make_manager, engine):
    mgr = make_manager("vlan")
    mgr.create_networks("a", "10.0.0.0/24", vlan_start=100)
    with pytest.raises(exception.CidrConflict, match="10.0.0.0/24"):
        mgr.create_networks("b", "10.0.0.0/16", network_size=256)
    # first subnet is fine, second collides: neither may be created
    with pytest.raises(exception.VlanInUse, match="VLAN 100"):
        mgr.create_networks("c", "10.1.0.0/23", num_networks=2, network_size=256, vlan_start=99)
    assert count(engine, models.Network) == 1 and count(engine, models.FixedIp) == 256


# -- allocation ----------------------------------------------------------------------------------

def test_vlan_network_assigned_to_project_at_first_instance(make_manager, engine):
    mgr = make_manager("vlan")
    mgr.create_networks("p", "10.0.0.0/23", num_networks=2, network_size=256)
    a1 = mgr.allocate_for_instance("a1", "alpha")
    b1 = mgr.allocate_for_instance("b1", "beta")
    a2 = mgr.allocate_for_instance("a2", "alpha")
    assert (a1["vlan"], a1["address"], a2["address"]) == (100, "10.0.0.3", "10.0.0.4")  # .2 is the VPN
    assert (b1["vlan"], b1["address"], b1["gateway"]) == (101, "10.0.1.3", "10.0.1.1")
    assert {n["vlan"]: n["project_id"] for n in mgr.list_networks()} == {100: "alpha", 101: "beta"}
    rev = api.current_revision(engine)
    with pytest.raises(exception.NoMoreNetworks, match="gamma"):
        mgr.allocate_for_instance("g1", "gamma")
    assert count(engine, models.Instance) == 3 and api.current_revision(engine) == rev


def test_allocation_shape_and_mac(make_manager):
    mgr = make_manager("flatdhcp")
    mgr.create_networks("f", "10.5.0.0/24")
    alloc = mgr.allocate_for_instance("Web_1", "p", host="node7")
    assert alloc["address"] == "10.5.0.2" and alloc["host"] == "node7" and alloc["vlan"] is None
    assert re.fullmatch(r"fa:16:3e:[0-7][0-9a-f]:[0-9a-f]{2}:[0-9a-f]{2}", alloc["mac"])
    assert alloc["port_name"] == "tap" + alloc["vif_uuid"][:11]
    assert mgr.allocate_for_instance("Web_1", "p") == alloc  # idempotent
    with pytest.raises(exception.InstanceProjectMismatch):
        mgr.allocate_for_instance("Web_1", "other")


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 64, "dollar$"])
def test_bad_instance_names(make_manager, name):
    mgr = make_manager("flat")
    mgr.create_networks("f", "10.5.0.0/24")
    with pytest.raises(exception.InvalidInstanceName):
        mgr.allocate_for_instance(name, "p")


def test_no_networks_and_exhaustion_leave_nothing_behind(make_manager, engine):
    mgr = make_manager("flat")
    with pytest.raises(exception.NoNetworks):
        mgr.allocate_for_instance("a", "p")
    mgr.create_networks("tiny", "10.7.0.0/29")  # 8 addresses: .0 .1 .7 reserved
    got = [mgr.allocate_for_instance(f"vm{i}", "p")["address"] for i in range(5)]
    assert got == [f"10.7.0.{i}" for i in range(2, 7)]
    rev = api.current_revision(engine)
    with pytest.raises(exception.NoMoreFixedIps, match="10.7.0.0/29"):
        mgr.allocate_for_instance("vm5", "p")
    assert count(engine, models.Instance) == 5 and count(engine, models.VirtualInterface) == 5
    assert api.current_revision(engine) == rev


def test_mac_collisions_exhaust_attempts_without_partial_write(make_manager, engine, monkeypatch):
    mgr = make_manager("flat", create_unique_mac_address_attempts=3)
    mgr.create_networks("f", "10.5.0.0/24")
    calls = []
    monkeypatch.setattr(manager, "generate_mac", lambda: calls.append(1) or "fa:16:3e:00:00:01")
    mgr.allocate_for_instance("a", "p")
    with pytest.raises(exception.VirtualInterfaceMacAddressException, match="3 attempts"):
        mgr.allocate_for_instance("b", "p")
    assert len(calls) == 4
    assert count(engine, models.Instance) == 1
    assert fixed(engine, "10.5.0.3").instance_uuid is None


# -- deallocation, leases, timeout --------------------------------------------------------------

def test_flat_deallocate_disassociates_immediately(make_manager, engine):
    mgr = make_manager("flat")
    mgr.create_networks("f", "10.5.0.0/24")
    mgr.allocate_for_instance("a", "p")
    mgr.deallocate_for_instance("a")
    ip = fixed(engine, "10.5.0.2")
    assert (ip.allocated, ip.instance_uuid, ip.virtual_interface_id) == (False, None, None)
    assert count(engine, models.VirtualInterface) == 0 and count(engine, models.Instance) == 0
    assert mgr.allocate_for_instance("b", "p")["address"] == "10.5.0.2"
    with pytest.raises(exception.InstanceNotFound, match="'sdn fixed list'"):
        mgr.deallocate_for_instance("a")


def test_dhcp_keeps_association_until_release(make_manager, engine):
    mgr = make_manager("flatdhcp")
    mgr.create_networks("f", "10.5.0.0/24")
    a = mgr.allocate_for_instance("a", "p")
    mgr.lease_fixed_ip("10.5.0.2", a["mac"])
    assert fixed(engine, "10.5.0.2").leased
    mgr.deallocate_for_instance("a")
    assert fixed(engine, "10.5.0.2").instance_uuid == a["instance_uuid"]
    assert mgr.allocate_for_instance("b", "p")["address"] == "10.5.0.3"
    # a lease still held is not timed out
    assert mgr.timeout_fixed_ips(models.utcnow() + datetime.timedelta(hours=1)) == 0
    mgr.release_fixed_ip("10.5.0.2", a["mac"])
    ip = fixed(engine, "10.5.0.2")
    assert (ip.leased, ip.instance_uuid) == (False, None)
    assert mgr.allocate_for_instance("c", "p")["address"] == "10.5.0.2"


def test_release_of_allocated_ip_keeps_association(make_manager, engine):
    mgr = make_manager("flatdhcp")
    mgr.create_networks("f", "10.5.0.0/24")
    a = mgr.allocate_for_instance("a", "p")
    mgr.lease_fixed_ip("10.5.0.2")
    mgr.release_fixed_ip("10.5.0.2")
    ip = fixed(engine, "10.5.0.2")
    assert (ip.allocated, ip.leased, ip.instance_uuid) == (True, False, a["instance_uuid"])


def test_lease_errors(make_manager):
    mgr = make_manager("flatdhcp")
    mgr.create_networks("f", "10.5.0.0/24")
    mgr.allocate_for_instance("a", "p")
    with pytest.raises(exception.FixedIpNotFound):
        mgr.lease_fixed_ip("10.99.0.1")
    with pytest.raises(exception.FixedIpNotAssociated, match="leased"):
        mgr.lease_fixed_ip("10.5.0.9")
    with pytest.raises(exception.FixedIpMacMismatch):
        mgr.lease_fixed_ip("10.5.0.2", "fa:16:3e:7f:ff:ff")


def test_disassociate_timeout(make_manager, engine):
    mgr = make_manager("vlan", fixed_ip_disassociate_timeout=600)
    mgr.create_networks("v", "10.5.0.0/24")
    mgr.allocate_for_instance("a", "p")
    mgr.deallocate_for_instance("a")
    now = models.utcnow()
    assert mgr.timeout_fixed_ips(now + datetime.timedelta(seconds=590)) == 0
    assert fixed(engine, "10.5.0.3").instance_uuid is not None
    assert mgr.timeout_fixed_ips(now + datetime.timedelta(seconds=601)) == 1
    assert fixed(engine, "10.5.0.3").instance_uuid is None


def test_force_dhcp_release(make_manager, engine):
    mgr = make_manager("flatdhcp", force_dhcp_release=True)
    mgr.create_networks("f", "10.5.0.0/24")
    mgr.allocate_for_instance("a", "p")
    mgr.lease_fixed_ip("10.5.0.2")
    mgr.deallocate_for_instance("a")
    ip = fixed(engine, "10.5.0.2")
    assert (ip.leased, ip.instance_uuid) == (False, None)


@pytest.mark.parametrize("kind", ["flat", "vlan"])
def test_delete_network(make_manager, engine, kind):
    mgr = make_manager(kind)
    mgr.create_networks("f", "10.5.0.0/24")
    mgr.allocate_for_instance("a", "p")
    with pytest.raises(exception.NetworkInUse, match="1 allocated"):
        mgr.delete_network("10.5.0.0/24")
    with pytest.raises(exception.NetworkNotFound, match="10.6.0.0/24"):
        mgr.delete_network("10.6.0.0/24")
    mgr.deallocate_for_instance("a")
    assert mgr.delete_network("10.5.0.0/24")["label"] == "f"
    assert count(engine, models.Network) == 0 and count(engine, models.FixedIp) == 0


# -- the view the controller reads ----------------------------------------------------------------

def test_load_views(make_manager, engine):
    mgr = make_manager("vlan")
    mgr.create_networks("v", "10.5.0.0/24", dns2="192.0.2.53")
    a = mgr.allocate_for_instance("web_1", "p")
    with api.transaction(engine) as s:
        vif = s.scalar(select(models.VirtualInterface))
        s.add(models.AllowedAddressPair(vif_id=vif.id, mac="fa:16:3e:00:00:99", ip_cidr="10.5.0.200/32"))
    sv = api.load_views(engine, domain="example.org", lease_time=300, mtu=1400)
    assert sv.revision == api.current_revision(engine) == 3
    net = sv.networks[a["network_id"]]
    assert (net.cidr, net.vlan, net.project_id, net.dns, net.dhcp_server) == \
        ("10.5.0.0/24", 100, "p", ("8.8.4.4", "192.0.2.53"), "10.5.0.1")
    assert (net.domain, net.lease_time, net.mtu) == ("example.org", 300, 1400)
    (v,) = sv.vifs
    assert (v.uuid, v.mac, v.addresses, v.hostname, v.instance, v.project_id, v.port_security) == \
        (a["vif_uuid"], a["mac"], ("10.5.0.3",), "web-1", "web_1", "p", True)
    assert v.allowed_address_pairs == (("fa:16:3e:00:00:99", "10.5.0.200/32"),)
    assert sv.vif_by_port_name(a["port_name"]) == v
    mgr.deallocate_for_instance("web_1")
    assert api.load_views(engine).vifs == ()


def test_vlan_4094_with_one_network_is_accepted(make_manager):
    (net,) = make_manager("vlan").create_networks("last", cidr="10.9.0.0/24", vlan_start=4094, num_networks=1)
    assert (net["vlan"], net["bridge"]) == (4094, "br4094")


def test_names_sharing_a_hostname_are_refused(make_manager, engine):
    mgr = make_manager("flat")
    mgr.create_networks("f", cidr="10.0.0.0/24")
    mgr.allocate_for_instance("a", "p1")
    rev = api.current_revision(engine)
    for other in ("a___", "A", "a.", "a-"):
        with pytest.raises(exception.HostnameInUse, match="gives hostname a, which instance a already has"):
            mgr.allocate_for_instance(other, "p1")
    assert count(engine, models.Instance) == 1 and api.current_revision(engine) == rev


def test_network_over_floating_range_is_refused_naming_both(make_manager, engine):
    from sdn.floating import FloatingIps

    mgr = make_manager("flat")
    FloatingIps(engine, mgr.conf).create("10.0.1.16/28", pool="public")
    rev = api.current_revision(engine)
    with pytest.raises(exception.FloatingRangeConflict) as err:
        mgr.create_networks("f", cidr="10.0.0.0/23", num_networks=2, network_size=256)
    assert "network 10.0.1.0/24 overlaps floating IPs 10.0.1.17-10.0.1.30 (pool public, 14 addresses)" \
        in str(err.value)
    assert count(engine, models.Network) == 0 and api.current_revision(engine) == rev
    mgr.create_networks("f", cidr="10.0.0.0/24")  # beside the floating range: accepted


def test_instance_name_with_a_trailing_newline_is_refused(make_manager):
    """A newline would split dnsmasq's hosts line and DHCP option 12 ('$' matches before it)."""
    mgr = make_manager("flatdhcp")
    mgr.create_networks("f", "10.7.0.0/24")
    with pytest.raises(exception.SdnError, match="invalid instance name"):
        mgr.allocate_for_instance("web\n", "p")
    assert mgr.allocate_for_instance("web", "p")["address"]   # positive control
