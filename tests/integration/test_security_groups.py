"""Security groups by real traffic, on both data planes: the contract of ``sdn.firewall``.

Every test runs on the OpenFlow backend (``sdn.flows.security_groups``) and on the Linux backend
(iptables in the hypervisor namespace) through the ``backend`` fixture, and every "does not
arrive" stands next to a positive control that does arrive in the same state.

The lab (one per test): project alpha's VLAN network 10.35.0.0/24 with instances a1, a2, a3
(real dhclient leases: DHCP must pass every firewall), the public side as in test_l3.py -- an
"outside" namespace that is the external gateway 172.30.0.1 and a host beyond it,
172.30.0.10 -- and floating IPs from 172.30.0.64/28. Listeners are tiny Python servers
inside the namespaces (``PEER``). After a CLI change the test waits for the data plane with
``backend.wait_synced(env)`` (Linux: the agent reconciled the revision; OVS: the controller
synced and the flows settled) or polls the traffic itself.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
import threading
import time

import pytest

from tests.integration.netlab import random_suffix, wait_for
from tests.integration.peers import NOT_ADMITTED, PEER, probe, serve

RSIP, GATEWAY = "172.30.0.2", "172.30.0.1"
INTERNET = "172.30.0.10"      # a host beyond the external gateway
FLOATING_RANGE = "172.30.0.64/28"
FIXED_RANGE = "10.35.0.0/24"
PROJECT = "alpha"

def only_containing(address, *others) -> str:
    """The widest CIDR (/24 or narrower) holding ``address`` and none of ``others``."""
    for plen in range(24, 33):
        net = ipaddress.ip_network(f"{address}/{plen}", strict=False)
        if not any(ipaddress.ip_address(o) in net for o in others):
            return str(net)
    raise AssertionError("unreachable")


class Stream:
    """A ``tcp-recv`` client in ``host`` reading a ``tcp-stream`` server; records the arrival
    time (monotonic, this process) of every line."""

    def __init__(self, host, address, port):
        self.what = f"{host.name} -> {address}:{port}"
        self.proc = host.popen([sys.executable, "-u", "-c", PEER, "tcp-recv", address, str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[tuple[float, str]] = []
        self.status = "connecting"
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.strip()
            if line == "connected" or line == "closed" or line.startswith("failed"):
                self.status = line
            else:
                self.lines.append((time.monotonic(), line))

    def wait_flowing(self, n=3, timeout=10):
        def flowing():
            if self.status.startswith("failed"):
                raise AssertionError(f"stream {self.what}: {self.status}")
            return len(self.lines) >= n
        wait_for(flowing, timeout, what=f"lines through {self.what}")

    def after(self, t: float) -> int:
        return sum(1 for at, _ in self.lines if at > t)

    def last(self) -> float:
        return self.lines[-1][0] if self.lines else float("-inf")


class SgLab:
    """One deployment: VLAN network for alpha, a1/a2/a3 with leases, the outside on the public
    side. ``groups`` {name: stateless} are created before launch; ``members`` {instance: [groups]}
    (default: the default group); ``setup(lab)`` runs after launch and before the data plane
    starts (rules that need the instances' addresses)."""

    def __init__(self, backend, netns_host, *, same_net=True, groups=None, members=None,
                 setup=None):
        self.backend = backend
        pub = "sdnpb" + random_suffix(6)
        self.env = backend.env(config={"DEFAULT": {
            "network_manager": "vlan", "public_interface": pub, "routing_source_ip": RSIP,
            "external_gateway": GATEWAY, "metadata_host": GATEWAY,
            "floating_range": FLOATING_RANGE, "allow_same_net_traffic": same_net}})
        self.env.cli("network", "create", "--label", "tenants", "--fixed_range_v4", FIXED_RANGE,
                     "--num_networks", "1", "--network_size", "64", "--vlan", "450")
        self.env.cli("floating", "create", FLOATING_RANGE)
        self.outside = netns_host(port_name=pub)
        backend.attach_public(self.env, self.outside, [f"{RSIP}/24"])
        self.outside.set_ip(f"{GATEWAY}/24")
        self.outside.set_ip(f"{INTERNET}/24")
        self.outside.run(["ip", "route", "add", FIXED_RANGE, "via", RSIP])
        for name, stateless in (groups or {}).items():
            self.sg("create", name, *(["--stateless"] if stateless else []))
        members = members or {}
        self.alloc, self.host = {}, {}
        for name in ("a1", "a2", "a3"):
            args = [a for g in members.get(name, []) for a in ("--security-group", g)]
            alloc = self.env.cli_json("instance", "launch", name, "--project", PROJECT, *args)
            self.alloc[name], self.host[name] = backend.plug(self.env, alloc)
        self.ip = {name: a["address"] for name, a in self.alloc.items()}
        if setup:
            setup(self)
        backend.start(self.env)
        clients = [h.dhclient(wait=False) for h in self.host.values()]
        for client in clients:
            client.wait_bound()
        for name, host in self.host.items():
            assert host.ips() == [self.ip[name]], host.addresses()

    # -- CLI
    def sg(self, verb, name, *args):
        return self.env.cli("secgroup", verb, name, "--project", PROJECT, *args)

    def rule(self, verb, group, *args):
        return self.env.cli("secgroup-rule", verb, group, "--project", PROJECT, *args)

    def synced(self):
        """Wait until the data plane holds the current state."""
        self.backend.wait_synced(self.env)

    def floating(self, instance):
        address = self.env.cli("floating", "allocate", "--project", PROJECT).stdout.strip()
        self.env.cli("floating", "associate", address, "--instance", instance,
                     "--project", PROJECT)
        return address

    # -- traffic
    def tcp(self, src, address, port, timeout=1.5) -> str:
        return probe(self.host[src] if isinstance(src, str) else src, "tcp", address, port,
                     timeout)

    def udp(self, src, address, port, timeout=1.5) -> str:
        return probe(self.host[src] if isinstance(src, str) else src, "udp", address, port,
                     timeout)

    def ping(self, src, address) -> bool:
        return (self.host[src] if isinstance(src, str) else src).ping(address, count=1, timeout=1)

    def eventually(self, check, what, timeout=15):
        """Poll ``check()`` (a probe result "ok ..." or True) until it succeeds."""
        def ok():
            got = check()
            return got is True or (isinstance(got, str) and got.startswith("ok"))
        wait_for(ok, timeout, interval=0.1, what=what)

    def assert_refused(self, got: str, what: str):
        assert got.startswith(NOT_ADMITTED), f"{what}: expected no connection, got {got!r}"


def strip_egress(lab, group):
    """Delete the egress allow-all rules every new group starts with."""
    for ether in ("IPv4", "IPv6"):
        lab.rule("delete", group, "--direction", "egress", "--ethertype", ether)


# --------------------------------------------------------------------------- tests


def test_default_group_refuses_inbound_from_outside_allows_egress_and_same_net(backend,
                                                                                netns_host):
    """default group: no ingress rule, egress allowed; allow_same_net_traffic on (default)."""
    lab = SgLab(backend, netns_host)
    serve(lab.host["a1"], "tcp-server", 2222, 2223)
    serve(lab.host["a1"], "udp-echo", 5353)
    serve(lab.outside, "tcp-server", 8080)
    serve(lab.outside, "udp-echo", 5353, INTERNET)
    f1 = lab.floating("a1")
    lab.synced()
    # egress allowed, and the replies of the instance's own connections return (conntrack):
    # TCP, UDP and ICMP (the first packets out may wait for the router to learn the gateway)
    lab.eventually(lambda: lab.tcp("a1", INTERNET, 8080), "a1 -> outside tcp")
    assert lab.tcp("a1", INTERNET, 8080) == f"ok 8080 {f1}", "a1 -> outside tcp (floating IP)"
    assert lab.udp("a1", INTERNET, 5353) == f"ok {f1} probe", "a1 -> outside udp"
    assert lab.ping("a1", INTERNET), "a1 pings the outside"
    # same network (allow_same_net_traffic): a2 reaches a1
    assert lab.tcp("a2", lab.ip["a1"], 2222) == f"ok 2222 {lab.ip['a2']}"
    assert lab.ping("a2", lab.ip["a1"])
    # from outside the network: nothing new gets in through the floating IP
    lab.assert_refused(lab.tcp(lab.outside, f1, 2222), "outside -> floating IP tcp 2222")
    lab.assert_refused(lab.udp(lab.outside, f1, 5353), "outside -> floating IP udp 5353")
    assert not lab.ping(lab.outside, f1), "outside pinged a1 through its floating IP"
    # positive control for the path from outside: a rule opens exactly its port
    lab.rule("add", "default", "tcp", "2222", "2222", "0.0.0.0/0")
    lab.eventually(lambda: lab.tcp(lab.outside, f1, 2222), "outside -> floating IP tcp 2222 "
                   "once the default group admits it")
    assert lab.tcp(lab.outside, f1, 2222) == f"ok 2222 {GATEWAY}"
    lab.assert_refused(lab.tcp(lab.outside, f1, 2223), "outside -> floating IP tcp 2223")


def test_same_net_off_cidr_rule_and_icmp_type_rule(backend, netns_host):
    """allow_same_net_traffic = False; ``tcp 2222 2222 CIDR`` admits exactly that; an ICMP
    type rule admits echo requests."""
    def setup(lab):
        lab.cidr = only_containing(lab.ip["a3"], lab.ip["a1"], lab.ip["a2"])
        lab.rule("add", "web", "tcp", "2222", "2222", lab.cidr)
    lab = SgLab(backend, netns_host, same_net=False, groups={"web": False},
                members={"a1": ["web"]}, setup=setup)
    serve(lab.host["a1"], "tcp-server", 2222, 2223)
    serve(lab.host["a2"], "tcp-server", 2222)
    a1 = lab.ip["a1"]
    # both listeners of a1 answer locally (the listener is not what refuses below)
    assert lab.tcp("a1", a1, 2223) == f"ok 2223 {a1}"
    # port 2222 from inside the CIDR: admitted
    lab.eventually(lambda: lab.tcp("a3", a1, 2222), "a3 (inside the CIDR) -> a1:2222")
    assert lab.tcp("a3", a1, 2222) == f"ok 2222 {lab.ip['a3']}"
    # another port from inside the CIDR: not
    lab.assert_refused(lab.tcp("a3", a1, 2223), "a3 -> a1:2223 (port outside the rule)")
    # the same port from outside the CIDR (a2, same network, allow_same_net_traffic off): not
    lab.assert_refused(lab.tcp("a2", a1, 2222), "a2 (outside the CIDR) -> a1:2222")
    # a default-group instance is not reachable from its own network either (a2's listener)
    lab.assert_refused(lab.tcp("a3", lab.ip["a2"], 2222), "a3 -> a2:2222 (same net off)")
    assert lab.tcp("a3", a1, 2222).startswith("ok"), "positive control after the refusals"
    # ICMP: no rule, no ping; an echo-request rule for the CIDR: ping works, for it only
    assert not lab.ping("a3", a1), "a3 pinged a1 without an ICMP rule"
    lab.rule("add", "web", "--protocol", "icmp", "--from-port", "8", "--to-port", "-1",
             "--cidr", lab.cidr)
    lab.eventually(lambda: lab.ping("a3", a1), "a3 pinging a1 after the echo-request rule")
    lab.synced()
    assert not lab.ping("a2", a1), "a2 (outside the CIDR) pinged a1"
    assert lab.ping("a3", a1)


def test_source_group_admits_members_and_a_new_member(backend, netns_host):
    """A rule granting to a remote group admits its members, not others; ``add-secgroup``
    admits a new member (OVS: by address flows alone)."""
    def setup(lab):
        strip_egress(lab, "clients")      # a pure membership group: no rule of its own
        lab.rule("add", "web", "--protocol", "tcp", "--port-range-min", "2222",
                 "--port-range-max", "2222", "--remote-group", "clients")
    lab = SgLab(backend, netns_host, same_net=False, groups={"web": False, "clients": False},
                members={"a1": ["web"], "a2": ["default", "clients"]}, setup=setup)
    serve(lab.host["a1"], "tcp-server", 2222)
    a1 = lab.ip["a1"]
    lab.eventually(lambda: lab.tcp("a2", a1, 2222), "a2 (member of clients) -> a1:2222")
    assert lab.tcp("a2", a1, 2222) == f"ok 2222 {lab.ip['a2']}"
    lab.assert_refused(lab.tcp("a3", a1, 2222), "a3 (not a member) -> a1:2222")
    lab.synced()
    before = _flows(lab)
    lab.env.cli("instance", "add-secgroup", "a3", "clients")
    lab.eventually(lambda: lab.tcp("a3", a1, 2222), "a3 -> a1:2222 after add-secgroup")
    assert lab.tcp("a3", a1, 2222) == f"ok 2222 {lab.ip['a3']}"
    assert lab.tcp("a2", a1, 2222).startswith("ok"), "a2 still admitted"
    if backend.name == "ovs":
        lab.synced()
        after = _flows(lab)
        # Only a3's own flows may change: the address flows that make its address a member of
        # clients, and a3's per-VIF flows (its port in a register or in_port: the groups it is
        # in, which decide whether its established connections still apply). The rules of
        # web, a1's flows and every other VIF's stay as they were.
        port = lab.alloc["a3"]["port_name"]
        ofport = lab.env.bridge.ofport(port)
        a3_flow = re.compile(re.escape(lab.ip["a3"]) + r"(?![\d])"
                             + rf"|\breg\d+=0x{ofport:x}\b|\bin_port=(\"?{port}\"?|{ofport})\b")
        changed = sorted((set(before) ^ set(after)))
        assert any(lab.ip["a3"] in f for f in changed), \
            "adding a3 to clients changed no address flow:\n" + "\n".join(changed)
        other = [f for f in changed if not a3_flow.search(f)]
        assert not other, ("adding a3 to clients changed flows that are not a3's own "
                           "(address or per-VIF) flows:\n" + "\n".join(
                               ("+ " if f in after else "- ") + f for f in other))


def _flows(lab):
    from tests.integration.netlab import flow_table
    return flow_table(lab.env.bridge.name) if lab.backend.name == "ovs" else []


def test_egress_rule_restricts_outbound(backend, netns_host):
    """Without the default egress allow-all rules, one egress tcp rule admits its port only."""
    def setup(lab):
        strip_egress(lab, "locked")
        lab.rule("add", "locked", "--direction", "egress", "--protocol", "tcp",
                 "--port-range-min", "8080", "--port-range-max", "8080")
    lab = SgLab(backend, netns_host, groups={"locked": False}, members={"a1": ["locked"]},
                setup=setup)   # a1 still got its lease: DHCP passes any group
    serve(lab.outside, "tcp-server", 8080, 8081)
    lab.eventually(lambda: lab.tcp("a1", INTERNET, 8080), "a1 -> outside:8080 (egress rule)")
    assert lab.tcp("a2", INTERNET, 8081).startswith("ok 8081 "), "a2 -> outside:8081 (control)"
    lab.assert_refused(lab.tcp("a1", INTERNET, 8081), "a1 -> outside:8081 (no egress rule)")
    assert lab.ping("a2", INTERNET), "a2 pings the outside (control)"
    assert not lab.ping("a1", INTERNET), "a1 pinged out without an egress ICMP rule"
    assert lab.tcp("a1", INTERNET, 8080).startswith("ok 8080 ")


def test_udp_and_icmp_replies_return_and_stateless_group_needs_reply_rules(backend,
                                                                          netns_host):
    """Stateful (a2, default group): replies of egress-initiated UDP/ICMP/TCP return.
    Stateless (a1, ``--stateless``, egress allowed): replies are dropped until a rule of their
    own admits them."""
    lab = SgLab(backend, netns_host, groups={"sl": True}, members={"a1": ["sl"]})
    serve(lab.outside, "tcp-server", 8080)
    serve(lab.outside, "udp-echo", 5353, INTERNET)
    lab.synced()
    # (the first packets out may wait for the router to learn the gateway: poll once)
    lab.eventually(lambda: lab.ping("a2", INTERNET), "a2 pinging the outside")
    assert lab.udp("a2", INTERNET, 5353) == f"ok {RSIP} probe", "a2 udp to the outside"
    assert lab.tcp("a2", INTERNET, 8080) == f"ok 8080 {RSIP}"
    # stateless: the requests leave (egress rule) but no reply comes back
    lab.assert_refused(lab.tcp("a1", INTERNET, 8080), "stateless a1 -> outside tcp")
    lab.assert_refused(lab.udp("a1", INTERNET, 5353), "stateless a1 -> outside udp")
    assert not lab.ping("a1", INTERNET), "stateless a1 got an echo reply without a rule"
    assert lab.tcp("a2", INTERNET, 8080).startswith("ok"), "control after the refusals"
    # a rule for the replies (tcp from the outside host, any port): TCP works, ICMP still not
    lab.rule("add", "sl", "--protocol", "tcp", "--cidr", f"{INTERNET}/32")
    lab.eventually(lambda: lab.tcp("a1", INTERNET, 8080), "stateless a1 -> outside tcp once "
                   "a rule admits the replies")
    lab.synced()
    lab.assert_refused(lab.udp("a1", INTERNET, 5353), "stateless a1 udp (replies not admitted)")
    assert not lab.ping("a1", INTERNET), "stateless a1 got an echo reply without an ICMP rule"
    lab.rule("add", "sl", "--protocol", "icmp", "--cidr", f"{INTERNET}/32")
    lab.eventually(lambda: lab.ping("a1", INTERNET), "stateless a1 ping once echo replies "
                   "are admitted")


def test_removing_a_rule_cuts_its_open_connection_only(backend, netns_host):
    """Deleting a rule cuts the connection it admitted within 1 s of CLI + sync; a
    connection admitted by another rule keeps flowing."""
    def setup(lab):
        a2 = f"{lab.ip['a2']}/32"
        lab.rule("add", "web", "tcp", "2222", "2222", a2)
        lab.rule("add", "web", "tcp", "2224", "2224", a2)
    lab = SgLab(backend, netns_host, same_net=False, groups={"web": False},
                members={"a1": ["web"]}, setup=setup)
    serve(lab.host["a1"], "tcp-stream", 2222, 2224)
    a1 = lab.ip["a1"]
    lab.eventually(lambda: lab.tcp("a2", a1, 2224), "a2 -> a1:2224")
    cut = Stream(lab.host["a2"], a1, 2222)
    kept = Stream(lab.host["a2"], a1, 2224)
    cut.wait_flowing(), kept.wait_flowing()
    assert cut.last() > time.monotonic() - 0.5, "the stream is live before the change"
    lab.rule("delete", "web", "tcp", "2222", "2222", f"{lab.ip['a2']}/32")
    returned = time.monotonic()
    lab.synced()
    synced = time.monotonic()
    time.sleep(max(0.0, synced + 2.0 - time.monotonic()))   # a 2 s observation window
    assert cut.last() <= synced + 1.0, (
        f"the connection admitted by the deleted rule still delivered "
        f"{cut.after(synced + 1.0)} lines more than 1 s after CLI + sync (sync took "
        f"{synced - returned:.2f}s; last line {cut.last() - synced:+.2f}s after it)")
    assert kept.after(synced + 1.0) >= 5, (
        f"the connection of the other rule stalled: {kept.after(synced + 1.0)} lines in the "
        f"last second (last {kept.last() - synced:+.2f}s after sync)")
    lab.assert_refused(lab.tcp("a2", a1, 2222), "a new connection to the deleted rule's port")


def test_floating_ip_disassociation_cuts_an_open_connection_from_outside(backend, netns_host):
    def setup(lab):
        lab.rule("add", "web", "tcp", "2222", "2222", "0.0.0.0/0")
    lab = SgLab(backend, netns_host, groups={"web": False}, members={"a1": ["web"]},
                setup=setup)
    serve(lab.host["a1"], "tcp-stream", 2222)
    f1, f2 = lab.floating("a1"), lab.floating("a1")
    for f in (f1, f2):
        lab.eventually(lambda f=f: lab.tcp(lab.outside, f, 2222),
                       f"outside -> floating IP {f}:2222")
    cut = Stream(lab.outside, f1, 2222)
    kept = Stream(lab.outside, f2, 2222)
    cut.wait_flowing(), kept.wait_flowing()
    lab.env.cli("floating", "disassociate", f1, "--project", PROJECT)
    returned = time.monotonic()
    lab.synced()
    synced = time.monotonic()
    time.sleep(max(0.0, synced + 2.0 - time.monotonic()))
    assert cut.last() <= synced + 1.0, (
        f"the connection through the disassociated floating IP still delivered "
        f"{cut.after(synced + 1.0)} lines more than 1 s after CLI + sync (sync took "
        f"{synced - returned:.2f}s)")
    assert kept.after(synced + 1.0) >= 5, "the connection through the other floating IP stalled"
    lab.assert_refused(lab.tcp(lab.outside, f1, 2222), "a new connection to the old floating IP")


def test_provider_rule_beats_a_tenant_allow(backend, netns_host):
    def setup(lab):
        lab.rule("add", "web", "tcp", "2222", "2222", "0.0.0.0/0")
    lab = SgLab(backend, netns_host, groups={"web": False}, members={"a1": ["web"]},
                setup=setup)
    serve(lab.host["a1"], "tcp-server", 2222)
    a1 = lab.ip["a1"]
    for src in ("a2", "a3"):
        lab.eventually(lambda src=src: lab.tcp(src, a1, 2222), f"{src} -> a1:2222")
    lab.env.cli("provider-rule", "add", "tcp", "2222", "2222", f"{lab.ip['a2']}/32")
    lab.synced()
    lab.assert_refused(lab.tcp("a2", a1, 2222), "a2 -> a1:2222 under a provider drop")
    assert lab.tcp("a3", a1, 2222) == f"ok 2222 {lab.ip['a3']}", "a3 (not dropped) -> a1"
    lab.env.cli("provider-rule", "delete", "tcp", "2222", "2222", f"{lab.ip['a2']}/32")
    lab.eventually(lambda: lab.tcp("a2", a1, 2222), "a2 -> a1:2222 after the provider rule went")
