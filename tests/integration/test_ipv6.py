"""IPv6 by real kernels and real clients, on both data planes (issue 12).

Every test runs on the OpenFlow backend (controller: RAs, ND, DHCPv6 by packet-in; flows for
port security and routing) and on the Linux backend (``sdn agent`` in a hypervisor namespace)
through the ``backend`` fixture. Every "never arrives" stands next to a positive control that
arrives in the same state.

The lab (``V6Lab``, one per test): VLAN networks with a /64 each (``use_ipv6``), project alpha's
instances a1 and a2, project beta's b1; the public side is an "outside" namespace that is
both the IPv4 external gateway (172.30.0.1) and the IPv6 one (2001:db8:5d::1), routing the
projects' /64s to the router's ``public_ip_v6`` (2001:db8:5d::2). Guests configure themselves:
the kernel's SLAAC from sdn's router advertisements, ``dhclient -6`` (always with the test's
own script, lease and pid files), and ``rdisc6`` reads the RA.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sqlite3
import sys
import time

import pytest

from tests.integration.netlab import random_suffix, wait_for

RSIP, GATEWAY = "172.30.0.2", "172.30.0.1"
PUBLIC_V6, OUTSIDE_V6 = "2001:db8:5d::2", "2001:db8:5d::1"
FIXED_RANGE, FIXED_RANGE_V6 = "10.37.0.0/24", "fd00:5d:37::/48"
DNS_V6 = "2001:db8:53::53"
MTU = 1400
RA_INTERVAL = 4     # the minimum sdn accepts (RFC 4861 §6.2.1): guests see an RA within seconds


class V6Lab:
    """A deployment with IPv6: alpha (a1, a2) and beta (b1) on their own VLAN network and /64,
    the outside on the public side. ``mode`` is the networks' ipv6_address_mode."""

    def __init__(self, backend, netns_host, mode="slaac", instances=("a1", "a2", "b1"),
                 outside=True, open_group=False, ra_interval=RA_INTERVAL):
        self.backend = backend
        pub = "sdnpb" + random_suffix(6)
        self.env = backend.env(config={"DEFAULT": {
            "network_manager": "vlan", "public_interface": pub, "routing_source_ip": RSIP,
            "external_gateway": GATEWAY, "use_ipv6": True, "fixed_range_v6": FIXED_RANGE_V6,
            "ipv6_address_mode": mode, "ipv6_ra_interval": ra_interval, "dns_v6": DNS_V6,
            "network_device_mtu": MTU, "public_ip_v6": f"{PUBLIC_V6}/64",
            "external_gateway_v6": OUTSIDE_V6}})
        self.env.cli("network", "create", "--label", "tenants", "--fixed_range_v4", FIXED_RANGE,
                     "--num_networks", "2", "--network_size", "64", "--vlan", "460")
        self.outside = None
        if outside:
            self.outside = netns_host(port_name=pub)
            backend.attach_public(self.env, self.outside, [f"{RSIP}/24", f"{PUBLIC_V6}/64"])
            self.outside.set_ip(f"{GATEWAY}/24")
            self.outside.run(["ip", "-6", "addr", "add", f"{OUTSIDE_V6}/64", "dev", "eth0",
                              "nodad"])
            self.outside.run(["ip", "-6", "route", "add", FIXED_RANGE_V6, "via", PUBLIC_V6])
        self.alloc, self.host = {}, {}
        groups = []
        if open_group:   # a stateless group admitting everything: only port security filters
            groups = ["--security-group", "open"]
            for project in ("alpha", "beta"):
                self.env.cli("secgroup", "create", "open", "--project", project, "--stateless")
                for ether in ("IPv4", "IPv6"):
                    self.env.cli("secgroup-rule", "add", "open", "--project", project,
                                 "--direction", "ingress", "--ethertype", ether)
        for name in instances:
            project = "alpha" if name.startswith("a") else "beta"
            alloc = self.env.cli_json("instance", "launch", name, "--project", project, *groups)
            self.alloc[name], self.host[name] = backend.plug(self.env, alloc)
        self.v6 = {name: self.derived_address(a) for name, a in self.alloc.items()}
        backend.start(self.env)

    # -- state
    def network_v6(self, project: str) -> tuple[str, str]:
        """(cidr_v6, gateway_v6) of ``project``'s network, as stored."""
        with sqlite3.connect(self.env.workdir / "sdn.sqlite") as db:
            row = db.execute("SELECT cidr_v6, gateway_v6 FROM networks WHERE project_id = ?",
                             (project,)).fetchone()
        assert row and row[0], f"{project}'s network has no IPv6 prefix"
        return row

    def derived_address(self, alloc) -> str:
        """The instance's address as sdn derives it (rfc2462: EUI-64 of its MAC)."""
        from sdn.ipv6 import to_global
        project = "alpha" if alloc["instance"].startswith("a") else "beta"
        return to_global(self.network_v6(project)[0], alloc["mac"], project)

    # -- guests
    def global_addresses(self, name: str) -> list[str]:
        """Global IPv6 addresses of ``name``'s eth0 that finished DAD."""
        out = json.loads(self.host[name].run(["ip", "-j", "-6", "addr", "show", "dev", "eth0",
                                              "scope", "global"]).stdout or "[]")
        return [a["local"] for link in out for a in link.get("addr_info", [])
                if "local" in a and not a.get("tentative") and not a.get("dadfailed")]

    def wait_slaac(self, name: str, timeout: float = 30) -> str:
        """Wait until the kernel of ``name`` configured its derived address from an RA."""
        want = self.v6[name]
        wait_for(lambda: want in self.global_addresses(name), timeout,
                 what=f"{name} to autoconfigure {want} (has {self.global_addresses(name)})")
        return want

    def ping6(self, src: str, dst: str, count: int = 1, timeout: float = 2) -> bool:
        host = self.host[src] if src in self.host else src
        p = host.run(["ping", "-6", "-n", "-q", "-c", str(count), "-W", str(int(timeout)), dst],
                     check=False, timeout=timeout * count + 10)
        return p.returncode == 0

    def ping6_eventually(self, src, dst, timeout: float = 15) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping6(src, dst):
                return True
        return False


