"""Two network hosts with the Linux backend (issue 13 item 4, ``network_driver = linux``): the
scenario of test_network_hosts.py, with two ``sdn agent``s instead of two controllers.

Each network host is a hypervisor namespace (``backends.Hypervisor``) running its own agent
(config ``host`` nh1 / nh2, its own ``public_interface``, ``routing_source_ip`` and
``floating_range``) on one database. This kernel has no 8021q (ENVIRONMENT.md), so the two
tenant networks are FlatDHCP networks with a bridge and an uplink each (``--bridge_interface``),
the uplink a veth whose ends sit in the two hypervisors: the physical segment of that network.
tenant networks are FlatDHCP networks with a bridge and an uplink each (``--bridge_interface``),
the uplinks veths to one Linux bridge per network in a "switch" namespace: the physical segments.
The instances are crossed as in the OVS test: a1 (network alpha, nh1's) is plugged on nh2's
hypervisor and b1 (beta, nh2's) on nh1's, so each reaches its own network host over the uplink
while the other hypervisor only bridges and filters it; c1 (alpha) is on a compute host only
(an agent with ``host =`` empty)::

    outside ns: eth0 172.30.1.1 ── pub1 [hv1: nh1]          [hv2: nh2] pub2 ── eth1 172.30.2.1
                (+ 198.51.100.10)     brqa gw, brqb ═╗  ╔═ brqa, brqb gw
                                            b1     [switch]      a1
                                                     ║
                                     [compute: no host] brqa: c1

Which public side a packet used is proven by captures on the outside's two interfaces, each the
far end of one hypervisor's public interface, and by the source address the outside sees.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from tests.integration.netlab import random_suffix, sh, wait_for
from tests.integration.peers import probe, serve
from tests.integration.test_network_hosts import (ALPHA_NET, BETA_NET, HOSTS, INTERNET,
                                                  associate_floating, check_floating_per_network_host,
                                                  check_snat_per_network_host, make_outside,
                                                  pools_and_rules, snat_source)

NETS = {"alpha": ALPHA_NET, "beta": BETA_NET}
GATEWAY = {"alpha": "10.36.0.1", "beta": "10.36.0.65"}


class LinuxLab:
    def __init__(self, linux, hosts, switch):
        self.linux = linux
        suffix = random_suffix(5)
        self.pub = {"nh1": f"sdnq1{suffix}", "nh2": f"sdnq2{suffix}"}
        self.bridge = {"alpha": f"brqa{suffix}", "beta": f"brqb{suffix}"}
        uplink = {"alpha": f"sdnua{suffix}", "beta": f"sdnub{suffix}"}
        self.env = {}
        self.fips = {}      # instance -> its floating IP, once associated
        for host, h in HOSTS.items():
            config = {"DEFAULT": {"network_manager": "flatdhcp", "host": host,
                                  "public_interface": self.pub[host], "routing_source_ip": h["rsip"],
                                  "floating_range": h["floating"], "metadata_host": h["rsip"]}}
            self.env[host] = linux.env(config=self.deployment(config))
        # a compute host only: no host name, no public interface
        self.env["compute"] = linux.env(config=self.deployment({"DEFAULT": {
            "network_manager": "flatdhcp", "host": ""}}))
        self.hv = {host: env.hv for host, env in self.env.items()}
        for net, name in uplink.items():   # every hypervisor's end named as bridge_interface
            sh(["ip", "-n", switch.name, "link", "add", f"sw{net}", "type", "bridge"])
            sh(["ip", "-n", switch.name, "link", "set", f"sw{net}", "up"])
            for i, hv in enumerate(self.hv.values()):
                sh(["ip", "-n", hv.name, "link", "add", name, "type", "veth",
                    "peer", "name", f"p{i}{net}", "netns", switch.name])
                sh(["ip", "-n", switch.name, "link", "set", f"p{i}{net}", "master", f"sw{net}", "up"])
        cli = self.cli = self.env["nh1"].cli
        for net, cidr in NETS.items():
            cli("network", "create", "--label", net, "--fixed_range_v4", cidr,
                "--bridge", self.bridge[net], "--bridge_interface", uplink[net])
        pools_and_rules(cli)
        # the outside: eth0 is the far end of hv1's public interface, eth1 of hv2's
        self.outside = make_outside(hosts, self.pub)
        for host, h in HOSTS.items():
            hv = self.hv[host]
            sh(["ip", "link", "set", self.pub[host], "netns", hv.name])
            hv.run(["ip", "addr", "add", f"{h['rsip']}/24", "dev", self.pub[host]])
            hv.run(["ip", "link", "set", self.pub[host], "up"])
            hv.run(["ip", "route", "add", "default", "via", h["gateway"]])

        # nh1's agent alone first: the first network host to see a VIF on alpha claims it
        self.start("nh1")
        self.a1, self.h_a1 = self.launch("a1", "alpha", on="nh2")
        self.claimed = wait_for(lambda: self.hosts_of().get(ALPHA_NET), timeout=15,
                                what="a network host to claim alpha's network")
        # beta goes to nh2 deliberately (nova-manage network modify --host)
        cli("network", "modify", "--fixed_range", BETA_NET, "--host", "nh2")
        self.b1, self.h_b1 = self.launch("b1", "beta", on="nh1")
        self.c1, self.h_c1 = self.launch("c1", "alpha", on="compute")
        self.start("nh2")
        self.start("compute")
        self.synced()
        for client in [h.dhclient(wait=False) for h in (self.h_a1, self.h_b1, self.h_c1)]:
            client.wait_bound()

    def deployment(self, config):
        """One deployment: every agent but nh1's reads nh1's database."""
        if "nh1" in self.env:
            config["database"] = {"connection": f"sqlite:///{self.env['nh1'].workdir / 'sdn.sqlite'}"}
        return config

    def start(self, host):
        self.hv[host].start_agent(self.env[host].sdn_exe, self.env[host].config_file)

    def launch(self, name, project, on):
        alloc = self.cli_json("instance", "launch", name, "--project", project, "--network", project)
        return self.linux.plug(self.env[on], alloc)

    def cli_json(self, *args):
        return self.env["nh1"].cli_json(*args)

    def hosts_of(self) -> dict:
        return {n["cidr"]: n["host"] for n in self.cli_json("network", "list")}

    def synced(self, timeout: float = 20) -> None:
        """Both agents reconciled the state as it is now (a reconcile logged with a revision
        at least the current one began after it) and every VIF port is on its bridge."""
        rev = self.linux.revision(self.env["nh1"])

        def seen(hv):
            if hv.agent is not None and hv.agent.poll() is not None:
                raise RuntimeError(f"sdn agent exited {hv.agent.returncode}; log:\n{hv.log()[-3000:]}")
            return any(int(n) >= rev for n in re.findall(r"reconciled revision (\d+):", hv.log()))
        for host, hv in self.hv.items():
            wait_for(lambda: seen(hv), timeout, what=f"{host}'s agent to reconcile revision {rev}")
            self.linux.wait_ports(self.env[host], timeout)

    def gateways(self, host) -> dict:
        """Network -> whether its gateway address is on its bridge in ``host``'s hypervisor."""
        hv = self.hv[host]
        return {net: f"inet {GATEWAY[net]}/" in hv.run(["ip", "-4", "addr", "show", "dev", br],
                                                         check=False).stdout
                for net, br in self.bridge.items()}

    def dnsmasq_bridges(self, host) -> set:
        """Bridges a dnsmasq of ``host``'s hypervisor serves (by its command line)."""
        out = set()
        for pid in sh(["ip", "netns", "pids", self.hv[host].name]).stdout.split():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    argv = fh.read().decode(errors="replace").split("\0")
            except FileNotFoundError:
                continue
            if argv and argv[0].endswith("dnsmasq"):
                out |= {a.split("=", 1)[1] for a in argv if a.startswith("--interface=")}
        return out

    def nat(self, host) -> str:
        return self.hv[host].run(["iptables-save", "-t", "nat"]).stdout

    def floating_held(self, address) -> dict:
        """Network host -> True: ``address`` is on its public interface and DNATed there;
        False: neither; else which half it holds."""
        held = {}
        for host in HOSTS:
            bound = f"inet {address}/32" in self.hv[host].run(
                ["ip", "-4", "addr", "show", "dev", self.pub[host]]).stdout
            dnat = f"-d {address}/32 -j DNAT" in self.nat(host)
            held[host] = bound if bound == dnat else f"bound {bound}, DNAT {dnat}"
        return held


