"""IPv6 state (issue 12): config options, migration 0004, network create's /64s, the views the
backends read (NetworkView IPv6 fields, VifView.addresses_v6 derived from the MAC)."""

from importlib import resources

import pytest
from sqlalchemy import create_engine, text

from sdn import ipv6
from sdn.db import api
from sdn.state import StateSource
from sdn.view import NetworkView


def test_load_views_fills_ipv6_of_networks_and_vifs(make_manager, engine):
    mgr = make_manager("vlan", use_ipv6=True, fixed_range_v6="fd00:1::/48",
                       dns_v6="2001:db8::53", ipv6_ra_interval=30)
    mgr.create_networks("v", "10.5.0.0/24")
    a = mgr.allocate_for_instance("web", "alpha")
    sv = StateSource.from_conf(mgr.conf).load()
    net = sv.networks[a["network_id"]]
    assert (net.cidr_v6, net.gateway_v6, net.ipv6_ra_mode, net.ipv6_address_mode, net.dns_v6,
            net.ra_interval) == ("fd00:1::/64", "fd00:1::1", "slaac", "slaac", ("2001:db8::53",), 30)
    (vif,) = sv.vifs
    assert vif.addresses_v6 == (ipv6.to_global("fd00:1::/64", a["mac"], "alpha"),)
    assert vif.addresses_v6[0].startswith("fd00:1::") and vif.addresses_v6[0].endswith(
        ipv6.link_local(a["mac"]).removeprefix("fe80::"))


def test_load_views_account_identifier_backend(make_manager, engine):
    mgr = make_manager("vlan", use_ipv6=True)
    mgr.create_networks("v", "10.5.0.0/24")
    a = mgr.allocate_for_instance("web", "alpha")
    (vif,) = api.load_views(engine, ipv6_backend="account_identifier").vifs
    assert vif.addresses_v6 == (ipv6.to_global("fd00::/64", a["mac"], "alpha", "account_identifier"),)


def test_network_without_ipv6_has_empty_fields(make_manager, engine):
    mgr = make_manager("vlan")
    mgr.create_networks("v", "10.5.0.0/24")
    a = mgr.allocate_for_instance("web", "alpha")
    sv = api.load_views(engine)
    net = sv.networks[a["network_id"]]
    assert (net.cidr_v6, net.gateway_v6, net.ipv6_ra_mode, net.dns_v6) == (None, None, None, ())
    assert sv.vifs[0].addresses_v6 == ()


def test_gateway_lla_is_eui64_of_gateway_mac():
    net = NetworkView(id=1, label="n", cidr="10.0.0.0/24", netmask="255.255.255.0",
                      gateway="10.0.0.1", broadcast="10.0.0.255")
    assert net.gateway_mac == "0a:58:0a:00:00:01"
    assert net.gateway_lla == "fe80::858:aff:fe00:1"