def _wait_link_local(host, timeout: float = 10) -> None:
    """Until eth0's link-local address finished DAD (a socket cannot send from it before)."""
    def ready():
        out = json.loads(host.run(["ip", "-j", "-6", "addr", "show", "dev", "eth0", "scope",
                                   "link"]).stdout or "[]")
        return any("local" in a and not a.get("tentative")
                   for link in out for a in link.get("addr_info", []))
    wait_for(ready, timeout, what=f"{host.name}'s link-local address to finish DAD")


def _rdisc6(host) -> str:
    """rdisc6's report of the router advertisement answering its solicitation."""
    _wait_link_local(host)
    p = host.run(["rdisc6", "-1", "-w", "2000", "-r", "3", "eth0"], check=False, timeout=20)
    assert p.returncode == 0, f"rdisc6 got no router advertisement: {p.stdout}{p.stderr}"
    return p.stdout


# ---- SLAAC, the peer and isolation ---------------------------------------------------------

def test_slaac_address_and_ping_to_the_project_peer_not_another_project(backend, netns_host):
    lab = V6Lab(backend, netns_host, outside=False)
    for name in lab.host:
        lab.wait_slaac(name)
    assert lab.ping6_eventually("a1", lab.v6["a2"]), "a1 cannot ping its project peer a2"
    assert lab.ping6("a2", lab.v6["a1"])
    # another project's instance: never, while the peer keeps answering (positive control)
    assert not lab.ping6("a1", lab.v6["b1"], count=2)
    assert not lab.ping6("b1", lab.v6["a1"], count=2)
    assert lab.ping6("a1", lab.v6["a2"])
    # the default route is the gateway's link-local address, learned from the RA
    routes = json.loads(lab.host["a1"].run(["ip", "-j", "-6", "route", "show", "default"]).stdout)
    assert routes and routes[0]["gateway"].startswith("fe80::"), routes


def test_rdisc6_sees_prefix_mtu_and_rdnss(backend, netns_host):
    lab = V6Lab(backend, netns_host, instances=("a1",), outside=False)
    report = _rdisc6(lab.host["a1"])
    cidr, _gateway = lab.network_v6("alpha")
    for pattern in (rf"Prefix\s+: {cidr}\n\s+On-link\s+:\s+Yes\n\s+Autonomous address conf.:\s+Yes",
                    rf"MTU\s+:\s+{MTU} bytes", rf"Recursive DNS server\s+: {DNS_V6}",
                    r"DNS search list\s+: novalocal", r"Stateful address conf.\s+:\s+No",
                    rf"Router lifetime\s+:\s+{3 * RA_INTERVAL} ", r"from fe80::"):
        assert re.search(pattern, report), f"{pattern!r} not in:\n{report}"


