"""Security groups on the Linux backend, by real traffic and by what the host holds.

The lab: ``sdn agent`` in a hypervisor namespace (``LinuxBackend``), project alpha's VLAN
network with instances a1 and a2 (real dhclient leases), and an "outside" namespace on the
hypervisor's public_interface, routed to the fixed range through routing_source_ip. Listeners
and clients are small Python programs (``tests.integration.peers``) inside the namespaces the
test made; every "never arrives" stands next to a positive control that arrives in the same
state.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import threading
import time

from tests.integration.netlab import random_suffix, wait_for
from tests.integration.peers import PEER, probe, serve

RSIP, GATEWAY = "172.31.0.2", "172.31.0.1"
OUTSIDE_NET = "172.31.0.0/24"
FIXED = "10.41.0.0/24"
PROJECT = "alpha"




class Lab:
    def __init__(self, backend, netns_host, setup=None):
        pub = "sdnpb" + random_suffix(6)
        self.backend = backend
        self.env = backend.env(config={"DEFAULT": {
            "network_manager": "vlan", "public_interface": pub, "routing_source_ip": RSIP,
            "metadata_host": GATEWAY, "fixed_range": FIXED}})
        self.hv = self.env.hv
        self.env.cli("network", "create", "--label", "tenants", "--fixed_range_v4", FIXED,
                     "--num_networks", "1", "--network_size", "64", "--vlan", "410")
        self.outside = netns_host(port_name=pub)
        backend.attach_public(self.env, self.outside, [f"{RSIP}/24"])
        self.outside.set_ip(f"{GATEWAY}/24")
        self.outside.run(["ip", "route", "add", FIXED, "via", RSIP])
        self.alloc, self.host = {}, {}
        for name in ("a1", "a2"):
            self.alloc[name], self.host[name] = backend.launch(self.env, name, PROJECT)
        self.ip = {n: a["address"] for n, a in self.alloc.items()}
        if setup:
            setup(self)
        backend.start(self.env)
        for client in [h.dhclient(wait=False) for h in self.host.values()]:
            client.wait_bound()

    def rule(self, verb, group, *args):
        self.env.cli("secgroup-rule", verb, group, "--project", PROJECT, *args)

    def serve(self, host, mode, *ports):
        serve(host, mode, *ports)

    def probe(self, src, address, port) -> str:
        return probe(self.host[src] if isinstance(src, str) else src, "tcp", address, port)

    def synced(self):
        self.backend.wait_synced(self.env)

    def zone(self, name) -> int:
        """The VIF's conntrack zone (sdn.firewall.acl_zone: 10000 + its id)."""
        uuid_start = self.alloc[name]["port_name"][3:]
        with sqlite3.connect(self.env.workdir / "sdn.sqlite") as db:
            (vif_id,) = db.execute("SELECT id FROM virtual_interfaces WHERE uuid LIKE ?",
                                   (uuid_start + "%",)).fetchone()
        return 10000 + vif_id % 55000


def refused(got: str) -> bool:
    return got in ("timeout", "refused", "reset")


def test_default_group_same_net_and_a_port_rule(linux, netns_host):
    lab = Lab(linux, netns_host)
    a1 = lab.ip["a1"]
    lab.serve(lab.host["a1"], "tcp-server", 22, 23)
    lab.serve(lab.outside, "tcp-server", 8080)
    # positive control of the routed path: a1's own connection out (egress allowed) and back
    # (GATEWAY is also the metadata host: nova's rules exempt it from SNAT)
    assert lab.probe("a1", GATEWAY, 8080) == f"ok 8080 {a1}"
    # from outside the network: the default group has no ingress rule
    assert refused(lab.probe(lab.outside, a1, 22)), "outside -> a1:22 in the default group"
    # from the same network (allow_same_net_traffic): admitted
    assert lab.probe("a2", a1, 22) == f"ok 22 {lab.ip['a2']}"
    # that connection was tracked in the initiator's zone, the original direction only
    zone = lab.zone("a2")
    listed = lab.hv.run(["conntrack", "-L", "--orig-zone", str(zone), "-p", "tcp", "--dport", "22"],
                        check=False).stdout
    assert f"dst={a1}" in listed and f"zone-orig={zone}" in listed, listed

    # bridged traffic traverses iptables: set in the namespace the agent runs in
    assert lab.hv.run(["cat", "/proc/sys/net/bridge/bridge-nf-call-iptables"]).stdout.strip() == "1"
    # the host holds nova's shape: FORWARD jumps to sg-chain before the bridge's own ACCEPT
    saved = lab.hv.iptables_save()
    forward = [line for line in saved.splitlines() if line.startswith("-A sdn-agent-FORWARD")]
    assert forward[0] == "-A sdn-agent-FORWARD -j sdn-agent-sg-chain", forward
    port = lab.alloc["a1"]["port_name"]
    assert (f"-A sdn-agent-sg-chain -m physdev --physdev-out {port} --physdev-is-bridged "
            f"-j sdn-agent-i{port[3:13]}") in saved

    # a `tcp 22 22 CIDR` rule admits exactly that port from that CIDR
    lab.rule("add", "default", "tcp", "22", "22", OUTSIDE_NET)
    lab.synced()
    assert lab.probe(lab.outside, a1, 22) == f"ok 22 {GATEWAY}"
    assert refused(lab.probe(lab.outside, a1, 23)), "outside -> a1:23 (port outside the rule)"
    assert lab.probe("a2", a1, 23) == f"ok 23 {lab.ip['a2']}", "a1:23 listens (control)"
    # the agent restarted finds its rules, sets and zones right: changes nothing
    n = len(lab.hv.reconciles())
    lab.hv.stop_agent(kill=True)
    lab.hv.start_agent(lab.env.sdn_exe, lab.env.config_file)
    wait_for(lambda: len(lab.hv.reconciles()) > n, timeout=20, what="the restarted agent's reconcile")
    assert lab.hv.reconciles()[n].endswith(": no changes"), lab.hv.reconciles()[n]


