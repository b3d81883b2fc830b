"""Security groups in state and on the command line (sdn/secgroups.py, sdn/cli.py): nova's
semantics, Neutron's extra fields, refusals that change nothing, and migration 0002."""

import json

import pytest
from sqlalchemy import create_engine, text

from sdn import exception
from sdn.db import api
from sdn.secgroups import SecurityGroups
from tests.unit.test_cli import fail, ok, sdn  # noqa: F401  (fixture)

pytestmark = pytest.mark.both_databases  # every test using the database runs on SQLite and PostgreSQL


@pytest.fixture
def sgs(engine):
    return SecurityGroups(engine)


@pytest.fixture
def vlan(make_manager):
    mgr = make_manager("vlan")
    mgr.create_networks(label="t", cidr="10.40.0.0/24", num_networks=2, network_size=64,
                        vlan_start=300)
    return mgr


def test_launch_joins_default_created_on_first_use_with_nova_defaults(vlan, sgs):
    vlan.allocate_for_instance("a1", "alpha")
    (group,) = sgs.list("alpha")
    assert (group["name"], group["instances"], group["stateful"]) == ("default", ["a1"], True)
    assert [(r["direction"], r["ethertype"], r["protocol"], r["remote_cidr"])
            for r in group["rules"]] == [("egress", "IPv4", "any", "0.0.0.0/0"),
                                         ("egress", "IPv6", "any", "::/0")]
    view = api.load_views(vlan.engine)
    (vif,) = view.vifs
    assert vif.security_groups == (group["id"],) and vif.id > 0
    assert view.security_groups[group["id"]].rules[0].direction == "egress"


def test_launch_with_groups_and_the_vpn_group(vlan, sgs):
    sgs.create("web", "alpha")
    vlan.allocate_for_instance("a1", "alpha", security_groups=["web", "default"])
    assert sgs.groups_of("a1") == ["default", "web"]
    with pytest.raises(exception.SecurityGroupNotFound):
        vlan.allocate_for_instance("a2", "alpha", security_groups=["nope"])
    assert [g["name"] for g in sgs.list("alpha")] == ["default", "web"]   # a2 left nothing
    vpn = vlan.allocate_for_instance("alpha-vpn", "alpha", vpn=True)
    assert vpn["instance"] == "alpha-vpn" and sgs.groups_of("alpha-vpn") == ["alpha-vpn"]
    rules = sgs.show("alpha-vpn", "alpha")["rules"]
    assert {(r["protocol"], r["port_min"]) for r in rules if r["direction"] == "ingress"} == {
        ("udp", 1194), ("icmp", None)}


@pytest.mark.parametrize("fields,message", [
    (dict(protocol="tcpx"), "unknown protocol 'tcpx'"),
    (dict(protocol="tcp", from_port=30, to_port=22), "from port is above the to port"),
    (dict(protocol="udp", from_port=0, to_port=70000), "ports are 1-65535"),
    (dict(protocol="icmp", from_port=-1, to_port=3), "needs an ICMP type"),
    (dict(protocol="icmp", from_port=300, to_port=-1), "bad ICMP type 300"),
    (dict(protocol="any", from_port=1, to_port=2), "ports apply to tcp"),
    (dict(protocol="icmp", ethertype="IPv6"), "an IPv6 rule takes icmpv6"),
    (dict(protocol="tcp", cidr="10.0.0.0/33"), "invalid CIDR"),
    (dict(protocol="tcp", cidr="::/0", ethertype="IPv4"), "is IPv6 but the rule's ethertype"),
    (dict(direction="sideways"), "unknown direction"),
    (dict(ethertype="IPX"), "unknown ethertype"),
    (dict(cidr="10.0.0.0/8", remote_group="default"), "not both"),
])
def test_bad_rules_are_refused_with_what_is_allowed(vlan, sgs, fields, message):
    before = sgs.show("default", "alpha")
    with pytest.raises(exception.Invalid, match=message):
        sgs.add_rule("default", "alpha", **fields)
    assert sgs.show("default", "alpha") == before


def test_duplicates_cross_project_grants_and_groups_in_use_are_refused(vlan, sgs):
    sgs.create("web", "alpha")
    sgs.create("db", "beta")
    r = sgs.add_rule("web", "alpha", protocol="tcp", from_port=22, to_port=22, cidr="10.0.0.0/8")
    with pytest.raises(exception.SecurityGroupRuleExists, match=f"id {r['id']}"):
        sgs.add_rule("web", "alpha", protocol="tcp", from_port=22, to_port=22, cidr="10.0.0.1/8")
    with pytest.raises(exception.SecurityGroupCrossProject, match="belongs to project beta"):
        sgs.add_rule("web", "alpha", protocol="tcp", remote_group="db")
    grant = sgs.add_rule("default", "alpha", protocol="tcp", from_port=80, to_port=80,
                         remote_group="web")
    with pytest.raises(exception.SecurityGroupInUse, match="remote group of rules in default"):
        sgs.delete("web", "alpha")
    sgs.delete_rule("default", "alpha", grant["id"])
    vlan.allocate_for_instance("a1", "alpha", security_groups=["web"])
    with pytest.raises(exception.SecurityGroupInUse, match=r"in use by 1 instance\(s\) \(a1\)"):
        sgs.delete("web", "alpha")
    with pytest.raises(exception.SecurityGroupInUse, match="default group"):
        sgs.delete("default", "alpha")
    assert sgs.remove_instance("a1", "web") == []
    sgs.delete("web", "alpha")
    assert [g["name"] for g in sgs.list("alpha")] == ["default"]


