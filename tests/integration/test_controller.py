"""The foundation end to end on real userspace OVS: sdn state + controller + real dhclient.

Each test builds its own bridge, namespaces and controller (fixtures in conftest.py) and
asserts what a user sees: the address dhclient got, which pings pass, which frames arrive.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.integration.netlab import wait_for


def launch(env, netns_host, name, project):
    """Allocate an instance in state, make its namespace with the VIF's MAC and plug it."""
    alloc = env.cli_json("instance", "launch", name, "--project", project)
    host = netns_host(port_name=alloc["port_name"], mac=alloc["mac"])
    env.cli("instance", "plug", name, "--bridge", env.bridge.name)
    return alloc, host


def vlan_env(make_sdn_env, **default_opts):
    env = make_sdn_env(config={"DEFAULT": {"network_manager": "vlan", **default_opts}})
    return _vlan_networks(env)


def _vlan_networks(env):
    env.cli("network", "create", "--label", "tenants", "--fixed_range_v4", "10.31.0.0/24",
            "--num_networks", "2", "--network_size", "64", "--vlan", "200")
    return env


def backend_vlan_env(backend, **default_opts):
    return _vlan_networks(backend.env(config={"DEFAULT": {"network_manager": "vlan", **default_opts}}))


@pytest.mark.parametrize("backend", ["ovs", "linux", "linux-scapy"], indirect=True)
def test_dhclient_leases_and_projects_are_isolated(backend, capture):
    env = backend_vlan_env(backend)
    a1, h_a1 = backend.launch(env, "a1", "alpha")
    a2, h_a2 = backend.launch(env, "a2", "alpha")
    b1, h_b1 = backend.launch(env, "b1", "beta")
    backend.start(env)

    for alloc, host in ((a1, h_a1), (a2, h_a2), (b1, h_b1)):
        host.dhclient()
        assert host.ips() == [alloc["address"]], host.addresses()
    assert a1["vlan"] == a2["vlan"] != b1["vlan"]

    assert h_a1.ping(a2["address"], count=2)
    # Cross-project: a1 tries beta's subnet on-link, so it would ARP for b1 directly.
    h_a1.run(["ip", "route", "add", b1["cidr"], "dev", "eth0"])
    seen_at_b1 = h_b1.capture(f"ether src {a1['mac']}")
    seen_at_a2 = h_a2.capture(f"ether src {a1['mac']}")
    assert not h_a1.ping(b1["address"], count=2)
    assert h_a1.ping(a2["address"])   # positive control while the captures run
    seen_at_a2.wait_count(1)
    seen_at_b1.stop()
    assert seen_at_b1.packets() == []
    if backend.name == "ovs":
        # tables are named where a newcomer reads flows
        dump = "\n".join(env.bridge.dump_flows())
        for table in ("classify", "port_security", "egress_acl", "services", "l2_lookup",
                      "ingress_acl", "output"):
            assert re.search(rf'table="?{table}"?,', dump), f"table {table} not named in dump-flows"
        # the ACK was recorded in state (lease_fixed_ip) before it was sent (write-ahead)
        assert all(lease_state(env, alloc["address"]) for alloc in (a1, a2, b1))
    else:
        # dnsmasq runs sdn dhcp-bridge add after its ACK (the raw-socket responder: before)
        wait_for(lambda: all(lease_state(env, alloc["address"]) for alloc in (a1, a2, b1)),
                 timeout=10, what="dhcp-bridge to record every lease in state")