def _alembic(url):
    from alembic.config import Config
    cfg = Config(str(resources.files("sdn.db") / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def test_migration_0004_fills_existing_v6_networks_and_downgrades(tmp_path):
    """A 0003 database with a network that has a cidr_v6: after upgrade it has gateway ::1,
    /64 and slaac (what network create gives); downgrade to 0003 drops the columns, and
    upgrading again works."""
    from alembic import command
    url = f"sqlite:///{tmp_path}/old.sqlite"
    cfg = _alembic(url)
    command.upgrade(cfg, "0003")
    eng = create_engine(url)
    with eng.begin() as conn:
        for i, v6 in ((1, "fd00:0:0:7::/64"), (2, None)):
            conn.execute(text("INSERT INTO networks (id, label, cidr, netmask, gateway, broadcast, cidr_v6, "
                              "created_at) VALUES (:i, :l, :c, '255.255.255.0', :g, :b, :v6, '2026-01-01')"),
                         dict(i=i, l=f"n{i}", c=f"10.0.{i}.0/24", g=f"10.0.{i}.1", b=f"10.0.{i}.255", v6=v6))
    command.upgrade(cfg, "0004")
    with eng.begin() as conn:
        rows = conn.execute(text("SELECT id, gateway_v6, netmask_v6, ipv6_ra_mode, ipv6_address_mode, dns_v6 "
                                 "FROM networks ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [(1, "fd00:0:0:7::1", "64", "slaac", "slaac", None),
                                        (2, None, None, None, None, None)]
    command.downgrade(cfg, "0003")
    with eng.begin() as conn:
        columns = {r[1] for r in conn.execute(text("PRAGMA table_info(networks)"))}
        assert "cidr_v6" in columns and not columns & {"gateway_v6", "netmask_v6", "ipv6_ra_mode",
                                                       "ipv6_address_mode", "dns_v6"}
        assert conn.execute(text("SELECT cidr_v6 FROM networks WHERE id = 1")).scalar() == "fd00:0:0:7::/64"
    command.upgrade(cfg, "head")
    eng.dispose()


@pytest.mark.parametrize("option, value, message", [
    ("dns_v6", "10.0.0.1", "expected comma-separated IPv6 addresses"),
    ("gateway_v6", "fd00::/64", "expected an IPv6 address"),
    ("public_ip_v6", "2001:db8::1", "expected an IPv6 ADDRESS/PREFIXLEN"),
    ("external_gateway_v6", "192.0.2.1", "expected an IPv6 address"),
    ("ipv6_backend", "eui64", "rfc2462, account_identifier"),
    ("ipv6_address_mode", "dhcp", "slaac, dhcpv6-stateless, dhcpv6-stateful"),
    ("ipv6_ra_interval", "3", "4..1800"),
])
def test_bad_ipv6_config_named(make_conf, option, value, message):
    from sdn import exception
    with pytest.raises(exception.ConfigError, match=f"{option}.*{message}"):
        make_conf(**{option: value})


def test_ipv6_config_normalised(make_conf):
    conf = make_conf(dns_v6="2001:DB8:0::53, fd00::1", public_ip_v6="2001:db8::0010/64",
                     gateway_v6="fd00:0::1")
    assert conf.dns_v6 == ["2001:db8::53", "fd00::1"]
    assert conf.public_ip_v6 == "2001:db8::10/64" and conf.gateway_v6 == "fd00::1"


# -- network create: one /64 per network ------------------------------------------------------

def _v6(nets):
    return [(n["cidr_v6"], n["gateway_v6"], n["ipv6_ra_mode"], n["ipv6_address_mode"], n["dns_v6"])
            for n in nets]


def test_create_carves_consecutive_free_64s_never_overlapping(make_manager):
    mgr = make_manager("vlan", use_ipv6=True, fixed_range_v6="fd00:5::/62")
    assert _v6(mgr.create_networks("a", "10.1.0.0/23", num_networks=2, network_size=256)) == [
        ("fd00:5::/64", "fd00:5::1", "slaac", "slaac", []),
        ("fd00:5:0:1::/64", "fd00:5:0:1::1", "slaac", "slaac", [])]
    # an explicit /64 inside the range is taken; the next carve skips it
    (b,) = mgr.create_networks("b", "10.2.0.0/24", vlan_start=200, cidr_v6="fd00:5:0:3::/64")
    assert b["cidr_v6"] == "fd00:5:0:3::/64"
    (c,) = mgr.create_networks("c", "10.3.0.0/24", vlan_start=300)
    assert c["cidr_v6"] == "fd00:5:0:2::/64"
    cidrs = [n["cidr_v6"] for n in mgr.list_networks()]
    assert len(set(cidrs)) == 4


def test_full_range_refused_naming_users_and_state_unchanged(make_manager, engine):
    mgr = make_manager("vlan", use_ipv6=True, fixed_range_v6="fd00:5::/63")
    mgr.create_networks("a", "10.1.0.0/24")
    before = api.current_revision(engine)
    from sdn import exception
    with pytest.raises(exception.Ipv6RangeFull, match=r"fd00:5::/63 has 1 free /64s, 2 needed "
                                                      r"\(used by network a \(fd00:5::/64\)\)"):
        mgr.create_networks("b", "10.2.0.0/23", num_networks=2, network_size=256, vlan_start=200)
    assert api.current_revision(engine) == before and len(mgr.list_networks()) == 1


def test_public_ip_v6_prefix_is_never_carved(make_manager):
    mgr = make_manager("vlan", use_ipv6=True, fixed_range_v6="fd00:5::/48", public_ip_v6="fd00:5::10/64")
    (n,) = mgr.create_networks("a", "10.1.0.0/24")
    assert n["cidr_v6"] == "fd00:5:0:1::/64"


def test_no_ipv6_without_use_ipv6_or_range(make_manager):
    (n,) = make_manager("flatdhcp").create_networks("a", "10.1.0.0/24", bridge="br100")
    assert _v6([n]) == [(None, None, None, None, [])]


def test_explicit_options_and_config_defaults(make_manager):
    mgr = make_manager("flatdhcp", ipv6_address_mode="dhcpv6-stateless", dns_v6="2001:db8::53",
                       gateway_v6="fd00:7::fe")
    (a,) = mgr.create_networks("a", "10.1.0.0/24", bridge="br1", cidr_v6="fd00:7::/64")
    assert _v6([a]) == [("fd00:7::/64", "fd00:7::fe", "dhcpv6-stateless", "dhcpv6-stateless", ["2001:db8::53"])]
    (b,) = mgr.create_networks("b", "10.2.0.0/24", bridge="br2", cidr_v6="fd00:8::/64", gateway_v6="fd00:8::1:2",
                               ipv6_address_mode="dhcpv6-stateful",
                               dns_v6=["2001:DB8::1", "2001:db8::2", "2001:db8::1"])
    assert _v6([b]) == [("fd00:8::/64", "fd00:8::1:2", "dhcpv6-stateful", "dhcpv6-stateful",
                         ["2001:db8::1", "2001:db8::2"])]
    (c,) = mgr.create_networks("c", "10.3.0.0/24", bridge="br3", cidr_v6="fd00:9::/64", ipv6_ra_mode="slaac",
                               gateway_v6="fd00:9::1")
    assert _v6([c])[0][1:4] == ("fd00:9::1", "slaac", "slaac")


@pytest.mark.parametrize("kwargs, message", [
    (dict(gateway_v6="fd00::1"), "--gateway-v6 need IPv6 on the new networks: give --fixed-range-v6"),
    (dict(dns_v6=["fd00::53"], ipv6_ra_mode="slaac"), "--ipv6-ra-mode, --dns-v6 need IPv6"),
    (dict(cidr_v6="fd00::/80"), "must be a /64 or shorter"),
    (dict(cidr_v6="fd00::1/64"), "host bits are set; did you mean fd00::/64"),
    (dict(cidr_v6="10.0.0.0/8"), "must be an IPv6 CIDR"),
    (dict(cidr_v6="fd00::/64", gateway_v6="fd01::1"), "not a host address of network n's /64 fd00::/64"),
    (dict(cidr_v6="fd00::/64", gateway_v6="fd00::"), "not a host address"),
    (dict(cidr_v6="fd00::/64", gateway_v6="10.0.0.1"), "invalid IPv6 gateway"),
    (dict(cidr_v6="fd00::/64", ipv6_ra_mode="dhcp"), "allowed values are slaac, dhcpv6-stateless, dhcpv6-stateful"),
    (dict(cidr_v6="fd00::/64", ipv6_ra_mode="slaac", ipv6_address_mode="dhcpv6-stateful"), "differ"),
    (dict(cidr_v6="fd00::/64", dns_v6=["8.8.8.8"]), "invalid IPv6 DNS server"),
    (dict(cidr_v6="fd00::/64", dns_v6=[f"fd00::{i}" for i in range(1, 7)]), "at most 5"),
])
def test_bad_ipv6_create_options_refused_and_nothing_written(make_manager, engine, kwargs, message):
    from sdn import exception
    mgr = make_manager("flatdhcp")
    before = api.current_revision(engine)
    with pytest.raises(exception.SdnError, match=message):
        mgr.create_networks("n", "10.1.0.0/24", bridge="br1", **kwargs)
    assert api.current_revision(engine) == before and mgr.list_networks() == []


def test_account_identifier_needs_dhcpv6_stateful(make_manager):
    from sdn import exception
    mgr = make_manager("flatdhcp", use_ipv6=True, ipv6_backend="account_identifier")
    for mode in ("slaac", "dhcpv6-stateless"):
        with pytest.raises(exception.Invalid, match="use --ipv6-address-mode dhcpv6-stateful"):
            mgr.create_networks("n", "10.1.0.0/24", bridge="br1", ipv6_address_mode=mode)
    (n,) = mgr.create_networks("n", "10.1.0.0/24", bridge="br1", ipv6_address_mode="dhcpv6-stateful")
    assert n["ipv6_ra_mode"] == "dhcpv6-stateful"
    a = mgr.allocate_for_instance("vm", "alpha")
    assert a["address_v6"] == ipv6.to_global("fd00::/64", a["mac"], "alpha", "account_identifier")


# -- what operators see --------------------------------------------------------------------------

def test_allocation_and_fixed_list_show_derived_address(make_manager):
    mgr = make_manager("flatdhcp", use_ipv6=True)
    mgr.create_networks("a", "10.1.0.0/23", num_networks=2, network_size=256, bridge="br1")
    a = mgr.allocate_for_instance("vm", "alpha")
    b = mgr.add_fixed_ip_to_instance("vm", "a_1")
    assert a["address_v6"] == ipv6.to_global("fd00::/64", a["mac"], "alpha")
    assert (a["cidr_v6"], a["gateway_v6"]) == ("fd00::/64", "fd00::1")
    second = b["vifs"][1]
    assert second["address_v6"] == ipv6.to_global("fd00:0:0:1::/64", second["mac"], "alpha")
    rows = {r["address"]: r["address_v6"] for r in mgr.list_fixed_ips() if r["allocated"]}
    assert rows == {a["address"]: a["address_v6"], second["address"]: second["address_v6"]}
    assert {r["address_v6"] for r in mgr.list_fixed_ips() if not r["allocated"]} == {None}


def test_cli_create_list_show_fixed(tmp_path, capsys):
    import json
    from sdn import cli
    from tests.unit.conftest import write_conf
    conf = write_conf(tmp_path / "sdn.conf", DEFAULT={"network_manager": "vlan", "use_ipv6": "true"},
                      database={"connection": f"sqlite:///{tmp_path}/db.sqlite"})

    def run(*argv):
        code = cli.main(["--config-file", conf, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    assert run("db", "sync")[0] == 0
    code, out, err = run("network", "create", "--label", "a", "--fixed-range-v4", "10.1.0.0/24",
                         "--fixed-range-v6", "fd00:3::/64", "--gateway-v6", "fd00:3::fe",
                         "--ipv6-ra-mode", "dhcpv6-stateless", "--dns-v6", "2001:db8::53", "--dns-v6", "2001:db8::54")
    assert code == 0 and "IPv6 fd00:3::/64 gw fd00:3::fe dhcpv6-stateless" in out, err
    listing = run("network", "list")[1]
    assert "IPv6" in listing.splitlines()[0] and "fd00:3::/64" in listing and "dhcpv6-stateless" in listing
    (net,) = json.loads(run("network", "list", "--json")[1])
    assert (net["cidr_v6"], net["gateway_v6"], net["ipv6_ra_mode"], net["ipv6_address_mode"], net["dns_v6"]) == \
        ("fd00:3::/64", "fd00:3::fe", "dhcpv6-stateless", "dhcpv6-stateless", ["2001:db8::53", "2001:db8::54"])
    launched = run("instance", "launch", "vm", "--project", "alpha")[1]
    shown = json.loads(run("instance", "show", "vm", "--json")[1])
    v6 = ipv6.to_global("fd00:3::/64", shown["mac"], "alpha")
    assert shown["address_v6"] == shown["vifs"][0]["address_v6"] == v6
    assert f"IPv6 {v6} on fd00:3::/64 gw fd00:3::fe" in launched
    assert f"IPv6 {v6}" in run("instance", "show", "vm")[1]
    assert v6 in run("fixed", "list")[1]
    assert [r["address_v6"] for r in json.loads(run("fixed", "list", "--json")[1])] == [v6]
    code, out, err = run("network", "create", "--label", "b", "--fixed-range-v4", "10.2.0.0/24", "--vlan", "200",
                         "--fixed-range-v6", "fd00:3::/64")
    assert (code, out) == (1, "") and err.count("\n") == 1 and "used by network a (fd00:3::/64)" in err
    code, out, err = run("network", "create", "--label", "b", "--fixed-range-v4", "10.2.0.0/24", "--vlan", "200",
                         "--ipv6-address-mode", "eui64")
    assert (code, out) == (2, "") and err.count("\n") == 1 and "allowed values are slaac" in err
    assert len(json.loads(run("network", "list", "--json")[1])) == 1


# -- security groups see IPv6 --------------------------------------------------------------------

def test_firewall_same_net_and_members_include_ipv6(make_manager, engine):
    from sdn import firewall
    mgr = make_manager("vlan", use_ipv6=True)
    mgr.create_networks("a", "10.1.0.0/24")
    a1 = mgr.allocate_for_instance("a1", "alpha")
    a2 = mgr.allocate_for_instance("a2", "alpha")
    sv = api.load_views(engine)
    vif = sv.vifs[0]
    assert firewall.same_net_cidrs(sv, vif) == ("10.1.0.0/24", "fd00::/64", "fe80::/64")
    (gid,) = vif.security_groups
    members = firewall.member_addresses(sv)[gid]
    assert set(members["IPv6"]) == {a1["address_v6"], a2["address_v6"]}
    assert set(members["IPv4"]) == {a1["address"], a2["address"]}


def test_router_settings_public_address_v6():
    from sdn.flows.context import RouterSettings
    assert RouterSettings("192.0.2.2", public_ip_v6="2001:db8:5d::2/64").public_address_v6 == "2001:db8:5d::2"
    assert RouterSettings("192.0.2.2").public_address_v6 is None
