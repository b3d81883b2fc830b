"""Linux backend only: what has no OVS counterpart to share a test with.

The host's iptables stay nova-shaped (only wrapped chains plus untouched foreign rules), an agent
restart changes nothing, deleting state removes exactly its rules, dnsmasq's script interface
drives the managers, and VLAN mode is set up for real except the VLAN interface when the kernel
has no 8021q; with IPv6 too, a restart rewrites no rule. (Floating IPs, SNAT, metadata and VPN
run for both backends in test_l3.py, IPv6 behaviour in test_ipv6.py.)
"""

from __future__ import annotations

import re

import pytest

from tests.integration.netlab import random_suffix, sh, wait_for
from tests.integration.test_controller import lease_state

RSIP, GATEWAY, INTERNET = "172.31.0.2", "172.31.0.1", "172.31.0.10"
FLOATING_RANGE = "172.31.0.64/28"
FIXED = "10.35.0.0/24"

class Lab:
    def __init__(self, backend, netns_host, foreign=()):
        pub = "sdnpb" + random_suffix(6)
        self.backend = backend
        self.env = backend.env(config={"DEFAULT": {
            "network_manager": "vlan", "public_interface": pub, "routing_source_ip": RSIP,
            "metadata_host": GATEWAY, "metadata_port": 8775, "vpn_ip": RSIP, "vpn_start": 5000,
            "floating_range": FLOATING_RANGE}})
        self.hv = self.env.hv
        self.pub = pub
        for cmd in foreign:               # rules sdn does not own, present before the agent
            self.hv.run(cmd)
        self.env.cli("network", "create", "--label", "tenants", "--fixed_range_v4", FIXED,
                     "--num_networks", "2", "--network_size", "64", "--vlan", "500")
        self.env.cli("floating", "create", FLOATING_RANGE)
        self.outside = netns_host(port_name=pub)
        sh(["ip", "link", "set", pub, "netns", self.hv.name])
        self.hv.run(["ip", "addr", "add", f"{RSIP}/24", "dev", pub])
        self.hv.run(["ip", "link", "set", pub, "up"])
        self.outside.set_ip(f"{GATEWAY}/24")
        self.outside.set_ip(f"{INTERNET}/24")
        self.outside.run(["ip", "route", "add", FIXED, "via", RSIP])
        self.a1, self.h_a1 = backend.launch(self.env, "a1", "alpha")
        self.a2, self.h_a2 = backend.launch(self.env, "a2", "alpha")
        self.b1, self.h_b1 = backend.launch(self.env, "b1", "beta")
        backend.start(self.env)
        for client in [h.dhclient(wait=False) for h in (self.h_a1, self.h_a2, self.h_b1)]:
            client.wait_bound()

    def floating(self, project, instance):
        address = self.env.cli("floating", "allocate", "--project", project).stdout.strip()
        self.env.cli("floating", "associate", address, "--instance", instance, "--project", project)
        return address

    def nat(self) -> str:
        return self.hv.run(["iptables-save", "-t", "nat"]).stdout