@pytest.mark.parametrize("backend", ["ovs"], indirect=True)
def test_a_newly_plugged_port_gets_a_router_advertisement_promptly(backend, netns_host):
    """With RAs 30 minutes apart and the guest's own solicitations off, only the controller's
    RA to a port it has not advertised to yet can configure the guest within seconds."""
    lab = V6Lab(backend, netns_host, instances=(), outside=False, ra_interval=1800)
    alloc = lab.env.cli_json("instance", "launch", "a1", "--project", "alpha")
    lab.v6["a1"] = lab.derived_address(alloc)
    host = netns_host(port_name=alloc["port_name"], mac=alloc["mac"])
    host.run(["sysctl", "-qw", "net.ipv6.conf.eth0.router_solicitations=0"])
    lab.alloc["a1"], lab.host["a1"] = alloc, host
    lab.env.cli("instance", "plug", "a1", "--bridge", lab.env.bridge.name)
    lab.wait_slaac("a1", timeout=10)


@pytest.mark.parametrize("backend", ["linux"], indirect=True)
def test_a_newly_plugged_port_gets_a_router_advertisement_promptly_linux(backend, netns_host):
    """The same on the Linux backend: the agent's RA server advertises to a tap as soon as it
    serves it (``sdn.linux.ipv6_router``)."""
    lab = V6Lab(backend, netns_host, instances=(), outside=False, ra_interval=1800)
    alloc = lab.env.cli_json("instance", "launch", "a1", "--project", "alpha")
    lab.v6["a1"] = lab.derived_address(alloc)
    host = netns_host(port_name=alloc["port_name"], mac=alloc["mac"])
    host.run(["sysctl", "-qw", "net.ipv6.conf.eth0.router_solicitations=0"])
    lab.alloc["a1"], lab.host["a1"] = backend.plug_host(lab.env, alloc, host)
    lab.wait_slaac("a1", timeout=10)


# ---- DHCPv6 --------------------------------------------------------------------------------

DHCLIENT6_SCRIPT = """#!/bin/sh
# the test's own dhclient -6 script: records what dhclient was given, configures nothing
n=$(ls "{events}" | wc -l)
env -0 > "{events}/.$$" && mv "{events}/.$$" "{events}/$(printf %04d "$n")-$reason"
exit 0
"""


def _dhclient6(host, *flags: str, timeout: float = 25) -> dict[str, str]:
    """Run ``dhclient -6 <flags> -1`` in ``host`` with the test's own script, lease and pid
    files; return the environment of its first BOUND6/RENEW6/... event."""
    from tests.integration.netlab import read_dhclient_events
    directory = host.workdir / f"dhclient6-{random_suffix(4)}"
    (directory / "events").mkdir(parents=True)
    script = directory / "script"
    script.write_text(DHCLIENT6_SCRIPT.format(events=directory / "events"))
    script.chmod(0o755)
    (directory / "dhclient6.conf").write_text("timeout 20;\nretry 1;\n")
    argv = ["dhclient", "-6", *flags, "-v", "-d", "-1", "-cf", str(directory / "dhclient6.conf"),
            "-sf", str(script), "-lf", str(directory / "leases"), "-pf", str(directory / "pid"),
            "eth0"]
    log = open(directory / "log", "wb")
    proc = host.popen(argv, stdout=log, stderr=log)
    try:
        def bound():
            for ev in read_dhclient_events(directory / "events"):
                if ev.get("reason") in ("BOUND6", "RENEW6", "REBIND6", "REBOOT6"):
                    return ev
            if proc.poll() is not None:
                raise AssertionError(f"dhclient -6 exited {proc.returncode}: "
                                     f"{(directory / 'log').read_text(errors='replace')}")
            return None
        return wait_for(bound, timeout, what=f"dhclient -6 {' '.join(flags)} to bind")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except Exception:
            proc.kill()
        log.close()


def test_dhcpv6_stateless_gives_dns(backend, netns_host):
    lab = V6Lab(backend, netns_host, mode="dhcpv6-stateless", instances=("a1",), outside=False)
    lab.wait_slaac("a1")   # stateless: the address still comes from SLAAC (A flag), DNS from DHCPv6
    event = _dhclient6(lab.host["a1"], "-S")
    assert DNS_V6 in event.get("new_dhcp6_name_servers", "").split(), event
    assert "novalocal" in event.get("new_dhcp6_domain_search", ""), event


