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