FOREIGN = (["iptables", "-A", "FORWARD", "-o", "nosuch0", "-j", "DROP"],
           ["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "192.168.99.0/24", "-j", "MASQUERADE"],
           ["ebtables", "-t", "nat", "-A", "PREROUTING", "-i", "nosuch0", "-j", "DROP"])


def snapshot(hv) -> dict[str, str]:
    def clean(text):
        return "\n".join(re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines()
                         if not line.startswith("#"))
    return {"iptables": clean(hv.iptables_save()), "ebtables": clean(hv.ebtables_save()),
            "links": hv.run(["ip", "-br", "link"]).stdout, "addrs": hv.run(["ip", "-br", "addr"]).stdout,
            # the same dnsmasq processes keep running across the agent's restart
            "dnsmasq": sorted(pid for pid in sh(["ip", "netns", "pids", hv.name]).stdout.split()
                              if _comm(pid) == "dnsmasq")}


def _comm(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except FileNotFoundError:
        return ""


def test_only_wrapped_chains_restart_is_a_no_op_and_removal_leaves_nothing(linux, netns_host):
    lab = Lab(linux, netns_host, foreign=FOREIGN)
    fip = lab.floating("alpha", "a2")
    linux.wait_synced(lab.env)
    saved = lab.hv.iptables_save()
    chains = re.findall(r"^:(\S+)", saved, re.M)
    builtin = {"INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING"}
    assert all(c in builtin or c.startswith("sdn-agent-") or c in ("sdn-filter-top", "sdn-postrouting-bottom")
               for c in chains), chains
    for rule in ("-A FORWARD -o nosuch0 -j DROP", "-A POSTROUTING -s 192.168.99.0/24 -j MASQUERADE"):
        assert rule in saved
    for line in saved.splitlines():      # every other rule is in or jumps to an sdn chain
        if line.startswith("-A") and "nosuch0" not in line and "192.168.99" not in line:
            assert "sdn-" in line, line
    assert "-A PREROUTING -i nosuch0 -j DROP" in lab.hv.ebtables_save()
    assert lab.h_a1.ping(lab.a2["address"])

    # restart (kill -9, as a crash): the new agent finds everything right and changes nothing
    before = snapshot(lab.hv)
    lab.hv.stop_agent(kill=True)
    n = len(lab.hv.reconciles())
    lab.hv.start_agent(lab.env.sdn_exe, lab.env.config_file)
    wait_for(lambda: len(lab.hv.reconciles()) > n, timeout=20, what="the restarted agent's first reconcile")
    assert lab.hv.reconciles()[n].endswith(": no changes"), lab.hv.reconciles()[n]
    assert snapshot(lab.hv) == before
    assert lab.h_a1.ping(lab.a2["address"])

    # deleting a2 (with its floating IP released) removes exactly its rules, hosts line and chain
    lab.env.cli("floating", "disassociate", fip, "--project", "alpha")
    lab.env.cli("instance", "delete", "a2")
    port, mac, addr = lab.a2["port_name"], lab.a2["mac"], lab.a2["address"]

    def gone():
        text = lab.hv.iptables_save() + lab.hv.ebtables_save()
        return port not in text and mac not in text and f"{addr}/" not in text and fip not in text
    wait_for(gone, timeout=10, what="every rule of a2 to go")
    # the same reconcile then cuts a2's connections and rewrites dnsmasq's hosts file
    linux.wait_synced(lab.env)
    hosts = (lab.env.workdir / "networks" / f"sdn-br{lab.a2['vlan']}.conf").read_text()
    assert mac not in hosts and lab.a1["mac"] in hosts
    assert lab.h_a1.ping(lab.a1["gateway"])
    # the rest is untouched: a1 still leased and reachable
    assert lease_state(lab.env, lab.a1["address"])


def test_dead_dnsmasq_is_restarted_and_serves_again(linux, netns_host):
    env = linux.env(config={"DEFAULT": {"network_manager": "flatdhcp"}})
    bridge = linux.flat_bridge(env)
    env.cli("network", "create", "--label", "flat", "--fixed_range_v4", "10.38.0.0/24", "--bridge", bridge)
    alloc, host = linux.launch(env, "r1", "p")
    linux.start(env)
    host.dhclient()
    pid_file = env.workdir / "networks" / f"sdn-{bridge}.pid"
    old = int(pid_file.read_text())
    sh(["kill", "-9", str(old)])

    def restarted():
        try:
            pid = int(pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid != old and _comm(str(pid)) == "dnsmasq" else None
    wait_for(restarted, timeout=15, what="the agent to restart dnsmasq")
    assert host.renew()["new_ip_address"] == alloc["address"]


def test_dhcp_bridge_verbs_update_state(linux, netns_host):
    """dnsmasq's script interface called directly: add/old lease, del releases, init lists."""
    env = linux.env(config={"DEFAULT": {"network_manager": "flatdhcp"}})
    env.cli("network", "create", "--label", "flat", "--fixed_range_v4", "10.36.0.0/24",
            "--bridge", linux.flat_bridge(env))
    alloc = env.cli_json("instance", "launch", "d1", "--project", "p")
    env.cli("dhcp-bridge", "add", alloc["mac"], alloc["address"], "d1")
    assert lease_state(env, alloc["address"]) is True
    init = env.cli("dhcp-bridge", "init").stdout.split()
    assert init[1:4] == [alloc["mac"], alloc["address"], "d1"]
    env.cli("dhcp-bridge", "del", alloc["mac"], alloc["address"], "d1")
    assert lease_state(env, alloc["address"]) is False
    bad = env.cli("dhcp-bridge", "add", "fa:16:3e:00:00:99", alloc["address"], check=False)
    assert bad.returncode != 0 and "sdn: error:" in bad.stderr


def test_vlan_mode_uplink_needs_8021q(linux, netns_host):
    """VLAN mode with vlan_interface: everything but the VLAN interface is set up for real; the
    VLAN step itself is skipped when the kernel cannot make VLAN interfaces (detected)."""
    env = linux.env(config={"DEFAULT": {"network_manager": "vlan", "vlan_interface": "uplink0"}})
    env.hv.run(["ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1"])
    env.cli("network", "create", "--label", "t", "--fixed_range_v4", "10.37.0.0/24",
            "--num_networks", "1", "--network_size", "64", "--vlan", "600")
    alloc, host = linux.launch(env, "v1", "alpha")
    linux.start(env)
    host.dhclient()
    assert host.ips() == [alloc["address"]]
    assert host.ping(alloc["gateway"])
    vlan = env.hv.run(["ip", "-d", "link", "show", "vlan600"], check=False)
    if vlan.returncode != 0:
        errors = [line for line in env.hv.log().splitlines() if "8021q" in line]
        assert errors, env.hv.log()[-2000:]
        pytest.skip("VLAN interface step: " + errors[0].split(" [-] ", 1)[-1])
    assert "vlan protocol 802.1Q id 600" in vlan.stdout
    assert env.hv.master_of("vlan600") == "br600"


def test_ipv6_rules_survive_a_restart_unchanged_and_guests_keep_their_router(linux, netns_host):
    """IPv6 (test_ipv6.py's lab): the ip6tables/ebtables rules sdn writes (u32 NA guard,
    ICMPv6 types) are in the canonical form the tools print, so a restarted agent rewrites
    nothing; its only change is its own RA/DHCPv6 server starting again, and the guests keep
    their derived addresses, default router and each other."""
    from tests.integration.test_ipv6 import V6Lab

    lab = V6Lab(linux, netns_host, instances=("a1", "a2"))
    for name in lab.host:
        lab.wait_slaac(name)
    assert lab.ping6_eventually("a1", lab.v6["a2"])
    hv = lab.env.hv
    assert "-j sdn-agent-n" in hv.run(["ip6tables-save", "-t", "raw"]).stdout
    before = {**snapshot(hv), "ip6tables": hv.run(["ip6tables-save"]).stdout}
    hv.stop_agent(kill=True)
    n = len(hv.reconciles())
    ras = lab.host["a1"].capture("icmp6 and ip6[40] == 134")
    hv.start_agent(lab.env.sdn_exe, lab.env.config_file)
    wait_for(lambda: len(hv.reconciles()) > n, timeout=20, what="the restarted agent's first reconcile")
    first = hv.reconciles()[n]
    assert first.endswith(": IPv6 router advertisements started on 2 ports"), first
    after = {**snapshot(hv), "ip6tables": hv.run(["ip6tables-save"]).stdout}
    def strip(text):
        return re.sub(r"\[\d+:\d+\]|^#.*$", "", text, flags=re.M)
    assert strip(after.pop("ip6tables")) == strip(before.pop("ip6tables"))
    assert after == before
    # the restarted router advertises again at once (the port's first RA), and the guests keep
    # their addresses, default router and each other
    ras.wait_count(1, timeout=10)
    assert lab.global_addresses("a1") == [lab.v6["a1"]]
    assert "default via fe80::" in lab.host["a1"].run(["ip", "-6", "route", "show", "default"]).stdout
    assert lab.ping6("a1", lab.v6["a2"])