def test_dhcpv6_stateful_gives_the_derived_address(backend, netns_host):
    lab = V6Lab(backend, netns_host, mode="dhcpv6-stateful", instances=("a1",), outside=False)
    report = _rdisc6(lab.host["a1"])
    assert re.search(r"Stateful address conf.\s+:\s+Yes", report), report
    event = _dhclient6(lab.host["a1"])
    assert event.get("new_ip6_address") == lab.v6["a1"], event
    assert DNS_V6 in event.get("new_dhcp6_name_servers", "").split(), event


# ---- the router --------------------------------------------------------------------------

def test_outside_reaches_an_instance_over_ipv6_through_the_router_and_back(backend, netns_host):
    lab = V6Lab(backend, netns_host, instances=("a1", "b1"))
    for name in lab.host:
        lab.wait_slaac(name)
    # the default group admits same-group traffic only: let ICMPv6 in from anywhere for alpha
    lab.env.cli("secgroup-rule", "add", "default", "--project", "alpha", "--direction", "ingress",
                "--ethertype", "IPv6", "--protocol", "icmpv6")
    backend.wait_synced(lab.env)
    assert lab.ping6_eventually(lab.outside, lab.v6["a1"]), "outside cannot reach a1 over IPv6"
    assert lab.ping6_eventually("a1", OUTSIDE_V6), "a1 cannot reach the outside over IPv6"
    # no NAT66: the outside sees the instance's own address
    cap = lab.outside.capture("icmp6 and ip6[40] == 128")
    assert lab.ping6("a1", OUTSIDE_V6)
    sources = {p["IPv6"].src for p in cap.wait_count(1)}
    assert sources == {lab.v6["a1"]}, sources
    # beta has no such rule: routed to its /64 yet refused by its security group
    assert not lab.ping6(lab.outside, lab.v6["b1"], count=2)
    assert lab.ping6(lab.outside, lab.v6["a1"])


# ---- spoofing: crafted packets from a1, observed at a2 ------------------------------------
# The instances are in a stateless group admitting everything, so what stops a spoof is port
# security alone (with the default group, conntrack or same-net rules would hide some).

SCAPY_SEND = r"""
import sys
from scapy.all import Ether, IPv6, ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, \
    ICMPv6ND_RA, ICMPv6NDOptPrefixInfo, ICMPv6NDOptSrcLLAddr, UDP, Raw, sendp
from scapy.layers.dhcp6 import DHCP6_Advertise, DHCP6OptServerId, DHCP6OptClientId, DUID_LL
kind, mac, src, dst, arg = sys.argv[1:6]
eth = Ether(src=mac, dst="33:33:00:00:00:01" if dst.startswith("ff") else arg.split("|")[0])
if kind == "echo":
    pkt = eth / IPv6(src=src, dst=dst) / ICMPv6EchoRequest(data=b"sdn-spoof-" + src.encode())
elif kind == "na":
    pkt = eth / IPv6(src=src, dst=dst) / ICMPv6ND_NA(tgt=arg, R=0, S=0, O=1) / \
        ICMPv6NDOptDstLLAddr(lladdr=mac)
elif kind == "ra":
    pkt = eth / IPv6(src=src, dst=dst) / ICMPv6ND_RA(routerlifetime=1800) / \
        ICMPv6NDOptSrcLLAddr(lladdr=mac) / ICMPv6NDOptPrefixInfo(prefix="2001:db8:bad::", prefixlen=64)
elif kind == "advertise":
    pkt = eth / IPv6(src=src, dst=dst) / UDP(sport=int(arg.split("|")[1]), dport=546) / \
        DHCP6_Advertise(trid=0x5d5d5d) / DHCP6OptServerId(duid=DUID_LL(lladdr=mac))
sendp(pkt, iface="eth0", count=3, inter=0.05, verbose=False)
"""


def _send(lab, name, kind, src, dst, arg=""):
    host = lab.host[name]
    host.run([sys.executable, "-c", SCAPY_SEND, kind, host.mac, src, dst, arg], timeout=60)


def _link_local(mac: str) -> str:
    from sdn.ipv6 import link_local
    return link_local(mac)


def _seen(cap, sender, predicate, wait: float = 2.0) -> list:
    """Packets ``cap`` saw from ``sender``'s MAC (not the capturing host's own) that match."""
    time.sleep(wait)
    return [p for p in cap.packets() if p.haslayer("Ether") and p["Ether"].src == sender.mac
            and predicate(p)]


