"""Several network hosts (issue 13 item 4): networks get a host the way nova's set_network_host
gave them one, and each network host's router routes only its own networks.

Compilation is traced on two datapaths joined by a trunk, each with its own public port and
router settings (host "h1" and "h2"); the claim is raced by two engines on one database (SQLite,
and PostgreSQL through the ``both_databases`` marker of the pg branch's tests/unit/conftest.py).
"""

import dataclasses
import threading

import pytest

from sdn import cli, exception
from sdn.db import api
from sdn.flows.compiler import CompileSettings, bind_ports, compile_datapath
from sdn.flows.model import CT_NEW, CT_TRK, Nat, Table
from sdn.flows.router import RouterSettings
from sdn.flows.trace import trace
from sdn.view import FloatingView, NetworkView, VifView
from tests.unit.conftest import write_conf
from tests.unit.views import open_view

# -- pure compilation: who routes what ------------------------------------------------------------

ALPHA = NetworkView(1, "alpha", "10.34.0.0/26", "255.255.255.192", "10.34.0.1", "10.34.0.63",
                    vlan=400, project_id="alpha", host="h1")
BETA = NetworkView(2, "beta", "10.34.0.64/26", "255.255.255.192", "10.34.0.65", "10.34.0.127",
                   vlan=401, project_id="beta", host="h2")
GAMMA = NetworkView(3, "gamma", "10.34.0.128/26", "255.255.255.192", "10.34.0.129",
                    "10.34.0.191", vlan=402, project_id="gamma")       # claimed by nobody yet
A1 = VifView("aaaa1111-0000", "fa:16:3e:00:00:a1", 1, "a1", "a1", ("10.34.0.3",), "alpha")
B1 = VifView("bbbb1111-0000", "fa:16:3e:00:00:b1", 2, "b1", "b1", ("10.34.0.67",), "beta")
G1 = VifView("cccc1111-0000", "fa:16:3e:00:00:c1", 3, "g1", "g1", ("10.34.0.131",), "gamma")
FA = FloatingView("172.30.1.65", "10.34.0.3", 1, "alpha")
FB = FloatingView("172.30.2.65", "10.34.0.67", 2, "beta")
VIEW = open_view(1, {1: ALPHA, 2: BETA, 3: GAMMA}, (A1, B1, G1), (FA, FB))
H1 = RouterSettings("172.30.1.2", "172.30.1.1", "02:00:00:00:01:01", host="h1")
H2 = RouterSettings("172.30.2.2", "172.30.2.1", "02:00:00:00:02:01", host="h2")
PUB, TRUNK = 9, 7
# crossed on purpose: each instance sits on the *other* network host's switch
SWITCH1 = {B1.port_name: 3, "pub1": PUB, "trk1": TRUNK}      # network host h1
SWITCH2 = {A1.port_name: 3, "pub2": PUB, "trk2": TRUNK}      # network host h2
NEW = CT_NEW | CT_TRK
#: the database tests run on SQLite and PostgreSQL (the ``db`` fixture, tests/unit/conftest.py)
pytestmark = pytest.mark.both_databases


def flows(settings, ports, public, trunk, view=VIEW):
    return compile_datapath(view, bind_ports(view, ports, frozenset({trunk}), public),
                            CompileSettings(router=settings)).flows


def on_h1(view=VIEW):
    return flows(H1, SWITCH1, "pub1", "trk1", view)


def on_h2(view=VIEW):
    return flows(H2, SWITCH2, "pub2", "trk2", view)


def from_outside(settings, dst, ct=NEW):
    return {"in_port": PUB, "eth_src": settings.external_gateway_mac, "eth_dst": settings.mac,
            "eth_type": 0x0800, "ipv4_src": "198.51.100.7", "ipv4_dst": dst, "ip_proto": 6,
            "tcp_dst": 22, "ct_state": ct}


def to_gateway(vif, net, **extra):
    return {"eth_src": vif.mac, "eth_dst": net.gateway_mac, "eth_type": 0x0800,
            "ipv4_src": vif.addresses[0], "ipv4_dst": "198.51.100.7", "ip_proto": 6,
            "tcp_dst": 80, "ct_state": NEW, **extra}


def test_each_network_host_answers_only_its_own_floating_ips():
    r = trace(on_h1(), from_outside(H1, FA.address))
    assert Nat("dst", A1.addresses[0]) in [ct.nat for ct in r.cts if ct.commit]
    assert r.outputs == [(TRUNK, 400)]          # a1 is behind the trunk, on h2's switch
    # h2's public port neither answers nor forwards h1's floating IP (positive control: its own)
    assert trace(on_h2(), from_outside(H2, FA.address)).dropped
    r = trace(on_h2(), from_outside(H2, FB.address))
    assert r.outputs == [(TRUNK, 401)]
    arp = [f for f in on_h2() if f.table == Table.UPLINK and dict(f.match).get("arp_tpa")]
    assert {dict(f.match)["arp_tpa"] for f in arp} == {H2.routing_source_ip, FB.address}


