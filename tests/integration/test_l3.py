"""Floating IPs, default SNAT, hairpin, metadata and cloudpipe VPN, for both backends.

OVS: through the router flows. Linux: through nova's iptables rules in the hypervisor namespace,
whose public_interface is the outside's veth.

An "outside" namespace on the public port plays the internet: it is the external gateway
(172.30.0.1), runs the metadata HTTP server, and talks to floating IPs. The router is
sdn's: routing_source_ip 172.30.0.2, floating IPs 172.30.0.64/28, VPN endpoint 172.30.0.3.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.integration.netlab import random_suffix, wait_for
from tests.integration.peers import probe, serve

RSIP, GATEWAY, VPN_IP = "172.30.0.2", "172.30.0.1", "172.30.0.3"
INTERNET = "172.30.0.10"   # a host beyond the gateway (the gateway itself is metadata_host,
                           # which nova never SNATs to)
FLOATING_RANGE = "172.30.0.64/28"

class L3Lab:
    def __init__(self, backend, netns_host):
        self.backend = backend
        pub = "sdnpb" + random_suffix(6)
        self.env = backend.env(config={"DEFAULT": {
            "network_manager": "vlan", "public_interface": pub, "routing_source_ip": RSIP,
            "external_gateway": GATEWAY, "metadata_host": GATEWAY, "metadata_port": 8775,
            "vpn_ip": VPN_IP, "vpn_start": 5000, "floating_range": FLOATING_RANGE}})
        self.env.cli("network", "create", "--label", "tenants", "--fixed_range_v4",
                     "10.34.0.0/24", "--num_networks", "2", "--network_size", "64",
                     "--vlan", "400")
        self.env.cli("floating", "create", FLOATING_RANGE)
        self.outside = netns_host(port_name=pub)
        # Linux: the network host's own public addresses (nova: my_ip = routing_source_ip = vpn_ip)
        backend.attach_public(self.env, self.outside, [f"{RSIP}/24", f"{VPN_IP}/32"])
        self.outside.set_ip(f"{GATEWAY}/24")
        self.outside.set_ip(f"{INTERNET}/24")
        # The network host is the route back to the fixed ranges (nova's model).
        self.outside.run(["ip", "route", "add", "10.34.0.0/24", "via", RSIP])
        # What nova users did first: open the project's default group to the world (these tests
        # are about routing; tests/integration/test_security_groups.py covers the firewall)
        for rule in (("icmp", "-1", "-1"), ("tcp", "1", "65535"), ("udp", "1", "65535")):
            self.env.cli("secgroup-rule", "add", "default", "--project", "alpha", *rule,
                         "0.0.0.0/0")
        self.a1, self.h_a1 = backend.launch(self.env, "a1", "alpha")
        self.a2, self.h_a2 = backend.launch(self.env, "a2", "alpha")
        self.b1, self.h_b1 = backend.launch(self.env, "b1", "beta")
        backend.start(self.env)
        clients = [h.dhclient(wait=False) for h in (self.h_a1, self.h_a2, self.h_b1)]
        for client in clients:
            client.wait_bound()
        self.f1 = self.floating("alpha", "a1")

    def floating(self, project, instance):
        address = self.env.cli("floating", "allocate", "--project", project).stdout.strip()
        self.env.cli("floating", "associate", address, "--instance", instance,
                     "--project", project)
        return address

    def wait_reachable(self, host, address, what):
        wait_for(lambda: host.ping(address, count=1, timeout=1), timeout=15, what=what)

    def wait_forwarding_gone(self, ovs_match: str, linux_match: str, what: str):
        """Wait until no flow (OVS) / no iptables rule of the hypervisor (Linux) matches."""
        if self.backend.name == "ovs":
            wait_for(lambda: not [f for f in self.env.bridge.dump_flows() if ovs_match in f],
                     timeout=10, what=what)
        else:
            wait_for(lambda: linux_match not in self.env.hv.iptables_save(), timeout=10, what=what)


@pytest.fixture
def lab(backend, netns_host):
    return L3Lab(backend, netns_host)


def test_floating_ip_inbound_outbound_and_disassociate(lab):
    server = serve(lab.outside, "tcp-server", 8080)
    a1_server = serve(lab.h_a1, "tcp-server", 2222)
    lab.wait_reachable(lab.outside, lab.f1, "ping from outside to the floating IP")
    # inbound TCP reaches a1, which sees the outside's real address
    assert probe(lab.outside, "tcp", lab.f1, 2222, 3) == f"ok 2222 {GATEWAY}"
    # a1's own connections leave with its floating IP as source
    assert probe(lab.h_a1, "tcp", INTERNET, 8080, 3) == f"ok 8080 {lab.f1}"
    # a second floating IP on the same fixed IP works too
    f1b = lab.floating("alpha", "a1")
    lab.wait_reachable(lab.outside, f1b, "ping to the second floating IP")
    assert probe(lab.outside, "tcp", f1b, 2222, 3) == f"ok 2222 {GATEWAY}"
    # disassociation cuts inbound at once (no lingering ARP answer or DNAT)
    lab.env.cli("floating", "disassociate", lab.f1, "--project", "alpha")
    lab.wait_forwarding_gone(f"nw_dst={lab.f1}", f"{lab.f1}/32", "the floating IP's flows/rules to go")
    assert not lab.outside.ping(lab.f1, count=2, timeout=1)
    assert lab.outside.ping(f1b)
    server.kill(), a1_server.kill()


def test_default_snat_and_icmp_errors(lab):
    serve(lab.outside, "tcp-server", 8080)
    serve(lab.outside, "udp-echo", 5353, INTERNET)
    lab.wait_reachable(lab.h_a2, INTERNET, "a2 reaching the outside")
    assert probe(lab.h_a2, "tcp", INTERNET, 8080, 3) == f"ok 8080 {RSIP}"
    assert probe(lab.h_a2, "udp", INTERNET, 5353, 3) == f"ok {RSIP} probe"
    # an ICMP port unreachable for a SNATed flow reaches the instance (embedded header un-NATed)
    assert probe(lab.h_a2, "udp", INTERNET, 5399, 3) == "refused"
    # ... and one for a DNATed flow reaches the outside from the floating IP
    lab.wait_reachable(lab.outside, lab.f1, "ping to the floating IP")
    assert probe(lab.outside, "udp", lab.f1, 5399, 3) == "refused"


def test_hairpin_to_own_projects_floating_ip(lab):
    serve(lab.h_a1, "tcp-server", 2222)
    lab.wait_reachable(lab.h_a2, lab.f1, "a2 pinging a1's floating IP")
    # a2 has no floating IP: a1 sees it as routing_source_ip, and the reply finds its way back
    assert probe(lab.h_a2, "tcp", lab.f1, 2222, 3) == f"ok 2222 {RSIP}"


def test_projects_stay_isolated_through_the_router(lab):
    lab.wait_reachable(lab.h_a2, INTERNET, "a2 reaching the outside")
    assert not lab.h_b1.ping(lab.a1["address"], count=2, timeout=1)
    assert not lab.h_a1.ping(lab.b1["address"], count=2, timeout=1)
    assert lab.h_a1.ping(lab.a2["address"])


def test_metadata_reaches_metadata_host_with_the_fixed_ip(lab):
    http = lab.outside.popen([sys.executable, "-u", "-m", "http.server", "8775", "--bind", GATEWAY],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: probe(lab.outside, "tcp", GATEWAY, 8775).startswith("ok")
             or lab.outside.run(["ss", "-ltnH", "sport = :8775"]).stdout.strip(), timeout=10,
             what="the metadata server to listen")
    fetch = ("import urllib.request;"
             "print(urllib.request.urlopen('http://169.254.169.254/', timeout=5).status)")
    wait_for(lambda: lab.h_a1.run([sys.executable, "-c", fetch], check=False).stdout.strip()
             == "200", timeout=15, what="a1 fetching metadata")
    http.terminate()
    log = http.communicate(timeout=5)[0]
    assert f'{lab.a1["address"]} - - ' in log, log


def test_cloudpipe_vpn_port_forward(lab, netns_host):
    alloc = lab.env.cli_json("vpn", "run", "alpha")
    _, vpn_host = lab.backend.plug(lab.env, alloc)
    vpn_host.dhclient()
    assert vpn_host.ips() == [alloc["address"]]
    serve(vpn_host, "udp-echo", 1194)
    (row,) = [r for r in lab.env.cli_json("vpn", "list") if r["project"] == "alpha"]
    public_ip, public_port = row["public"].split(":")
    assert row["state"] == "running" and public_ip == VPN_IP
    def answered():
        return probe(lab.outside, "udp", public_ip, public_port, 3)
    reply = wait_for(lambda: answered().startswith("ok") and answered(),
                     timeout=15, what="the VPN port forward to answer")
    assert reply == f"ok {GATEWAY} probe"   # the VPN instance saw the real client address
    # deleting the VPN instance removes its forwarding (nova never did)
    unplug = ["--bridge", lab.env.bridge.name] if lab.backend.name == "ovs" else []
    lab.env.cli("instance", "delete", alloc["instance"], *unplug)
    lab.wait_forwarding_gone(f"tp_dst={public_port}", f"--dport {public_port}",
                             "the VPN forwarding flows/rules to go")
    if lab.backend.name == "linux":
        assert "--dport 1194" not in lab.env.hv.iptables_save()