def test_rules_delete_by_the_fields_they_were_added_with(vlan, sgs):
    r = sgs.add_rule("default", "alpha", protocol="icmp", from_port=8, to_port=-1)
    with pytest.raises(exception.SecurityGroupRuleNotFound):
        sgs.delete_rule("default", "alpha", protocol="icmp", from_port=0, to_port=-1)
    assert sgs.delete_rule("default", "alpha", protocol="icmp", from_port=8)["id"] == r["id"]


def test_stateful_and_stateless_groups_do_not_mix_on_one_instance(vlan, sgs):
    sgs.create("raw", "alpha", stateful=False)
    vlan.allocate_for_instance("a1", "alpha")
    with pytest.raises(exception.SecurityGroupMixed, match=r"default \(stateful\), raw"):
        sgs.add_instance("a1", "raw")
    assert sgs.groups_of("a1") == ["default"]
    sgs.remove_instance("a1", "default")
    assert sgs.add_instance("a1", "raw") == ["raw"]


def test_provider_rules(sgs):
    r = sgs.add_provider_rule("tcp", 25, 25, "0.0.0.0/0")
    with pytest.raises(exception.ProviderRuleExists):
        sgs.add_provider_rule("tcp", "25", "25", "0.0.0.0/0")
    with pytest.raises(exception.Invalid, match="needs --cidr"):
        sgs.add_provider_rule("tcp", 25, 25, None)
    assert sgs.list_provider_rules() == [{"id": r["id"], "protocol": "tcp", "port_min": 25,
                                          "port_max": 25, "cidr": "0.0.0.0/0"}]
    sgs.delete_provider_rule(protocol="tcp", from_port=25, to_port=25, cidr="0.0.0.0/0")
    assert sgs.list_provider_rules() == []


def test_cli_nova_and_neutron_forms_and_exit_codes(sdn):
    ok(sdn("db", "sync"))
    ok(sdn("network", "create", "--label", "t", "--fixed_range_v4", "10.41.0.0/24",
           "--num_networks", "1", "--network_size", "64", "--vlan", "310"))
    ok(sdn("instance", "launch", "a1", "--project", "alpha"))
    ok(sdn("secgroup", "create", "web", "--project", "alpha"))
    out = ok(sdn("secgroup-rule", "add", "web", "--project", "alpha", "tcp", "22", "22",
                 "10.0.0.0/8"))
    assert out.startswith("added rule ") and "ingress IPv4 tcp 22-22 from 10.0.0.0/8" in out
    out = ok(sdn("secgroup-rule", "add", "web", "--project", "alpha", "--direction", "egress",
                 "--ethertype", "IPv6", "--protocol", "icmpv6", "--port-range-min", "128",
                 "--remote-ip-prefix", "2001:db8::/32"))
    assert "egress IPv6 icmpv6 type 128 to 2001:db8::/32" in out
    ok(sdn("secgroup-rule", "add", "default", "--project", "alpha", "icmp", "-1", "-1",
           "0.0.0.0/0"))
    ok(sdn("instance", "add-secgroup", "a1", "web"))
    shown = json.loads(ok(sdn("instance", "show", "a1", "--json")))
    assert shown["security_groups"] == ["default", "web"]
    assert "unknown protocol 'bogus'" in fail(sdn("secgroup-rule", "add", "web", "--project",
                                                  "alpha", "bogus"), 2)
    assert "in use by 1 instance" in fail(sdn("secgroup", "delete", "web", "--project",
                                              "alpha"), 1)
    assert "4 values" in fail(sdn("secgroup-rule", "add", "web", "--project", "alpha", "tcp",
                                  "1", "2", "0.0.0.0/0", "x"), 2)
    assert "unrecognized arguments: --bogus" in fail(sdn("secgroup", "list", "--bogus"), 2)
    groups = json.loads(ok(sdn("secgroup", "list", "--json")))
    assert {g["name"]: len(g["rules"]) for g in groups} == {"default": 3, "web": 4}
    ok(sdn("secgroup-rule", "delete", "web", "--project", "alpha", "tcp", "22", "22",
           "10.0.0.0/8"))
    assert "by --id or by its fields" in fail(sdn("secgroup-rule", "delete", "web", "--project",
                                                  "alpha", "--id", "1", "tcp"), 2)


def test_migration_puts_existing_instances_in_their_projects_default_group(tmp_path):
    """A database at revision 0001 with instances: after upgrade every instance is in its
    project's default group (nova gave every instance one)."""
    from alembic import command
    from alembic.config import Config
    from importlib import resources
    url = f"sqlite:///{tmp_path}/old.sqlite"
    cfg = Config(str(resources.files("sdn.db") / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", url)
    command.upgrade(cfg, "0001")
    eng = create_engine(url)
    with eng.begin() as conn:
        for uuid, name, project in (("u1", "a1", "alpha"), ("u2", "a2", "alpha"), ("u3", "b1", "beta")):
            conn.execute(text("INSERT INTO instances (uuid, name, hostname, project_id, created_at) "
                              "VALUES (:u, :n, :n, :p, '2026-01-01')"), dict(u=uuid, n=name, p=project))
    command.upgrade(cfg, "head")
    with eng.begin() as conn:
        rows = conn.execute(text(
            "SELECT i.name, g.name, g.project_id FROM security_group_instance_association a "
            "JOIN instances i ON i.uuid = a.instance_uuid "
            "JOIN security_groups g ON g.id = a.security_group_id ORDER BY i.name")).all()
        egress = conn.execute(text("SELECT count(*) FROM security_group_rules "
                                   "WHERE direction = 'egress'")).scalar()
    assert [tuple(r) for r in rows] == [("a1", "default", "alpha"), ("a2", "default", "alpha"),
                                        ("b1", "default", "beta")]
    assert egress == 4
    eng.dispose()