def test_instance_traffic_reaches_its_own_network_hosts_router_over_the_trunk():
    # b1 (beta, host h2) plugged on h1's switch: its gateway-bound frame goes to the trunk ...
    r = trace(on_h1(), to_gateway(B1, BETA, in_port=3))
    assert r.outputs == [(TRUNK, 401)] and not r.cts
    # ... and h2's router SNATs it out of h2's public port, with its floating IP
    r = trace(on_h2(), to_gateway(B1, BETA, in_port=TRUNK, vlan_vid=0x1000 | 401))
    assert [ct.nat for ct in r.cts if ct.commit] == [Nat("src", FB.address)]
    assert r.outputs == [(PUB, None)]
    # positive control on the other side: a1 (alpha, h1) on h2's switch goes to h1
    assert trace(on_h2(), to_gateway(A1, ALPHA, in_port=3)).outputs == [(TRUNK, 400)]
    r = trace(on_h1(), to_gateway(A1, ALPHA, in_port=TRUNK, vlan_vid=0x1000 | 400))
    assert [ct.nat for ct in r.cts if ct.commit] == [Nat("src", FA.address)]


def test_unclaimed_network_is_routed_nowhere_and_other_hosts_tenants_stay_isolated():
    for fl in (on_h1(), on_h2()):
        routed = [f for f in fl if f.table == Table.SERVICES and f.goto == Table.L3_UNSNAT]
        assert routed                               # positive control: some network is routed
        assert GAMMA.gateway_mac not in {dict(f.match).get("eth_dst") for f in routed}
    # a1 (h1) to b1's fixed IP: h1 has no route into beta, and does not send it outside either
    r = trace(on_h1(), to_gateway(A1, ALPHA, in_port=TRUNK, vlan_vid=0x1000 | 400,
                                  ipv4_dst=B1.addresses[0]))
    assert r.dropped


def test_router_without_host_serves_every_network():
    lone = dataclasses.replace(H1, host=None)
    r = trace(flows(lone, SWITCH1, "pub1", "trk1"), from_outside(lone, FB.address))
    assert r.outputs == [(3, None)]             # b1 is local to switch 1


def test_moving_a_network_moves_its_flows():
    moved = open_view(2, {1: ALPHA, 2: dataclasses.replace(BETA, host="h1"), 3: GAMMA},
                      (A1, B1, G1), (FA, FB))
    assert trace(on_h1(moved), from_outside(H1, FB.address)).outputs == [(3, None)]
    assert trace(on_h2(moved), from_outside(H2, FB.address)).dropped


# -- the claim: nova's set_network_host ----------------------------------------------------------

def test_networks_start_without_host_and_the_first_claim_wins(make_manager):
    mgr = make_manager("vlan", host="h1")
    nets = mgr.create_networks("p", "10.40.0.0/24", num_networks=2, network_size=128, vlan_start=500)
    assert [n["host"] for n in mgr.list_networks()] == [None, None]
    assert mgr.claim_networks("h1") == []                     # no VIF yet: nothing to claim
    mgr.allocate_for_instance("i1", "alpha")
    assert [n["label"] for n in mgr.claim_networks("h2")] == ["p_0"]
    assert mgr.claim_networks("h1") == []                     # h2 was first
    assert mgr.set_network_host(nets[0]["id"], "h1") == "h2"
    assert mgr.set_network_host(nets[1]["id"], "h1") == "h1"  # free: h1 takes it
    assert [n["host"] for n in mgr.list_networks()] == ["h2", "h1"]


def test_claim_that_changes_nothing_keeps_the_revision(make_manager, engine):
    mgr = make_manager("vlan")
    mgr.create_networks("p", "10.40.0.0/24", num_networks=1, network_size=256, vlan_start=500)
    mgr.allocate_for_instance("i1", "alpha")
    before = api.current_revision(engine)
    mgr.claim_networks("h1")
    after = api.current_revision(engine)
    assert after == before + 1
    mgr.claim_networks("h2")
    mgr.set_network_host(1, "h2")
    assert api.current_revision(engine) == after


def test_modify_moves_or_frees_a_network(make_manager):
    mgr = make_manager("vlan")
    mgr.create_networks("p", "10.40.0.0/24", num_networks=1, network_size=256, vlan_start=500)
    mgr.allocate_for_instance("i1", "alpha")
    mgr.claim_networks("h1")
    assert mgr.modify_network_host("10.40.0.0/24", host="h2")["host"] == "h2"
    assert mgr.modify_network_host("10.40.0.0/24", disassociate=True)["host"] is None
    assert [n["host"] for n in mgr.claim_networks("h3")] == ["h3"]


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one of --host"),
    ({"host": "h1", "disassociate": True}, "exactly one of --host"),
    ({"host": ""}, "must not be empty"),
    ({"host": "two words"}, "no whitespace"),
    ({"host": "h" * 256}, "at most 255"),
])
def test_modify_refusals_leave_state_unchanged(make_manager, kwargs, message):
    mgr = make_manager("vlan")
    mgr.create_networks("p", "10.40.0.0/24", num_networks=1, network_size=256, vlan_start=500)
    with pytest.raises(exception.Invalid, match=message):
        mgr.modify_network_host("10.40.0.0/24", **kwargs)
    assert mgr.list_networks()[0]["host"] is None