@pytest.mark.parametrize("backend", ["ovs", "linux", "linux-scapy"], indirect=True)
def test_unicast_renewal_and_release(backend):
    env = backend_vlan_env(backend, dhcp_lease_time=10)  # T1 5 s: a renewal soon, no expiry under load
    a1, h_a1 = backend.launch(env, "a1", "alpha")
    backend.start(env)
    client = h_a1.dhclient()
    assert h_a1.ips() == [a1["address"]]
    if backend.dhcp_driver == "dnsmasq":
        # dnsmasq raises any lease below 120 s to 120 s, so no T1 renewal within the test;
        # the restart of dhclient (INIT-REBOOT REQUEST) is answered instead.
        client.stop()
        event = h_a1.renew()
        client = h_a1._dhclients[-1]
    else:
        # RENEW is only reported after a unicast REQUEST to the server got its ACK (RFC 2131 §4.4.5)
        event = client.wait_event("RENEW", timeout=40)
    assert event["new_ip_address"] == a1["address"]
    assert event.get("new_dhcp_server_identifier", a1["gateway"]) == a1["gateway"]
    client.stop()
    h_a1.release()
    wait_for(lambda: lease_state(env, a1["address"]) is False, timeout=10,
             what="state to show the released fixed IP as not leased")


def lease_state(env, address) -> bool | None:
    """The ``leased`` flag of ``address`` as ``sdn fixed list --json`` reports it."""
    for row in env.cli_json("fixed", "list"):
        if row["address"] == address:
            return row["leased"]
    return None


def leased_pair(env, netns_host):
    """Two alpha instances plugged, the controller running, both leased: (a1, h_a1, a2, h_a2)."""
    a1, h_a1 = launch(env, netns_host, "a1", "alpha")
    a2, h_a2 = launch(env, netns_host, "a2", "alpha")
    env.start_controller()
    for client in [h_a1.dhclient(wait=False), h_a2.dhclient(wait=False)]:
        client.wait_bound()
    return a1, h_a1, a2, h_a2


def test_unplug_removes_the_vifs_flows(make_sdn_env, netns_host):
    env = vlan_env(make_sdn_env)
    a1, h_a1, a2, h_a2 = leased_pair(env, netns_host)
    assert h_a2.ping(a1["address"])
    ofport = env.bridge.ofport(a1["port_name"])
    mac = a1["mac"]

    env.cli("instance", "unplug", "a1", "--bridge", env.bridge.name)

    def gone():
        flows = env.bridge.dump_flows()
        return not [f for f in flows if mac in f or re.search(rf"\breg5=0x{ofport:x}\b", f)]
    wait_for(gone, timeout=10, what=f"flows of {a1['port_name']} to disappear")
    assert not h_a2.ping(a1["address"], count=1)


def test_controller_restart_keeps_forwarding(make_sdn_env, netns_host):
    env = vlan_env(make_sdn_env)
    a1, h_a1, a2, h_a2 = leased_pair(env, netns_host)
    before = sorted(f.split(" actions=")[0].split("priority=")[1]
                    for f in env.bridge.dump_flows())

    pinger = h_a1.popen(["ping", "-q", "-i", "0.02", "-c", "300", "-W", "1", a2["address"]],
                        stdout=subprocess.PIPE, text=True)
    env.stop_controller(kill=True)          # kill -9: no goodbye, flows stay (fail secure)
    env.start_controller()
    text, _ = pinger.communicate(timeout=60)
    assert " 0% packet loss" in text, text

    after = sorted(f.split(" actions=")[0].split("priority=")[1]
                   for f in env.bridge.dump_flows())
    assert after == before
    gens = {f.split(",")[0] for f in env.bridge.dump_flows()}
    assert len({g[-12:] for g in gens}) == 1, "stale generations left behind"


@pytest.mark.parametrize("manager", ["flatdhcp"])
def test_flat_dhcp_mode(backend, manager):
    env = backend.env(config={"DEFAULT": {"network_manager": manager}})
    env.cli("network", "create", "--label", "flat", "--fixed_range_v4", "10.32.0.0/24",
            "--bridge", backend.flat_bridge(env))
    f1, h_f1 = backend.launch(env, "f1", "alpha")
    f2, h_f2 = backend.launch(env, "f2", "beta")
    backend.start(env)
    h_f1.dhclient()
    h_f2.dhclient()
    assert h_f1.ips() == [f1["address"]] and h_f2.ips() == [f2["address"]]
    assert f1["vlan"] is None
    assert h_f1.ping(f2["address"])       # flat: one shared network
