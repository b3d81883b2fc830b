"""The sdn console script: verbs, output, one-line errors and exit codes."""

import json
import os
import subprocess
import sys

import pytest

from sdn import cli
from tests.unit.conftest import write_conf


@pytest.fixture
def sdn(tmp_path, capsys):
    """sdn(*argv, manager="vlan") -> (exit code, stdout, stderr) against a fresh database."""
    url = f"sqlite:///{tmp_path}/db/sdn.sqlite"

    def run(*argv, manager="vlan"):
        conf = write_conf(tmp_path / f"{manager}.conf", DEFAULT={"network_manager": manager, "host": "node1"},
                          database={"connection": url})
        code = cli.main(["--config-file", conf, *argv])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def ok(result):
    code, out, err = result
    assert (code, err) == (0, ""), err
    return out


def fail(result, code):
    got, out, err = result
    assert got == code and out == ""
    assert err.startswith("sdn: error: ") and err.count("\n") == 1, err
    return err


def test_full_flow(sdn):
    ok(sdn("db", "sync"))
    out = ok(sdn("network", "create", "--label", "prj", "--fixed_range_v4", "10.0.0.0/23",
                 "--num_networks", "2", "--network_size", "256", "--vlan", "300"))
    assert "10.0.0.0/24" in out and "vlan 301" in out
    alloc = json.loads(ok(sdn("instance", "launch", "vm1", "--project", "alpha", "--json")))
    assert set(alloc) == {"instance", "project", "host", "network_id", "cidr", "vlan", "vif_uuid", "mac",
                          "address", "port_name", "gateway", "vifs", "address_v6", "cidr_v6", "gateway_v6"}
    assert [v["address"] for v in alloc["vifs"]] == [alloc["address"]]
    assert (alloc["address"], alloc["vlan"], alloc["host"], alloc["gateway"]) == ("10.0.0.3", 300, "node1",
                                                                                  "10.0.0.1")
    again = json.loads(ok(sdn("instance", "launch", "vm1", "--project", "alpha", "--json")))
    assert again == alloc
    line = ok(sdn("instance", "launch", "vm1", "--project", "alpha"))
    assert "10.0.0.3" in line and alloc["port_name"] in line
    listing = ok(sdn("network", "list"))
    assert "alpha" in listing and "10.0.1.0/24" in listing
    assert "10.0.0.3" in ok(sdn("fixed", "list"))
    err = fail(sdn("network", "delete", "--fixed_range", "10.0.0.0/24"), 1)
    assert "allocated" in err
    ok(sdn("instance", "delete", "vm1"))
    fail(sdn("instance", "delete", "vm1"), 1)


@pytest.mark.parametrize("argv, code, text", [
    (["network", "create", "--label", "x"], 2, "--fixed_range_v4"),
    (["network", "create", "--label", "x", "--fixed_range_v4", "10.0.0.0/23", "--num_networks", "2", "--vlan", "4094"],
     2, "VLANs up to 4095"),
    (["network", "create", "--label", "x", "--fixed_range_v4", "nonsense"], 2, "invalid CIDR"),
    (["network", "create", "--label", "x", "--fixed_range_v4", "10.0.0.0/24", "--num_networks", "two"], 2,
     "invalid int"),
    (["instance", "launch", "vm1"], 2, "--project"),
    (["instance", "launch", "bad name", "--project", "p"], 2, "invalid instance name"),
    (["instance", "launch", "vm1", "--project", "p"], 1, "no networks exist"),
    (["instance", "plug", "ghost", "--bridge", "br-int"], 1, "no instance named ghost"),
    (["network", "delete", "--fixed_range", "10.9.0.0/24"], 1, "no network with CIDR 10.9.0.0/24"),
    (["frobnicate"], 2, "invalid choice"),
])
def test_errors_are_one_line(sdn, argv, code, text):
    ok(sdn("db", "sync"))
    assert text in fail(sdn(*argv), code)


def test_flat_manager_rejects_vlan_option(sdn):
    ok(sdn("db", "sync"))
    err = fail(sdn("network", "create", "--label", "f", "--fixed_range_v4", "10.0.0.0/24", "--vlan", "5",
                   manager="flat"), 2)
    assert "network_manager=vlan" in err


def test_unsynced_database_is_explained(sdn):
    assert "sdn db sync" in fail(sdn("network", "list"), 1)


def test_bad_config_value(tmp_path, capsys):
    conf = write_conf(tmp_path / "bad.conf", DEFAULT={"network_manager": "quantum"})
    assert cli.main(["--config-file", conf, "network", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdn: error: invalid value 'quantum' for option [DEFAULT] network_manager")


def test_console_script_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sdn.cli", "--config-file", str(tmp_path / "none.conf"),
                           "network", "list"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("sdn: error: config file") and "Traceback" not in proc.stderr


OVSDB_SOCK = "/var/run/openvswitch/db.sock"


@pytest.mark.skipif(not os.path.exists(OVSDB_SOCK), reason="needs a running ovsdb-server")
def test_plug_unplug_sets_neutron_external_ids(sdn):
    from sdn import ovs

    bridge = f"br-sdnut{os.getpid() % 10000}"
    sw = ovs.Ovs("unix:" + OVSDB_SOCK)
    try:   # a creation that timed out may still complete: removed in any case
        sw.ensure_bridge(bridge, "netdev", None, table_names={0: "classify"})
        ok(sdn("db", "sync"))
        ok(sdn("network", "create", "--label", "f", "--fixed_range_v4", "10.0.0.0/24", manager="flat"))
        alloc = json.loads(ok(sdn("instance", "launch", "vm1", "--project", "p", "--json", manager="flat")))
        ok(sdn("instance", "plug", "vm1", "--bridge", bridge, "--internal", manager="flat"))
        ok(sdn("instance", "plug", "vm1", "--bridge", bridge, "--internal", manager="flat"))  # idempotent
        ids = json.loads(subprocess.run(
            ["ovs-vsctl", "--format=json", "--columns=external_ids", "list", "Interface", alloc["port_name"]],
            capture_output=True, text=True, check=True).stdout)["data"][0][0][1]
        ids = dict(ids)
        assert (ids["iface-id"], ids["attached-mac"], ids["iface-status"]) == (alloc["vif_uuid"], alloc["mac"],
                                                                               "active")
        assert len(ids["vm-uuid"]) == 36 and ids["vm-uuid"] != alloc["vif_uuid"]
        tables = subprocess.run(["ovs-vsctl", "--columns=name", "list", "Flow_Table"], capture_output=True,
                                text=True, check=True).stdout
        assert "classify" in tables
        ok(sdn("instance", "delete", "vm1", "--bridge", bridge, manager="flat"))
        assert not sw.port_exists(bridge, alloc["port_name"])
    finally:
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", bridge], check=False)