def _global_source_of_another_never_arrives(lab):
    a2 = lab.host["a2"]
    cap = a2.capture("icmp6 and ip6[40] == 128")
    dst = lab.v6["a2"]
    _send(lab, "a1", "echo", lab.v6["b1"], dst, a2.mac)          # another's address
    _send(lab, "a1", "echo", "fd00:5d:37:0:dead::1", dst, a2.mac)  # nobody's address
    _send(lab, "a1", "echo", lab.v6["a1"], dst, a2.mac)          # its own: control
    seen = {p["IPv6"].src for p in _seen(cap, lab.host["a1"], lambda p: p.haslayer("IPv6"))}
    assert lab.v6["a1"] in seen, "the positive control (a1's own address) did not arrive"
    assert seen == {lab.v6["a1"]}, seen


def _neighbor_advertisement_for_another_address_never_arrives(lab):
    a2 = lab.host["a2"]
    cap = a2.capture("icmp6 and ip6[40] == 136")
    src = _link_local(lab.host["a1"].mac)
    _send(lab, "a1", "na", src, "ff02::1", lab.v6["b1"])
    _send(lab, "a1", "na", src, "ff02::1", lab.v6["a2"])
    _send(lab, "a1", "na", src, "ff02::1", lab.v6["a1"])          # its own: control
    targets = {p["ICMPv6ND_NA"].tgt for p in _seen(cap, lab.host["a1"],
                                                           lambda p: p.haslayer("ICMPv6ND_NA"))}
    assert lab.v6["a1"] in targets, "the positive control (NA for a1's own address) did not arrive"
    assert not targets & {lab.v6["b1"], lab.v6["a2"]}, targets
    # a2 still reaches a1 ... and b1's address was not taken over by a1's MAC at a2
    neigh = a2.run(["ip", "-6", "neigh", "show", "dev", "eth0"]).stdout
    assert not any(lab.v6["b1"] in line and lab.host["a1"].mac in line
                   for line in neigh.splitlines()), neigh


def _router_advertisement_from_an_instance_never_arrives(lab):
    a2 = lab.host["a2"]
    cap = a2.capture("icmp6 and (ip6[40] == 134 or ip6[40] == 128)")
    src = _link_local(lab.host["a1"].mac)
    _send(lab, "a1", "ra", src, "ff02::1")
    _send(lab, "a1", "echo", src, "ff02::1")                      # control: a1 reaches a2
    time.sleep(RA_INTERVAL + 1.0)
    packets = [p for p in cap.packets() if p.haslayer("IPv6")]
    from_a1 = [p for p in packets if p["IPv6"].src == src]
    assert any(p.haslayer("ICMPv6EchoRequest") for p in from_a1), "control echo did not arrive"
    assert not any(p.haslayer("ICMPv6ND_RA") for p in from_a1), "a1's RA arrived at a2"
    # sdn's own RAs keep arriving (the network's real router)
    assert any(p.haslayer("ICMPv6ND_RA") and p["IPv6"].src != src for p in packets)
    assert not any(ipaddress.IPv6Address(a) in ipaddress.IPv6Network("2001:db8:bad::/64")
                   for a in lab.global_addresses("a2"))


def _dhcpv6_advertise_from_an_instance_never_arrives(lab):
    a2 = lab.host["a2"]
    cap = a2.capture("udp and dst port 546")
    src, dst = _link_local(lab.host["a1"].mac), _link_local(a2.mac)
    _send(lab, "a1", "advertise", src, dst, f"{a2.mac}|547")      # a DHCPv6 server message
    _send(lab, "a1", "advertise", src, dst, f"{a2.mac}|5470")     # same bytes, not port 547
    sports = {p["UDP"].sport for p in _seen(cap, lab.host["a1"], lambda p: p.haslayer("UDP"))}
    assert 5470 in sports, "the positive control (udp 5470 -> 546) did not arrive"
    assert 547 not in sports, sports


def test_ipv6_spoofs_never_arrive(backend, netns_host):
    """One lab, four attacks from a1 observed at a2, each next to its positive control."""
    lab = V6Lab(backend, netns_host, instances=("a1", "a2", "b1"), outside=False,
                open_group=True)
    for name in lab.host:
        lab.wait_slaac(name)
    assert lab.ping6_eventually("a1", lab.v6["a2"])
    _global_source_of_another_never_arrives(lab)
    _neighbor_advertisement_for_another_address_never_arrives(lab)
    _router_advertisement_from_an_instance_never_arrives(lab)
    _dhcpv6_advertise_from_an_instance_never_arrives(lab)
