"""``sdn metadata`` behind the 169.254.169.254 forwarding, on both backends.

The lab is test_l3.py's: an "outside" namespace on the public port is the external gateway
and metadata_host (172.30.0.1); ``sdn metadata`` runs there (``ip netns exec OUTSIDE sdn
metadata``), bound to metadata_host:metadata_port. A guest's request to 169.254.169.254:80 is
DNATed by sdn's router (OVS flows / the hypervisor's iptables) with its fixed IP kept as the
source, which is how the service knows whose data to answer.

FlatManager + flat_injected: there is no DHCP, and anti-spoofing admits nothing but the fixed IP
as a guest's source, so no guest reaches any L3 service before it knows its address; nova's
flat_injected wrote the address into the image. The test plays that injection with the least
it can: the fixed IP as a /32 and the gateway as an on-link next hop for 169.254.169.254 only.
Everything else (the prefix, the default route, DNS, the MTU) the guest's script takes from
network_data.json, then drops the seed. On the Linux backend the operator gives the flat bridge
the gateway address (nova's FlatManager set up no gateway; its hosts had one on the bridge).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.netlab import random_suffix, wait_for

RSIP, GATEWAY, INTERNET = "172.30.0.2", "172.30.0.1", "172.30.0.10"
DNS = "172.30.0.53"     # only written into the guest's resolver file, never queried
PORT = 8775
BASE = "http://169.254.169.254"

# The guest's side: fetch a path (prints the status line "STATUS" then the body).
FETCH = r"""
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
        print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code)
"""

# What a flat_injected guest runs at boot (cloud-init's job, in ~20 lines): read
# network_data.json through 169.254.169.254, configure the link it names, drop the seed.
CONFIGURE = r"""
import ipaddress, json, subprocess, sys, urllib.request
iface, resolv = sys.argv[1], sys.argv[2]
doc = json.load(urllib.request.urlopen("http://169.254.169.254/openstack/latest/network_data.json",
                                       timeout=3))
mac = open(f"/sys/class/net/{iface}/address").read().strip()
(link,) = [l for l in doc["links"] if l["ethernet_mac_address"] == mac]
def ip(*a):
    subprocess.run(["ip", *a], check=True)
ip("route", "flush", "dev", iface)
ip("-4", "addr", "flush", "dev", iface)
if link.get("mtu"):
    ip("link", "set", iface, "mtu", str(link["mtu"]))
for net in doc["networks"]:
    if net["link"] != link["id"] or net["type"] != "ipv4":
        continue
    prefix = ipaddress.IPv4Network(f"0.0.0.0/{net['netmask']}").prefixlen
    ip("addr", "add", f"{net['ip_address']}/{prefix}", "dev", iface)
    for r in net["routes"]:
        dest = str(ipaddress.IPv4Network(f"{r['network']}/{r['netmask']}"))
        ip("route", "add", "default" if dest == "0.0.0.0/0" else dest, "via", r["gateway"])
with open(resolv, "w") as f:
    f.writelines(f"nameserver {s['address']}\n" for s in doc["services"] if s["type"] == "dns")
