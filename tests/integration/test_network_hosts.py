"""Two network hosts, each routing its own networks' floating IPs and SNAT (issue 13 item 4).

Topology, and why: this machine runs one userspace ovs-vswitchd (ENVIRONMENT.md), so the two
network hosts are two bridges of it, each programmed by its own ``sdn controller`` process
(config ``host`` nh1 / nh2, its own ``public_interface`` and ``routing_source_ip``) on one
database, joined by a patch-port trunk. Each controller sees only its own bridge, which is all
a network host is to sdn; separate ovs-vswitchd instances in namespaces would change nothing
the test looks at. The instances are crossed on purpose: a1 (project alpha, network host nh1)
is plugged on nh2's bridge and b1 (beta, nh2) on nh1's, so each instance's routed traffic must
cross the trunk to reach its own network host's router::

    outside ns: eth0 172.30.1.1 ── pub1 [br1: nh1] trunk ═══ trunk [br2: nh2] pub2 ── eth1 172.30.2.1
                (+ 198.51.100.10, "the internet")   │                      │
                                                    b1 (beta)             a1 (alpha)

Which public port a packet used is proven by captures on the outside's two interfaces (each
is the far end of one public port's veth) and by the source address the outside sees.
"""

from __future__ import annotations

import time

import pytest

from tests.integration import netlab
from tests.integration.netlab import random_suffix, sh, wait_for
from tests.integration.peers import probe, serve

INTERNET = "198.51.100.10"
BPF = "tcp and (port 8080 or port 2222)"
RING_DELAY = 1.5
HOSTS = {"nh1": dict(rsip="172.30.1.2", gateway="172.30.1.1", floating="172.30.1.64/28"),
         "nh2": dict(rsip="172.30.2.2", gateway="172.30.2.1", floating="172.30.2.64/28")}
ALPHA_NET, BETA_NET = "10.36.0.0/26", "10.36.0.64/26"


def pools_and_rules(cli) -> None:
    """Each network host's floating IP pool, and projects alpha and beta admitting ICMP and TCP."""
    for host, h in HOSTS.items():
        cli("floating", "create", h["floating"], "--pool", f"pool-{host}", "--host", host)
    for project in ("alpha", "beta"):
        for rule in (("icmp", "-1", "-1"), ("tcp", "1", "65535")):
            cli("secgroup-rule", "add", "default", "--project", project, *rule, "0.0.0.0/0")


def make_outside(hosts, pub: dict):
    """The outside namespace: eth0 is the far end of nh1's public side (``pub["nh1"]``), eth1
    of nh2's, each with that network host's external gateway address; INTERNET on lo."""
    outside = hosts(port_name=pub["nh1"])
    outside.add_interface(pub["nh2"], netlab.random_mac(), "eth1")
    for host, iface in (("nh1", "eth0"), ("nh2", "eth1")):
        outside.run(["ip", "addr", "add", f"{HOSTS[host]['gateway']}/24", "dev", iface])
    outside.run(["ip", "addr", "add", f"{INTERNET}/32", "dev", "lo"])
    return outside