class NoBridges:
    """Bridge factory of the lab's envs: the Linux backend needs no Open vSwitch bridge, so
    none is made (an env gets a name it never uses)."""

    def __call__(self, name=None, controller_port=None, fail_mode="secure"):
        return SimpleNamespace(name=name or f"sdnt{random_suffix(4)}")

    def close_all(self) -> None:
        pass


@pytest.fixture(scope="module")
def lab(integration_ready, tmp_path_factory):
    from tests.integration.backends import Hypervisor, LinuxBackend
    from tests.integration.conftest import NetnsFactory, SdnEnvFactory

    tmp = tmp_path_factory.mktemp("linuxnethosts")
    envs, hosts = SdnEnvFactory(tmp, NoBridges()), NetnsFactory(tmp / "netns")
    linux = LinuxBackend(envs, hosts, tmp)
    switch = Hypervisor(tmp)        # a plain namespace holding the segments' bridges
    try:
        yield LinuxLab(linux, hosts, switch)
    finally:
        try:
            linux.close()
            switch.close()
            hosts.close_all()
        finally:
            envs.close_all()


def test_first_network_host_to_see_a_vif_claims_the_network(lab):
    assert lab.claimed == "nh1"
    assert lab.hosts_of() == {ALPHA_NET: "nh1", BETA_NET: "nh2"}
    assert "claimed: this is its network host nh1" in lab.hv["nh1"].log()
    assert "claimed" not in lab.hv["nh2"].log() and "claimed" not in lab.hv["compute"].log()
    # each network's gateway and dnsmasq live on its own network host only; the other
    # hypervisor bridges its VIF onto the uplink (and both instances got their lease)
    assert lab.gateways("nh1") == {"alpha": True, "beta": False}
    assert lab.gateways("nh2") == {"alpha": False, "beta": True}
    assert lab.dnsmasq_bridges("nh1") == {lab.bridge["alpha"]}
    assert lab.dnsmasq_bridges("nh2") == {lab.bridge["beta"]}
    assert lab.h_a1.ips() == [lab.a1["address"]] and lab.h_b1.ips() == [lab.b1["address"]]
    assert lab.hv["nh2"].master_of(lab.a1["port_name"]) == lab.bridge["alpha"]
    assert lab.hv["nh1"].master_of(lab.b1["port_name"]) == lab.bridge["beta"]
    # the default SNAT of each network host names its own networks only
    assert f"-s {ALPHA_NET} -j SNAT" in lab.nat("nh1") and BETA_NET not in lab.nat("nh1")
    assert f"-s {BETA_NET} -j SNAT" in lab.nat("nh2") and ALPHA_NET not in lab.nat("nh2")