print("configured", link["id"])
"""


def fetch(host, path):
    p = host.run([sys.executable, "-c", FETCH, BASE + path], check=False, timeout=20)
    status, _, body = p.stdout.partition("\n")
    return status.strip(), body.rstrip("\n")


class MetadataLab:
    def __init__(self, backend, netns_host, manager):
        self.backend, self.manager = backend, manager
        pub = "sdnpb" + random_suffix(6)
        self.env = backend.env(config={"DEFAULT": {
            "network_manager": manager, "flat_injected": manager == "flat",
            "public_interface": pub, "routing_source_ip": RSIP, "external_gateway": GATEWAY,
            "metadata_host": GATEWAY, "metadata_port": PORT}})
        if manager == "flat":
            self.cidr = "10.37.0.0/26"
            self.bridge = backend.flat_bridge(self.env)
            self.env.cli("network", "create", "--label", "flat", "--fixed_range_v4", self.cidr,
                         "--network_size", "64", "--bridge", self.bridge, "--dns1", DNS)
        else:
            self.cidr = "10.35.0.0/26"
            self.env.cli("network", "create", "--label", "tenants", "--fixed_range_v4", self.cidr,
                         "--num_networks", "1", "--network_size", "64", "--vlan", "410",
                         "--dns1", DNS)
        self.outside = netns_host(port_name=pub)
        backend.attach_public(self.env, self.outside, [f"{RSIP}/24"])
        self.outside.set_ip(f"{GATEWAY}/24")
        self.outside.set_ip(f"{INTERNET}/24")
        self.outside.run(["ip", "route", "add", self.cidr, "via", RSIP])
        self.a1, self.h_a1 = backend.launch(self.env, "a1", "alpha")
        backend.start(self.env)
        if manager == "flat" and backend.name == "linux":
            # the operator's gateway address on the flat bridge (FlatManager sets up none)
            self.env.hv.run(["ip", "addr", "add", f"{self.a1['gateway']}/26", "dev", self.bridge])
        self.log = self.env.workdir / "metadata.log"
        with open(self.log, "ab") as out:
            self.service = self.outside.popen(
                [self.env.sdn_exe, "--config-file", str(self.env.config_file), "metadata"],
                stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: self.service.poll() is None and "listening on" in self.log_text(),
                 timeout=15, what="sdn metadata to listen")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop_service(self) -> int:
        self.service.terminate()
        return self.service.wait(timeout=10)


@pytest.fixture
def lab_factory(backend, netns_host):
    return lambda manager: MetadataLab(backend, netns_host, manager)


def _check_document(doc: dict, alloc: dict, link_type: str):
    assert doc["links"] == [{"id": alloc["port_name"], "vif_id": alloc["vif_uuid"], "type": link_type,
                             "mtu": None, "ethernet_mac_address": alloc["mac"]}]
    assert doc["networks"] == [{
        "id": "network0", "type": "ipv4", "link": alloc["port_name"],
        "ip_address": alloc["address"], "netmask": "255.255.255.192",
        "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": alloc["gateway"]}],
        "network_id": str(alloc["network_id"]), "services": [{"type": "dns", "address": DNS}]}]
    assert doc["services"] == [{"type": "dns", "address": DNS}]


def test_dhcp_guest_fetches_network_data_matching_its_allocation(lab_factory):
    lab = lab_factory("vlan")
    a1, h = lab.a1, lab.h_a1
    h.dhclient()
    assert h.ips() == [a1["address"]]
    status, body = wait_for(lambda: (r := fetch(h, "/openstack/latest/network_data.json"))[0] == "200"
                            and r, timeout=15, what="a1 fetching network_data.json")
    _check_document(json.loads(body), a1, "ovs" if lab.backend.name == "ovs" else "bridge")
    # the same data the DHCP server handed out
    assert (h.default_route(), h.addresses()) == (a1["gateway"], [f"{a1['address']}/26"])
    assert json.loads(fetch(h, "/openstack/latest/meta_data.json")[1])["name"] == "a1"
    assert fetch(h, "/latest/meta-data/local-ipv4") == ("200", a1["address"])
    assert fetch(h, "/latest/meta-data/public-ipv4") == ("200", "")
    assert fetch(h, "/latest/meta-data/hostname") == ("200", "a1.novalocal")
    assert fetch(h, "/latest/meta-data/instance-id")[1].startswith("i-")
    assert fetch(h, "/openstack/latest/user_data")[0] == "404"
    # a source that is no instance's fixed IP (the outside itself) gets a 404
    direct = lab.outside.run([sys.executable, "-c", FETCH,
                              f"http://{GATEWAY}:{PORT}/openstack/latest/network_data.json"],
                             check=False)
    assert direct.stdout.strip() == "404"
    assert lab.stop_service() == 0
    log = lab.log_text()
    assert f"{a1['address']} GET '/openstack/latest/network_data.json' 200 " in log
    assert f"{GATEWAY} GET '/openstack/latest/network_data.json' 404 " in log
    assert "Traceback" not in log and "metadata service stopped" in log


def test_flat_injected_guest_configures_itself_from_network_data(lab_factory):
    lab = lab_factory("flat")
    a1, h = lab.a1, lab.h_a1
    # the injected seed: the fixed IP alone, and the gateway as the on-link next hop of
    # 169.254.169.254 (nothing else: no prefix, no default route, no DNS)
    h.run(["ip", "addr", "add", f"{a1['address']}/32", "dev", "eth0"])
    h.run(["ip", "route", "add", a1["gateway"], "dev", "eth0", "scope", "link"])
    h.run(["ip", "route", "add", "169.254.169.254/32", "via", a1["gateway"], "dev", "eth0"])
    assert h.default_route() is None
    resolv = h.workdir / "resolv.conf"
    wait_for(lambda: fetch(h, "/openstack/latest/network_data.json")[0] == "200", timeout=15,
             what="a1 reaching the metadata service")
    out = h.run([sys.executable, "-c", CONFIGURE, "eth0", str(resolv)]).stdout
    assert out.strip() == f"configured {a1['port_name']}"
    assert h.addresses() == [f"{a1['address']}/26"]
    assert h.default_route() == a1["gateway"]
    assert resolv.read_text() == f"nameserver {DNS}\n"
    # configured from the document alone: the metadata path now goes through the default route
    h.run(["ip", "route", "show"])
    assert "169.254.169.254" not in h.run(["ip", "route", "show"]).stdout
    assert fetch(h, "/latest/meta-data/local-ipv4") == ("200", a1["address"])
    _check_document(json.loads(fetch(h, "/openstack/latest/network_data.json")[1]), a1,
                    "ovs" if lab.backend.name == "ovs" else "bridge")
    assert lab.stop_service() == 0
    assert "Traceback" not in lab.log_text()