class Lab:
    def __init__(self, envs, hosts):
        self.hosts_factory = hosts
        suffix = random_suffix(5)
        self.pub = {"nh1": f"sdnq1{suffix}", "nh2": f"sdnq2{suffix}"}
        trunk = {"nh1": f"sdnk1{suffix}", "nh2": f"sdnk2{suffix}"}
        self.env = {}
        for host, h in HOSTS.items():
            config = {"DEFAULT": {"network_manager": "vlan", "host": host,
                                  "public_interface": self.pub[host], "routing_source_ip": h["rsip"],
                                  "external_gateway": h["gateway"]},
                      # each network host's controller serves its own switch only
                      "ovs": {"trunk_interfaces": [trunk[host]], "mastership_group": host}}
            if host == "nh2":      # one deployment: nh2's controller reads nh1's database
                config["database"] = {"connection": f"sqlite:///{self.env['nh1'].workdir / 'sdn.sqlite'}"}
            self.env[host] = envs(config=config)
        self.br = {host: env.bridge.name for host, env in self.env.items()}
        sh(["ovs-vsctl", "--timeout=30",
            "add-port", self.br["nh1"], trunk["nh1"], "--", "set", "Interface", trunk["nh1"],
            "type=patch", f"options:peer={trunk['nh2']}", "--",
            "add-port", self.br["nh2"], trunk["nh2"], "--", "set", "Interface", trunk["nh2"],
            "type=patch", f"options:peer={trunk['nh1']}"])
        cli = self.cli = self.env["nh1"].cli
        cli("network", "create", "--label", "tenants", "--fixed_range_v4", "10.36.0.0/24",
            "--num_networks", "2", "--network_size", "64", "--vlan", "410")
        pools_and_rules(cli)
        self.outside = make_outside(hosts, self.pub)
        self.outside.attach(self.br["nh1"])
        sh(["ovs-vsctl", "--timeout=30", "add-port", self.br["nh2"], self.pub["nh2"]])

        # nh1's controller alone first: the first network host to see a VIF on alpha claims it
        self.env["nh1"].start_controller()
        self.a1, self.h_a1 = self.launch("a1", "alpha", on="nh2")
        self.claimed = wait_for(lambda: self.hosts_of().get(ALPHA_NET), timeout=15,
                                what="a network host to claim alpha's network")
        # beta goes to nh2 deliberately (nova-manage network modify --host)
        cli("network", "modify", "--fixed_range", BETA_NET, "--host", "nh2")
        self.b1, self.h_b1 = self.launch("b1", "beta", on="nh1")
        self.env["nh2"].start_controller()
        for client in [h.dhclient(wait=False) for h in (self.h_a1, self.h_b1)]:
            client.wait_bound()

    def launch(self, name, project, on):
        alloc = self.cli_json("instance", "launch", name, "--project", project)
        host = self.hosts_factory(port_name=alloc["port_name"], mac=alloc["mac"])
        self.cli("instance", "plug", name, "--bridge", self.br[on])
        return alloc, host

    def cli_json(self, *args):
        return self.env["nh1"].cli_json(*args)

    def hosts_of(self) -> dict:
        return {n["cidr"]: n["host"] for n in self.cli_json("network", "list")}

    def flows_mentioning(self, address: str) -> dict:
        return {host: [f for f in netlab.dump_flows(br) if address in f]
                for host, br in self.br.items()}

    def floating_held(self, address: str) -> dict:
        """Network host -> whether its router holds flows for floating IP ``address``."""
        return {host: bool(flows) for host, flows in self.flows_mentioning(address).items()}


@pytest.fixture(scope="module")
def lab(integration_ready, tmp_path_factory):
    from tests.integration.conftest import module_factories
    with module_factories(tmp_path_factory.mktemp("nethosts")) as (_bridges, envs, hosts):
        yield Lab(envs, hosts)


def captured(lab, own: str, other: str, act) -> tuple[object, dict]:
    """Run ``act()`` with tcpdump on both of the outside's interfaces (the far ends of the two
    public ports), filtered on TCP to or from ``INTERNET``/the floating IPs (``BPF``). Returns
    (what ``act`` returned, {iface: packets}) once ``own`` has captured something, plus
    ``RING_DELAY`` seconds: tcpdump's packet ring hands packets over up to 1 s late, and
    ``other`` must get the same chance before it is declared silent."""
    caps = {iface: lab.outside.capture(BPF, iface=iface) for iface in (own, other)}
    result = act()
    caps[own].wait_count(1)
    time.sleep(RING_DELAY)
    return result, {iface: cap.stop() for iface, cap in caps.items()}


def snat_source(lab, instance_host, own: str, other: str) -> tuple[str, dict]:
    """What the outside's server saw as the source of a TCP connection from the instance, and
    the packets each of the outside's interfaces carried meanwhile."""
    return captured(lab, own, other, lambda: wait_for(lambda: (lambda r: r.startswith("ok") and r)(
        probe(instance_host, "tcp", INTERNET, 8080, 3)), timeout=20, what="a connection out"))


def test_first_network_host_to_see_a_vif_claims_the_network(lab):
    # nh1's controller was the only network host when a1 was launched on alpha's network
    assert lab.claimed == "nh1"
    assert lab.hosts_of() == {ALPHA_NET: "nh1", BETA_NET: "nh2"}
    table = lab.cli("network", "list").stdout.splitlines()
    assert table[0].split()[-1] == "host" and {row.split()[-1] for row in table[1:]} == {"nh1", "nh2"}
    # nh2's controller, started since, took nothing from nh1
    assert "claimed" not in lab.env["nh2"].controller_log()
    assert "claimed: this is its network host nh1" in lab.env["nh1"].controller_log()