def test_modify_of_unknown_network_is_refused(make_manager):
    with pytest.raises(exception.NetworkNotFound):
        make_manager("vlan").modify_network_host("10.99.0.0/24", host="h1")


ROUNDS, NETWORKS = 10, 16


def test_two_engines_racing_claim_each_network_exactly_once(make_manager, make_conf, db_url):
    """Two network hosts, each with its own engine (connection pool) on one database, claim
    the same networks at the same instant, round after round: every network ends with one
    host, and each claimant's answer agrees with the database."""
    from sdn import manager as managers
    mgr = make_manager("vlan")
    mgr.create_networks("p", "10.40.0.0/20", num_networks=NETWORKS, network_size=256,
                        vlan_start=500)
    for i in range(NETWORKS):
        mgr.add_network_to_project(f"proj{i}")
        mgr.allocate_for_instance(f"i{i}", f"proj{i}")
    conf = make_conf(network_manager="vlan")
    engines = [api.get_engine(db_url) for _ in range(2)]
    hosts = ["h1", "h2"]
    try:
        for _ in range(ROUNDS):
            for n in mgr.list_networks():
                mgr.modify_network_host(n["cidr"], disassociate=True)
            barrier = threading.Barrier(2)
            won: dict[str, list] = {}
            errors = []

            def claim(k):
                m = managers.get_manager(engines[k], conf)
                barrier.wait()
                try:
                    won[hosts[k]] = [n["id"] for n in m.claim_networks(hosts[k])]
                    # nova's per-network form races too: each answer names the real winner
                    won[hosts[k] + "-set"] = [(n, m.set_network_host(n, hosts[k]))
                                              for n in range(1, NETWORKS + 1)]
                except Exception as err:   # surfaced below
                    errors.append(err)
            threads = [threading.Thread(target=claim, args=(k,)) for k in (0, 1)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors, errors
            final = {n["id"]: n["host"] for n in mgr.list_networks()}
            assert set(won["h1"]).isdisjoint(won["h2"])
            assert sorted(won["h1"] + won["h2"]) == sorted(final)
            assert all(final[n] == h for h in hosts for n in won[h])
            for h in hosts:
                assert all(final[n] == winner for n, winner in won[h + "-set"])
    finally:
        for eng in engines:
            eng.dispose()


# -- the CLI ------------------------------------------------------------------------------------

@pytest.fixture
def sdn(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/db/sdn.sqlite"
    conf = write_conf(tmp_path / "sdn.conf", DEFAULT={"network_manager": "vlan", "host": "node1"},
                      database={"connection": url})

    def run(*argv):
        code = cli.main(["--config-file", conf, *argv])
        out, err = capsys.readouterr()
        return code, out, err
    assert run("db", "sync")[0] == 0
    assert run("network", "create", "--label", "p", "--fixed_range_v4", "10.40.0.0/24",
               "--vlan", "500")[0] == 0
    return run


def test_cli_network_list_shows_the_host_and_modify_moves_it(sdn):
    code, out, _ = sdn("network", "list")
    assert code == 0 and out.splitlines()[0].split()[-1] == "host"
    assert out.splitlines()[1].split()[-1] == "-"
    code, out, err = sdn("network", "modify", "--fixed_range", "10.40.0.0/24", "--host", "net2")
    assert (code, err) == (0, "") and "network host: net2" in out
    assert sdn("network", "list")[1].splitlines()[1].split()[-1] == "net2"
    code, out, _ = sdn("network", "modify", "--fixed-range", "10.40.0.0/24", "--disassociate-host")
    assert code == 0 and "none" in out


@pytest.mark.parametrize("argv, code, words", [
    (["--fixed_range", "10.40.0.0/24"], 2, "exactly one of --host"),
    (["--fixed_range", "10.40.0.0/24", "--host", "a", "--disassociate-host"], 2, "exactly one"),
    (["--fixed_range", "10.40.0.0/24", "--host", "a b"], 2, "no whitespace"),
    (["--fixed_range", "10.41.0.0/24", "--host", "a"], 1, "no network"),
    (["--fixed_range", "nonsense", "--host", "a"], 2, "nonsense"),
])
def test_cli_modify_refusals_are_one_line(sdn, argv, code, words):
    got, out, err = sdn("network", "modify", *argv)
    assert got == code and out == "" and err.count("\n") == 1, err
    assert err.startswith("sdn: error: ") and words in err and "Traceback" not in err
    assert sdn("network", "list")[1].splitlines()[1].split()[-1] == "-"
