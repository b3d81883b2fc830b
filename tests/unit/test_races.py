"""Check-then-insert operations raced by real processes (``db.lock_key``): of identical
requests made at the same moment exactly one succeeds, every other one gets sdn's own error,
word for word what a later duplicate gets, and adds nothing. On PostgreSQL (row locks, no
global write lock) these raced into a raw IntegrityError or a silent duplicate before; SQLite
serialises writers anyway and is the anchor."""

import time

import pytest
from sqlalchemy import func, select

from sdn import exception
from sdn.db import api, models
from sdn.floating import FloatingIps
from sdn.secgroups import SecurityGroups
from tests.unit.test_db import _conf, _manager, workers  # noqa: F401  (fixture)

pytestmark = pytest.mark.both_databases  # every test using the database runs on SQLite and PostgreSQL

#: processes racing in each round, and rounds per operation (a round is a few milliseconds)
RACERS = 4
ROUNDS = 5


def _racer(conf_path: str, kind: str, method: str, args: tuple, kwargs: dict,
           start_at: float) -> tuple[str, str]:
    """In a worker: ``kind``'s ``method(*args, **kwargs)`` at wall-clock ``start_at``, already
    connected. Returns ("ok", "") or (exception class name, message): errors cross the process
    boundary as text (an SdnError's keyword arguments do not survive pickling)."""
    mgr = _manager(conf_path)
    target = {"manager": lambda: mgr, "secgroups": lambda: SecurityGroups(mgr.engine, mgr.conf),
              "floating": lambda: FloatingIps(mgr.engine, mgr.conf)}[kind]()
    api.current_revision(mgr.engine)
    time.sleep(max(0.0, start_at - time.time()))
    try:
        getattr(target, method)(*args, **kwargs)
        return "ok", ""
    except Exception as err:  # noqa: BLE001 - handed to the test, whatever it is
        return type(err).__name__, str(err)


def race(pool, conf_path, kind, method, *args, **kwargs) -> list[tuple[str, str]]:
    """RACERS processes call the same operation at the same moment; their outcomes."""
    start_at = time.time() + 0.3
    futures = [pool.submit(_racer, conf_path, kind, method, args, kwargs, start_at)
               for _ in range(RACERS)]
    return [f.result(timeout=120) for f in futures]


def one_wins(outcomes, error: type[exception.SdnError], message: str) -> None:
    """Exactly one "ok"; every other outcome is ``error`` with exactly ``message``."""
    assert outcomes.count(("ok", "")) == 1, outcomes
    assert [o for o in outcomes if o != ("ok", "")] == [(error.__name__, message)] * (RACERS - 1)


def later_duplicate(call) -> str:
    """The message a non-racing duplicate gets (the reference for the racers' refusals)."""
    with pytest.raises(exception.SdnError) as err:
        call()
    return str(err.value)


def count(engine, model, *where) -> int:
    with api.read_transaction(engine) as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


@pytest.fixture
def setup(tmp_path, engine, db_url):
    conf_path, conf = _conf(tmp_path, db_url, "vlan")
    from sdn import manager
    mgr = manager.get_manager(engine, conf)
    mgr.create_networks("v", "10.200.0.0/24", num_networks=1, network_size=256, vlan_start=100)
    return conf_path, mgr, SecurityGroups(engine, conf)


def test_racing_group_creations_make_one_group(setup, workers, engine):  # noqa: F811
    conf_path, _mgr, sgs = setup
    for r in range(ROUNDS):
        outcomes = race(workers, conf_path, "secgroups", "create", f"web{r}", "alpha")
        one_wins(outcomes, exception.SecurityGroupExists,
                 later_duplicate(lambda: sgs.create(f"web{r}", "alpha")))
        group = sgs.show(f"web{r}", "alpha")
        assert len(group["rules"]) == 2        # its two egress rules, once
    assert count(engine, models.SecurityGroup) == ROUNDS


def test_racing_identical_rules_add_one_rule(setup, workers, engine):  # noqa: F811
    """Into an existing group, and into a project's ``default`` group that the racers' rule
    creates on first use (two races in one: the group, then the rule)."""
    conf_path, _mgr, sgs = setup
    sgs.create("web", "alpha")
    for r in range(ROUNDS):
        for group, project in (("web", "alpha"), ("default", f"fresh{r}")):
            rule = dict(protocol="tcp", from_port=22 + r, to_port=22 + r, cidr="10.0.0.0/8")
            outcomes = race(workers, conf_path, "secgroups", "add_rule", group, project, **rule)
            one_wins(outcomes, exception.SecurityGroupRuleExists,
                     later_duplicate(lambda: sgs.add_rule(group, project, **rule)))
    assert len(sgs.show("web", "alpha")["rules"]) == 2 + ROUNDS
    assert all(len(sgs.show("default", f"fresh{r}")["rules"]) == 3 for r in range(ROUNDS))


def test_racing_provider_rules_and_memberships(setup, workers, engine):  # noqa: F811
    conf_path, mgr, sgs = setup
    mgr.allocate_for_instance("a1", "alpha")
    sgs.create("web", "alpha")
    for r in range(ROUNDS):
        rule = dict(protocol="tcp", from_port=100 + r, to_port=100 + r, cidr="192.0.2.0/24")
        one_wins(race(workers, conf_path, "secgroups", "add_provider_rule", **rule),
                 exception.ProviderRuleExists, later_duplicate(lambda: sgs.add_provider_rule(**rule)))
    assert count(engine, models.ProviderFirewallRule) == ROUNDS
    # joining a group: idempotent, so every racer succeeds and the instance is in it once
    assert race(workers, conf_path, "secgroups", "add_instance", "a1", "web") == [("ok", "")] * RACERS
    assert sgs.groups_of("a1") == ["default", "web"]


def test_racing_address_space_creations(setup, workers, engine):  # noqa: F811
    """Networks (CIDR, VLAN) and floating ranges: the same one, or overlapping ones, at once."""
    conf_path, mgr, _sgs = setup
    fips = FloatingIps(engine, mgr.conf)
    for r in range(ROUNDS):
        net = dict(label=f"n{r}", cidr=f"10.{60 + r}.0.0/24", num_networks=1, network_size=256,
                   vlan_start=400 + r)
        one_wins(race(workers, conf_path, "manager", "create_networks", **net),
                 exception.CidrConflict, later_duplicate(lambda: mgr.create_networks(**net)))
        one_wins(race(workers, conf_path, "floating", "create", f"172.30.{r}.0/28"),
                 exception.FloatingIpExists, later_duplicate(lambda: fips.create(f"172.30.{r}.0/28")))
    assert count(engine, models.Network) == 1 + ROUNDS
    assert count(engine, models.FloatingIp) == ROUNDS * 14


def test_racing_identical_address_pairs_add_one(setup, workers, engine):  # noqa: F811
    conf_path, mgr, _sgs = setup
    mgr.allocate_for_instance("a1", "alpha")
    for r in range(ROUNDS):
        one_wins(race(workers, conf_path, "manager", "add_address_pair", "a1", f"10.99.0.{r + 1}"),
                 exception.AddressPairExists,
                 later_duplicate(lambda: mgr.add_address_pair("a1", f"10.99.0.{r + 1}")))
    assert count(engine, models.AllowedAddressPair) == ROUNDS