def check_snat_per_network_host(lab, instances) -> None:
    """Each of ``instances`` ((its namespace, its network host, that host's side of the
    outside, the other side)) connects out with its network host's routing_source_ip, through
    that host's public port only (shared with test_linux_network_hosts.py)."""
    server = serve(lab.outside, "tcp-server", 8080)
    try:
        for instance, host, own, other in instances:
            reply, seen = snat_source(lab, instance, own, other)
            assert reply == f"ok 8080 {HOSTS[host]['rsip']}"
            assert seen[own] and not seen[other], [p.summary() for p in seen[other]]
    finally:
        server.kill()


def associate_floating(lab, name: str, project: str, host: str) -> str:
    """A floating IP of ``host``'s pool, associated to instance ``name``."""
    address = lab.cli("floating", "allocate", "--project", project,
                      "--pool", f"pool-{host}").stdout.strip()
    lab.cli("floating", "associate", address, "--instance", name, "--project", project)
    return address


def check_floating_per_network_host(lab) -> dict:
    """a1 (alpha, nh1's) and b1 (beta, nh2's) get a floating IP of their network host's pool;
    each is reached through its own network host's public side only, which alone holds it
    (``lab.floating_held(address)``: {network host: True/False}), and each instance leaves with
    its floating IP there. Returns {instance: floating IP}."""
    fip = {name: associate_floating(lab, name, project, host)
           for name, project, host in (("a1", "alpha", "nh1"), ("b1", "beta", "nh2"))}
    serve(lab.h_a1, "tcp-server", 2222)
    serve(lab.h_b1, "tcp-server", 2222)
    out = serve(lab.outside, "tcp-server", 8080)
    try:
        for name, host, iface in (("a1", "nh1", "eth0"), ("b1", "nh2", "eth1")):
            address = fip[name]
            wait_for(lambda: lab.outside.ping(address, count=1, timeout=1), timeout=20,
                     what=f"the outside reaching {name}'s floating IP {address}")
            other_iface = "eth1" if iface == "eth0" else "eth0"
            # inbound: the instance sees the outside's own address on that public side
            reply, seen = captured(lab, iface, other_iface,
                                   lambda: probe(lab.outside, "tcp", address, 2222, 3))
            assert reply == f"ok 2222 {HOSTS[host]['gateway']}"
            assert seen[iface] and not seen[other_iface]
            # only its own network host holds it
            other = "nh2" if host == "nh1" else "nh1"
            assert lab.floating_held(address) == {host: True, other: False}
        # outbound: each leaves with its floating IP, through its own public port
        for instance, name, own, other in ((lab.h_a1, "a1", "eth0", "eth1"),
                                           (lab.h_b1, "b1", "eth1", "eth0")):
            reply, seen = snat_source(lab, instance, own, other)
            assert reply == f"ok 8080 {fip[name]}" and seen[own] and not seen[other]
    finally:
        out.kill()
    return fip


def test_each_instance_snat_leaves_through_its_own_hosts_public_port(lab):
    check_snat_per_network_host(lab, ((lab.h_a1, "nh1", "eth0", "eth1"),
                                      (lab.h_b1, "nh2", "eth1", "eth0")))


def test_moving_a_network_moves_its_snat(lab):
    server = serve(lab.outside, "tcp-server", 8080)
    try:
        lab.cli("network", "modify", "--fixed_range", BETA_NET, "--host", "nh1")
        wait_for(lambda: probe(lab.h_b1, "tcp", INTERNET, 8080, 3)
                 == f"ok 8080 {HOSTS['nh1']['rsip']}", timeout=20, what="b1 leaving through nh1")
        reply, seen = snat_source(lab, lab.h_b1, "eth0", "eth1")
        assert reply == f"ok 8080 {HOSTS['nh1']['rsip']}" and seen["eth0"] and not seen["eth1"]
        lab.cli("network", "modify", "--fixed_range", BETA_NET, "--host", "nh2")
        wait_for(lambda: probe(lab.h_b1, "tcp", INTERNET, 8080, 3)
                 == f"ok 8080 {HOSTS['nh2']['rsip']}", timeout=20, what="b1 back on nh2")
    finally:
        if lab.hosts_of()[BETA_NET] != "nh2":
            lab.cli("network", "modify", "--fixed_range", BETA_NET, "--host", "nh2")
        server.kill()


def test_each_network_host_routes_its_own_floating_ip(lab):
    check_floating_per_network_host(lab)