def test_a_compute_host_only_bridges_and_filters_its_vifs(lab):
    # c1 got its lease from nh1's dnsmasq over the segment, and leaves through nh1
    assert lab.h_c1.ips() == [lab.c1["address"]]
    assert lab.hv["compute"].master_of(lab.c1["port_name"]) == lab.bridge["alpha"]
    server = serve(lab.outside, "tcp-server", 8080)
    try:
        reply, seen = snat_source(lab, lab.h_c1, "eth0", "eth1")
        assert reply == f"ok 8080 {HOSTS['nh1']['rsip']}" and seen["eth0"] and not seen["eth1"]
    finally:
        server.kill()
    # nothing of a router there: no gateway, no dnsmasq, no NAT; its VIF filtered all the same
    assert lab.gateways("compute") == {"alpha": False, "beta": False}
    assert lab.dnsmasq_bridges("compute") == set()
    assert "SNAT" not in lab.nat("compute") and "DNAT" not in lab.nat("compute")
    assert "SNAT" in lab.nat("nh1")      # positive control: the network host's
    eb = lab.hv["compute"].ebtables_save()
    assert f"-i {lab.c1['port_name']} -j sdn-agent-I-{lab.c1['port_name']}" in eb, eb


def test_each_instance_snat_leaves_through_its_own_hosts_public_side(lab):
    check_snat_per_network_host(lab, ((lab.h_a1, "nh1", "eth0", "eth1"),
                                      (lab.h_b1, "nh2", "eth1", "eth0")))


def test_each_network_host_routes_its_own_floating_ip(lab):
    lab.fips.update(check_floating_per_network_host(lab))


def test_moving_a_network_moves_its_router_without_a_restart(lab):
    agents = {host: hv.agent.pid for host, hv in lab.hv.items()}
    fip = lab.fips.pop("b1", None) or associate_floating(lab, "b1", "beta", "nh2")
    assert lab.floating_held(fip) == {"nh1": False, "nh2": True}
    server = serve(lab.outside, "tcp-server", 8080)
    try:
        lab.cli("network", "modify", "--fixed_range", BETA_NET, "--host", "nh1")
        lab.synced()
        # gateway, dnsmasq and b1's floating IP (another pool's: outside nh1's floating_range)
        # left nh2 and are on nh1
        assert lab.gateways("nh1") == {"alpha": True, "beta": True}
        assert lab.gateways("nh2") == {"alpha": False, "beta": False}
        assert lab.dnsmasq_bridges("nh1") == {lab.bridge["alpha"], lab.bridge["beta"]}
        assert lab.dnsmasq_bridges("nh2") == set()
        assert lab.floating_held(fip) == {"nh1": True, "nh2": False}
        # the new network host's dnsmasq answers b1 (over the bridge it now routes)
        assert lab.h_b1.renew()["new_ip_address"] == lab.b1["address"]
        # disassociated: nh1 unbinds the address it bound for beta, though not of its range
        lab.cli("floating", "disassociate", fip, "--project", "beta")
        lab.synced()
        assert lab.floating_held(fip) == {"nh1": False, "nh2": False}
        reply, seen = wait_for(lambda: (lambda r: r[0] == f"ok 8080 {HOSTS['nh1']['rsip']}" and r)(
            snat_source(lab, lab.h_b1, "eth0", "eth1")), timeout=20, what="b1 leaving through nh1")
        assert seen["eth0"] and not seen["eth1"]
        lab.cli("network", "modify", "--fixed_range", BETA_NET, "--host", "nh2")
        wait_for(lambda: probe(lab.h_b1, "tcp", INTERNET, 8080, 3)
                 == f"ok 8080 {HOSTS['nh2']['rsip']}", timeout=20, what="b1 back on nh2")
        lab.synced()
        assert lab.gateways("nh1") == {"alpha": True, "beta": False}
        assert lab.gateways("nh2") == {"alpha": False, "beta": True}
        assert {host: hv.agent.pid for host, hv in lab.hv.items()} == agents
    finally:
        if lab.hosts_of()[BETA_NET] != "nh2":
            lab.cli("network", "modify", "--fixed_range", BETA_NET, "--host", "nh2")
        server.kill()