class Stream:
    """``tcp-recv`` from ``host`` to a ``tcp-stream`` server; the arrival time of every line
    of the stream ("<port> <n>")."""

    def __init__(self, host, address, port):
        self.proc = host.popen([sys.executable, "-u", "-c", PEER, "tcp-recv", address, str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.times: list[float] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if line.split(" ", 1)[0].isdigit():
                self.times.append(time.monotonic())

    def after(self, t: float) -> int:
        return sum(1 for at in self.times if at > t)

    def last(self) -> float:
        return self.times[-1] if self.times else float("-inf")


def test_removing_a_rule_cuts_its_stream_within_a_second_the_other_lives(linux, netns_host):
    def setup(lab):
        lab.rule("add", "default", "tcp", "22", "22", OUTSIDE_NET)
        lab.rule("add", "default", "tcp", "2224", "2224", OUTSIDE_NET)
    lab = Lab(linux, netns_host, setup=setup)
    a1 = lab.ip["a1"]
    lab.serve(lab.host["a1"], "tcp-stream", 22, 2224)
    cut, kept = Stream(lab.outside, a1, 22), Stream(lab.outside, a1, 2224)
    wait_for(lambda: len(cut.times) >= 3 and len(kept.times) >= 3, timeout=10,
             what="both streams from outside to flow")
    lab.rule("delete", "default", "tcp", "22", "22", OUTSIDE_NET)
    lab.synced()
    synced = time.monotonic()
    time.sleep(2.0)
    assert cut.last() <= synced + 1.0, f"{cut.after(synced + 1.0)} lines more than 1 s after the sync"
    assert kept.after(synced + 1.0) >= 5, "the stream of the other rule stalled"
    assert refused(lab.probe(lab.outside, a1, 22)), "a new connection to the deleted rule's port"
    # the agent said what it cut
    assert any("conntrack -D" in line and "--dport 22" in line for line in lab.hv.reconciles())


def test_remote_group_is_an_ipset_and_membership_changes_only_the_set(linux, netns_host):
    sets = {}

    def setup(lab):
        lab.env.cli("secgroup", "create", "clients", "--project", PROJECT)
        lab.rule("add", "default", "--protocol", "tcp", "--port-range-min", "22",
                 "--port-range-max", "22", "--remote-group", "clients")
    lab = Lab(linux, netns_host, setup=setup)
    gid = lab.env.cli_json("secgroup", "show", "clients", "--project", PROJECT, "--json")["id"]
    sets["name"] = f"sdn-agent-sg{gid}-v4"

    def members() -> list[str]:
        out = lab.hv.run(["ipset", "list", sets["name"]], check=False)
        if out.returncode != 0:
            return ["<no set>"]
        return sorted(out.stdout.split("Members:", 1)[1].split())

    assert members() == []
    filter_before = _filter_rules(lab.hv.iptables_save())
    assert f"--match-set {sets['name']} src" in "\n".join(filter_before)
    lab.env.cli("instance", "add-secgroup", "a2", "clients")
    lab.synced()
    assert members() == [lab.ip["a2"]]
    assert _filter_rules(lab.hv.iptables_save()) == filter_before   # the set changed, no rule
    # the rule's remote group is gone with the rule; the set after the rules referencing it
    lab.rule("delete", "default", "--protocol", "tcp", "--port-range-min", "22",
             "--port-range-max", "22", "--remote-group", "clients")
    lab.synced()
    assert members() == ["<no set>"]
    assert sets["name"] not in lab.hv.iptables_save()


def _filter_rules(saved: str) -> list[str]:
    section = saved.split("*filter", 1)[1].split("COMMIT", 1)[0]
    return [re.sub(r"^\[\d+:\d+\] ", "", line) for line in section.splitlines() if "-A " in line]
