"""Length limits (sdn/db/limits.py): the same refusal, naming the field, on SQLite and PostgreSQL;
a refused write leaves the state as it was; a value exactly at the limit is stored whole."""

import pytest
from sqlalchemy import String

from sdn import cli, exception
from sdn.db import api, limits, models
from sdn.floating import FloatingIps
from sdn.secgroups import SecurityGroups
from tests.unit.conftest import write_conf

pytestmark = pytest.mark.both_databases  # every test using the database runs on SQLite and PostgreSQL

LONG = "x" * 5000


@pytest.fixture
def vlan(make_manager):
    mgr = make_manager("vlan")
    mgr.create_networks("v", "10.30.0.0/24", 2, 64)
    mgr.allocate_for_instance("a", "alpha")
    return mgr


def test_limits_are_the_models_string_lengths():
    for table in models.Base.metadata.sorted_tables:
        for column in table.columns:
            if isinstance(column.type, String) and column.type.length:   # Text: unbounded
                assert limits.LIMITS[(table.name, column.name)] == column.type.length


CASES = {
    "network label": (lambda m, e: m.create_networks(LONG, "10.31.0.0/24", vlan_start=200),
                      "the network's label"),
    "network bridge_interface": (
        lambda m, e: m.create_networks("n", "10.31.0.0/24", vlan_start=200, bridge_interface=LONG),
        "the network's bridge_interface"),
    "instance project": (lambda m, e: m.allocate_for_instance("b", LONG), "the instance's project_id"),
    "instance host": (lambda m, e: m.allocate_for_instance("b", "alpha", host=LONG), "the instance's host"),
    "add-to-project": (lambda m, e: m.add_network_to_project(LONG), "the network's project_id"),
    "floating pool": (lambda m, e: FloatingIps(e, m.conf).create("203.0.113.0/30", pool=LONG),
                      "the floating IP's pool"),
    "floating project": (lambda m, e: FloatingIps(e, m.conf).allocate(LONG), "the floating IP's project_id"),
    "secgroup description": (lambda m, e: SecurityGroups(e).create("g", "alpha", LONG),
                             "the security group's description"),
    "secgroup project": (lambda m, e: SecurityGroups(e).create("g", LONG), "the security group's project_id"),
}


@pytest.mark.parametrize("case", CASES)
def test_too_long_is_refused_naming_the_field_and_writes_nothing(vlan, engine, case):
    if case == "floating project":
        FloatingIps(engine, vlan.conf).create("203.0.113.0/30")
    call, field = CASES[case]
    before = api.current_revision(engine), api.load_views(engine)
    with pytest.raises(exception.FieldTooLong) as err:
        call(vlan, engine)
    assert str(err.value).startswith(f"{field} is 5000 characters long; at most ")
    assert (api.current_revision(engine), api.load_views(engine)) == before


def test_exactly_the_limit_is_stored_whole(vlan, engine):
    label, project = "l" * 255, "p" * 255
    vlan.create_networks(label, "10.31.0.0/24", vlan_start=200)
    got = vlan.allocate_for_instance("b", project)
    assert got["project"] == project
    nets = {n.cidr: n for n in api.load_views(engine).networks.values()}
    assert nets["10.31.0.0/24"].label == label and nets[got["cidr"]].project_id == project


def test_the_cli_says_which_field_in_one_line(tmp_path, db_url, engine, capsys):
    conf = write_conf(tmp_path / "sdn.conf", DEFAULT={"network_manager": "vlan"},
                      database={"connection": db_url})
    code = cli.main(["--config-file", conf, "network", "create", "--label", LONG,
                     "--fixed_range_v4", "10.32.0.0/24"])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err == ("sdn: error: the network's label is 5000 characters long; at most 255 are "
                   "allowed\n")
    assert api.load_views(engine).networks == {}
