"""Several VIFs per instance, a second VLAN network for a project, lease listing: both backends.

Project p (VLAN mode) gets vl_0 at its first instance ``a`` and vl_1 with ``network
add-to-project`` (a second VLAN). ``b`` is launched on vl_1; ``m`` on both, one namespace with
eth0 (vl_0) and eth1 (vl_1) and a real dhclient on each interface (the test's own script).
Then ``remove-fixed-ip`` takes m's vl_1 VIF away (its flows / ebtables chain, dnsmasq host,
lease go), and ``add-fixed-ip`` gives it a new one (new MAC and port) that leases again.
"""

from __future__ import annotations

import datetime

from tests.integration.netlab import sh, wait_for

PROJECT = "p"


def leases(env, *args):
    return {(r["address"], r["mac"], r["instance"]): r for r in env.cli_json("dhcp", "leases", "--json", *args)}


def held(host, iface, client):
    """(address, MAC, lease end) the client holds on ``iface``."""
    ev = client.wait_bound()
    mac = host.run(["cat", f"/sys/class/net/{iface}/address"]).stdout.strip()
    expiry = ev.get("new_expiry")
    end = datetime.datetime.fromtimestamp(int(expiry), datetime.timezone.utc).replace(tzinfo=None) \
        if expiry else None
    return ev["new_ip_address"], mac, end


def plug_one_more(backend, env, host, vif, iface):
    """A VIF added to a running instance: a new interface in its namespace, its port plugged."""
    host.add_interface(vif["port_name"], vif["mac"], iface)
    if backend.name == "ovs":
        env.cli("instance", "plug", vif["instance"], "--bridge", env.bridge.name)
    else:
        sh(["ip", "link", "set", vif["port_name"], "netns", backend.hv(env).name])
        backend.ports[id(env)].append(vif["port_name"])
        backend.wait_ports(env)


def test_two_vifs_second_vlan_remove_add_and_leases(backend, netns_host):
    env = backend.env(config={"DEFAULT": {"network_manager": "vlan", "dhcp_lease_time": 120}})
    env.cli("network", "create", "--label", "vl", "--fixed_range_v4", "10.41.0.0/24",
            "--num_networks", "3", "--network_size", "64", "--vlan", "460")
    alloc = {"a": env.cli_json("instance", "launch", "a", "--project", PROJECT)}
    out = env.cli("network", "add-to-project", "--project", PROJECT).stdout
    assert "vl_1 10.41.0.64/26 vlan 461" in out, out
    alloc["b"] = env.cli_json("instance", "launch", "b", "--project", PROJECT, "--network", "vl_1")
    alloc["m"] = env.cli_json("instance", "launch", "m", "--project", PROJECT,
                              "--network", "vl_0", "--network", "vl_1")
    m0, m1 = alloc["m"]["vifs"]
    assert (alloc["a"]["vlan"], alloc["b"]["vlan"], m0["vlan"], m1["vlan"]) == (460, 461, 460, 461)
    host = {}
    for name in ("a", "b"):
        _, host[name] = backend.plug(env, alloc[name])
    _, host["m"] = backend.plug_all(env, alloc["m"])
    backend.start(env)

    clients = {("a", "eth0"): host["a"].dhclient(wait=False), ("b", "eth0"): host["b"].dhclient(wait=False),
               ("m", "eth0"): host["m"].dhclient_on("eth0", wait=False),
               ("m", "eth1"): host["m"].dhclient_on("eth1", wait=False)}
    holding = {key: held(host[key[0]], key[1], c) for key, c in clients.items()}
    assert host["m"].ips_of("eth0") == [m0["address"]] and host["m"].ips_of("eth1") == [m1["address"]]
    assert holding[("b", "eth0")][0] == alloc["b"]["address"]

    # m reaches each network through its own VIF, and is reached on each
    for src, dst in (("m", alloc["a"]["address"]), ("m", alloc["b"]["address"]), ("a", m0["address"]),
                     ("b", m1["address"])):
        wait_for(lambda: host[src].ping(dst), timeout=10, what=f"{src} to reach {dst}")
    assert not host["a"].ping(alloc["b"]["address"])      # two VLANs: no path between a and b

    # dhcp leases matches what the four clients hold (address, MAC, instance, lease end)
    want = {(addr, mac, key[0]): end for key, (addr, mac, end) in holding.items()}
    got = wait_for(lambda: (lambda rows: rows if set(rows) == set(want) else None)(leases(env)),
                   timeout=15, what="dhcp leases to list the four clients' leases")
    for key, end in want.items():
        if end is not None:
            server_end = datetime.datetime.fromisoformat(got[key]["lease_end"])
            assert abs((server_end - end).total_seconds()) <= 5, (key, server_end, end)
    assert {k[0] for k in leases(env, "--network", "vl_1")} == {alloc["b"]["address"], m1["address"]}

    # remove-fixed-ip: the VIF's data plane and lease go, the other VIF keeps working
    out = env.cli("instance", "remove-fixed-ip", "m", "--address", m1["address"]).stdout
    assert out.startswith(f"removed {m1['address']}") and m1["port_name"] in out
    backend.wait_synced(env)
    if backend.name == "ovs":
        flows = sh(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", env.bridge.name]).stdout
        assert m1["mac"] not in flows and m1["address"] not in flows
        assert m0["mac"] in flows
        assert not host["m"].ping(alloc["b"]["address"])   # port still there, no flow admits it
    else:
        hv = backend.hv(env)
        assert m1["port_name"] not in hv.ebtables_save() and m0["port_name"] in hv.ebtables_save()
        hosts = (env.workdir / "networks" / "sdn-br461.conf").read_text()
        assert m1["mac"] not in hosts and alloc["b"]["mac"] in hosts
    backend.unplug_port(env, m1["port_name"])
    clients[("m", "eth1")].stop()     # the guest's NIC is hot-unplugged with its VIF
    host["m"].run(["ip", "link", "del", "eth1"], check=False)
    assert not host["m"].ping(alloc["b"]["address"])
    assert host["m"].ping(alloc["a"]["address"], count=2)
    rows = leases(env)
    assert m1["address"] not in {k[0] for k in rows} and (m0["address"], m0["mac"], "m") in rows

    # add-fixed-ip: a new VIF (new MAC and port) on vl_1 leases with a real dhclient and reaches b
    added = env.cli_json("instance", "show", "m", "--json")
    assert [v["address"] for v in added["vifs"]] == [m0["address"]]
    env.cli("instance", "add-fixed-ip", "m", "--network", "vl_1")
    new = env.cli_json("instance", "show", "m", "--json")["vifs"][1]
    new["instance"] = "m"
    assert new["mac"] != m1["mac"] and new["port_name"] != m1["port_name"] and new["vlan"] == 461
    plug_one_more(backend, env, host["m"], new, "eth2")
    backend.wait_synced(env)
    addr, mac, _ = held(host["m"], "eth2", host["m"].dhclient_on("eth2", wait=False))
    assert (addr, mac) == (new["address"], new["mac"])
    assert host["m"].ping(alloc["b"]["address"], count=2) and host["b"].ping(new["address"], count=2)
    wait_for(lambda: (new["address"], new["mac"], "m") in leases(env), timeout=15,
             what="the new VIF's lease in dhcp leases")
