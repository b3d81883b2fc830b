"""Bad operator input through the real ``sdn`` entry point: refused with the right exit code, one
line naming what is wrong and what is allowed, no traceback, and the state exactly as before.

Each case runs ``sdn.cli.main`` on a copy of one prepared SQLite database (two VLAN networks, two
instances of two projects, a floating range with one address allocated) and compares every JSON
listing (networks, fixed IPs, floating IPs, VPNs, both instances) and the state revision before
and after.
"""

import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from sdn import cli
from sdn.db import api
from tests.unit.conftest import write_conf

OVSDB_SOCK = "/var/run/openvswitch/db.sock"


def _run(conf_path, argv, capsys):
    code = cli.main(["--config-file", conf_path, *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A database with state to protect: built once, copied for each case."""
    root = tmp_path_factory.mktemp("matrix")
    url = f"sqlite:///{root}/db/sdn.sqlite"
    conf = write_conf(root / "vlan.conf", DEFAULT={"network_manager": "vlan", "host": "node1"},
                      database={"connection": url})
    steps = [["db", "sync"],
             ["network", "create", "--label", "prj", "--fixed_range_v4", "10.0.0.0/23", "--num_networks", "2",
              "--network_size", "256", "--vlan", "100"],
             ["instance", "launch", "web", "--project", "alpha"],
             ["instance", "launch", "db", "--project", "beta"],
             ["floating", "create", "203.0.113.0/29"],
             ["floating", "allocate", "--project", "alpha"]]
    for argv in steps:
        assert cli.main(["--config-file", conf, *argv]) == 0, argv
    api.get_engine(url).dispose()
    return root / "db"


@pytest.fixture
def sdn(prepared, tmp_path, capsys):
    """sdn(*argv, manager="vlan") -> (code, stdout, stderr) on a fresh copy of the prepared state."""
    shutil.copytree(prepared, tmp_path / "db")
    url = f"sqlite:///{tmp_path}/db/sdn.sqlite"

    def run(*argv, manager="vlan"):
        conf = write_conf(tmp_path / f"{manager}.conf", DEFAULT={"network_manager": manager, "host": "node1"},
                          database={"connection": url})
        return _run(conf, argv, capsys)
    run.url = url
    return run


def snapshot(sdn) -> dict:
    """Everything an operator can see, as JSON, plus the state revision."""
    views = {}
    for argv in (["network", "list", "--json"], ["fixed", "list", "--json"], ["floating", "list", "--json"],
                 ["vpn", "list", "--json"], ["instance", "show", "web", "--json"],
                 ["instance", "show", "db", "--json"]):
        code, out, err = sdn(*argv)
        assert (code, err) == (0, ""), (argv, err)
        views[" ".join(argv)] = json.loads(out)
    engine = api.get_engine(sdn.url)
    views["revision"] = api.current_revision(engine)
    engine.dispose()
    return views


def refused(result, code: int, words: list[str]) -> str:
    got, out, err = result
    assert got == code, (got, err)
    assert out == "", out
    assert err.startswith("sdn: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "unexpected" not in err, err
    for word in words:
        assert word in err, (word, err)
    return err


NET = ["network", "create", "--label", "x"]
ALLOW = ["instance", "allow-address", "web"]
# (argv, manager, exit code, words the message must contain: what is wrong and what is allowed)
CASES = [
    # network create: CIDRs
    (NET + ["--fixed_range_v4", ""], "vlan", 2, ["empty", "IPv4 CIDR such as 10.0.0.0/24"]),
    (NET + ["--fixed_range_v4", "nonsense"], "vlan", 2, ["invalid CIDR 'nonsense'", "IPv4 CIDR such as"]),
    (NET + ["--fixed_range_v4", "10.5.0.7/24"], "vlan", 2, ["host bits are set", "did you mean 10.5.0.0/24"]),
    (NET + ["--fixed_range_v4", "fd00::/64"], "vlan", 2, ["only IPv4", "10.0.0.0/24"]),
    (NET + ["--fixed_range_v4", "10.5.0.0/33"], "vlan", 2, ["invalid CIDR '10.5.0.0/33'", "IPv4 CIDR"]),
    (NET, "vlan", 2, ["--fixed_range_v4", "required"]),
    # network create: sizes and counts (never silently replaced by defaults)
    (NET + ["--fixed_range_v4", "10.5.0.0/24", "--network_size", "0"], "vlan", 2,
     ["network_size must be from 4 to 65536, not 0"]),
    (NET + ["--fixed_range_v4", "10.5.0.0/24", "--network_size", "-8"], "vlan", 2, ["from 4 to 65536, not -8"]),
    (NET + ["--fixed_range_v4", "10.5.0.0/24", "--network_size", "3"], "vlan", 2, ["from 4 to 65536, not 3"]),
    (NET + ["--fixed_range_v4", "11.0.0.0/8", "--network_size", "16777216"], "vlan", 2,
     ["network_size", "65536", "not 16777216"]),
    (NET + ["--fixed_range_v4", "11.0.0.0/8", "--num_networks", "1024", "--vlan", "1000"], "vlan", 2,
     ["262144 fixed IPs", "at most 65536"]),
    (NET + ["--fixed_range_v4", "10.5.0.0/24", "--num_networks", "0"], "vlan", 2,
     ["num_networks must be at least 1, not 0"]),
    (NET + ["--fixed_range_v4", "10.5.0.0/24", "--num_networks", "-1"], "vlan", 2, ["at least 1, not -1"]),
    (NET + ["--fixed_range_v4", "10.5.0.0/24", "--num_networks", "two"], "vlan", 2, ["invalid int value: 'two'"]),
    (NET + ["--fixed_range_v4", "10.5.0.0/28", "--num_networks", "2", "--network_size", "16"], "vlan", 2,
     ["cannot hold 2 network(s) of 16", "larger range"]),
    # network create: VLANs
    (NET + ["--fixed_range_v4", "10.5.0.0/24", "--vlan", "0"], "vlan", 2, ["VLAN 0 is out of range", "1-4094"]),
    (NET + ["--fixed_range_v4", "10.5.0.0/24", "--vlan", "4095"], "vlan", 2, ["VLAN 4095", "1-4094"]),
    (NET + ["--fixed_range_v4", "10.5.0.0/24", "--vlan", "x"], "vlan", 2, ["invalid int value: 'x'"]),
    (NET + ["--fixed_range_v4", "10.5.0.0/23", "--num_networks", "2", "--vlan", "4094"], "vlan", 2,
     ["VLANs up to 4095", "start at 4093 at most", "1-4094"]),
    (NET + ["--fixed_range_v4", "10.5.0.0/24", "--vlan", "100"], "vlan", 1,
     ["VLAN 100 is already used by network 10.0.0.0/24", "choose another --vlan"]),
    (NET + ["--fixed_range_v4", "10.5.0.0/24", "--vpn", "0"], "vlan", 2, ["VPN port", "from 1 to 65535"]),
    (NET + ["--fixed_range_v4", "10.5.0.0/24", "--vlan", "5"], "flat", 2, ["only to network_manager=vlan"]),
    # network create: overlaps, with fixed and with floating ranges
    (NET + ["--fixed_range_v4", "10.0.0.0/24", "--vlan", "200"], "vlan", 1,
     ["overlaps existing network 10.0.0.0/24 (prj_0)", "does not overlap"]),
    (NET + ["--fixed_range_v4", "10.0.0.0/16", "--vlan", "200", "--network_size", "65536"], "vlan", 1,
     ["overlaps existing network"]),
    (NET + ["--fixed_range_v4", "203.0.113.0/28", "--vlan", "200"], "vlan", 1,
     ["network 203.0.113.0/28 overlaps floating IPs 203.0.113.1-203.0.113.6 (pool nova, 6 addresses)",
      "both a fixed IP and a floating IP"]),
    (NET + ["--fixed_range_v4", "203.0.113.0/28"], "flatdhcp", 1, ["overlaps floating IPs 203.0.113.1"]),
    # network create: other fields
    (["network", "create", "--label", "", "--fixed_range_v4", "10.5.0.0/24"], "vlan", 2,
     ["label must not be empty", "--label"]),
    (NET + ["--fixed_range_v4", "10.5.0.0/24", "--dns1", "dns.example"], "vlan", 2,
     ["invalid DNS server 'dns.example'", "IPv4 address"]),
    (NET + ["--fixed_range_v4", "10.5.0.0/24", "--dns2", ""], "vlan", 2, ["invalid DNS server ''", "IPv4 address"]),
    (NET + ["--fixed_range_v4", "10.5.0.0/24", "--bridge", ""], "flat", 2, ["bridge must not be empty", "--bridge"]),
    # network delete
    (["network", "delete", "--fixed_range", "nonsense"], "vlan", 2, ["invalid CIDR", "10.0.0.0/24"]),
    (["network", "delete", "--fixed_range", "10.9.0.0/24"], "vlan", 1, ["no network with CIDR 10.9.0.0/24",
                                                                         "sdn network list"]),
    (["network", "delete", "--fixed_range", "10.0.0.0/24"], "vlan", 1, ["1 allocated fixed IP", "delete those"]),
    # instances
    (["instance", "launch", "bad name", "--project", "alpha"], "vlan", 2, ["invalid instance name", "letters"]),
    (["instance", "launch", "", "--project", "alpha"], "vlan", 2, ["invalid instance name ''"]),
    (["instance", "launch", ".dot", "--project", "alpha"], "vlan", 2, ["invalid instance name '.dot'"]),
    (["instance", "launch", "x" * 64, "--project", "alpha"], "vlan", 2, ["up to 63 characters"]),
    (["instance", "launch", "vm9", "--project", ""], "vlan", 2, ["project must not be empty", "--project"]),
    (["instance", "launch", "web___", "--project", "alpha"], "vlan", 1,
     ["gives hostname web, which instance web already has", "use another name"]),
    (["instance", "launch", "WEB", "--project", "alpha"], "vlan", 1, ["instance web already has"]),
    (["instance", "launch", "web", "--project", "beta"], "vlan", 1, ["already exists in project alpha, not beta"]),
    (["instance", "launch", "vm9", "--project", "gamma"], "vlan", 1,
     ["no unassigned network left for project gamma", "sdn network create"]),
    (["instance", "show", "ghost"], "vlan", 1, ["no instance named ghost", "sdn fixed list"]),
    (["instance", "plug", "ghost", "--bridge", "br-int"], "vlan", 1, ["no instance named ghost"]),
    (["instance", "delete", "ghost"], "vlan", 1, ["no instance named ghost"]),
    (["instance", "port-security", "web", "maybe"], "vlan", 2, ["invalid choice: 'maybe'", "'on', 'off'"]),
    (ALLOW + ["--ip", "10.0.0.300"], "vlan", 2, ["invalid CIDR '10.0.0.300'", "address or CIDR such as"]),
    (ALLOW + ["--ip", ""], "vlan", 2, ["the address is empty", "10.0.0.5"]),
    (ALLOW + ["--ip", "10.0.0.9", "--mac", "zz:zz"], "vlan", 2, ["invalid MAC address 'zz:zz'", "six hex bytes"]),
    (ALLOW + ["--ip", "10.0.0.9", "--mac", "01:00:5e:00:00:01"], "vlan", 2, ["multicast", "unicast MAC"]),
    (ALLOW + ["--ip", "10.0.0.9", "--mac", ""], "vlan", 2, ["invalid MAC address ''", "six hex bytes"]),
    (["instance", "disallow-address", "web", "--ip", "10.0.0.99"], "vlan", 1,
     ["has no allowed address pair", "sdn instance show web"]),
    # floating IPs
    (["floating", "create"], "vlan", 2, ["needs a RANGE", "CIDR or one address"]),
    (["floating", "create", "198.51.100.7/29"], "vlan", 2, ["host bits are set", "did you mean 198.51.100.0/29"]),
    (["floating", "create", "10.0.0.16/28"], "vlan", 1,
     ["floating range 10.0.0.16/28 overlaps network 10.0.0.0/24 (prj_0)", "both a fixed IP and a floating IP"]),
    (["floating", "create", "10.0.0.0/22"], "vlan", 1, ["overlaps network 10.0.0.0/24"]),
    (["floating", "create", "203.0.113.4/30"], "vlan", 1,
     ["floating range 203.0.113.4/30 overlaps existing floating IPs 203.0.113.5-203.0.113.6", "not yet in use"]),
    (["floating", "create", "12.0.0.0/8"], "vlan", 2, ["16777216 addresses", "at most 65536"]),
    (["floating", "create", "fd00::1"], "vlan", 2, ["floating IPs are IPv4"]),
    (["floating", "create", "nonsense"], "vlan", 2, ["invalid CIDR 'nonsense'", "203.0.113.0/28 or one address"]),
    (["floating", "create", "198.51.100.0/29", "--pool", ""], "vlan", 2, ["pool must not be empty", "--pool"]),
    (["floating", "delete", "198.51.100.0/29"], "vlan", 1, ["no floating IP 198.51.100.0/29", "sdn floating list"]),
    (["floating", "associate", "203.0.113.1", "--instance", "db", "--project", "alpha"], "vlan", 1,
     ["instance db belongs to project beta, not alpha", "that project's own instances"]),
    (["floating", "associate", "203.0.113.1", "--instance", "ghost", "--project", "alpha"], "vlan", 1,
     ["no instance named ghost"]),
    (["floating", "associate", "203.0.113.2", "--instance", "web", "--project", "alpha"], "vlan", 1,
     ["floating IP 203.0.113.2 is not allocated to project alpha"]),
    (["floating", "disassociate", "203.0.113.1", "--project", "alpha"], "vlan", 1,
     ["203.0.113.1 is not associated"]),
    (["floating", "deallocate", "9.9.9.9", "--project", "alpha"], "vlan", 1, ["no floating IP 9.9.9.9"]),
    (["floating", "allocate", "--project", "alpha", "--pool", "empty"], "vlan", 1,
     ["no free floating IP left in pool empty", "sdn floating create"]),
    # VPN and unknown verbs
    (["vpn", "run", "gamma"], "vlan", 1, ["no unassigned network left for project gamma"]),
    (["frobnicate"], "vlan", 2, ["invalid choice: 'frobnicate'"]),
]


@pytest.mark.parametrize("argv, manager, code, words", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_refused_input_leaves_state_unchanged(sdn, argv, manager, code, words):
    before = snapshot(sdn)
    refused(sdn(*argv, manager=manager), code, words)
    assert snapshot(sdn) == before


def test_matrix_is_large_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("argv", [["network", "list"], ["network", "list", "--json"], ["fixed", "list"],
                                  ["instance", "show", "web"], ["floating", "list", "--json"], ["vpn", "list"],
                                  ["network", "create", "--label", "x", "--fixed_range_v4", "10.5.0.0/24"]])
def test_missing_database_is_not_created(tmp_path, capsys, argv):
    conf = write_conf(tmp_path / "c.conf", database={"connection": f"sqlite:///{tmp_path}/state/sub/sdn.sqlite"})
    refused(_run(conf, argv, capsys), 1, ["no sdn database", "does not exist", "sdn db sync"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.conf"]


def test_locked_database_is_not_mistaken_for_a_missing_schema(sdn, monkeypatch):
    before = snapshot(sdn)
    monkeypatch.setattr(api, "SQLITE_BUSY_TIMEOUT", 0.2)
    holder = sqlite3.connect(sdn.url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        err = refused(sdn(*NET, "--fixed_range_v4", "10.5.0.0/24", "--vlan", "300"), 1,
                      ["is locked by another process", "try again"])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "db sync" not in err
    assert snapshot(sdn) == before


def test_database_without_schema_asks_for_db_sync(tmp_path, capsys):
    (tmp_path / "empty.sqlite").write_bytes(b"")
    conf = write_conf(tmp_path / "c.conf", database={"connection": f"sqlite:///{tmp_path}/empty.sqlite"})
    refused(_run(conf, ["network", "list"], capsys), 1, ["has no sdn schema", "no such table", "sdn db sync"])


def test_config_file_of_random_bytes_is_named(tmp_path, capsys):
    path = tmp_path / "random.conf"
    path.write_bytes(bytes(range(128, 256)) * 4)
    refused(_run(str(path), ["network", "list"], capsys), 2,
            [f"config file {path} is not a UTF-8 INI file", "[section]"])


@pytest.mark.skipif(not os.path.exists(OVSDB_SOCK), reason="needs a running ovsdb-server")
def test_plug_errors_name_the_bridge_and_device_without_traceback_or_warning(sdn, tmp_path):
    """Runs the console script as a subprocess: what the operator sees, warnings included."""
    from sdn import ovs

    bridge = f"br-sdnmx{os.getpid() % 10000}"
    sw = ovs.Ovs("unix:" + OVSDB_SOCK)
    sw.ensure_bridge(bridge, "netdev", None)
    conf = tmp_path / "vlan.conf"

    def script(*argv):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
        return subprocess.run([sys.executable, "-m", "sdn.cli", "--config-file", str(conf), *argv],
                              capture_output=True, text=True, timeout=60, env=env)
    try:   # from the bridge's creation on: removed whatever fails
        sdn("instance", "show", "web")  # writes vlan.conf
        port = json.loads(sdn("instance", "show", "web", "--json")[1])["port_name"]
        before = snapshot(sdn)
        proc = script("instance", "plug", "web", "--bridge", "br-sdn-missing")
        refused((proc.returncode, proc.stdout, proc.stderr), 1,
                ["no Open vSwitch bridge br-sdn-missing", bridge, "create it first"])
        proc = script("instance", "plug", "web", "--bridge", bridge)  # no such device: not --internal
        refused((proc.returncode, proc.stdout, proc.stderr), 1,
                [f"could not attach device {port} to {bridge}", "No such device", "the port was removed",
                 "--internal"])
        assert not sw.port_exists(bridge, port)
        proc = script("instance", "unplug", "web", "--bridge", "br-sdn-missing")
        refused((proc.returncode, proc.stdout, proc.stderr), 1, ["no Open vSwitch bridge br-sdn-missing"])
        assert snapshot(sdn) == before
        proc = script("instance", "plug", "web", "--bridge", bridge, "--internal")
        assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr  # no EventletDeprecationWarning
        proc = script("instance", "unplug", "web", "--bridge", bridge)
        assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    finally:
        subprocess.run(["ovs-vsctl", "--timeout=60", "--if-exists", "del-br", bridge], check=False)
