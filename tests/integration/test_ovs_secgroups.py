"""What only the OpenFlow backend's security groups have, on real userspace OVS: connections
labelled with the rule that admitted them in the VIF's own conntrack zone, the zone flushed with
its VIF, IP floods meeting each receiver's ACL (conntrack inside a flood group's bucket), and
the accept/drop tables counting. Behaviour shared with the Linux backend is in
test_security_groups.py."""

from __future__ import annotations

import re
import select
import sqlite3
import subprocess
import sys

from sdn import firewall
from sdn.flows.security_groups import LABEL_SAME_NET
from tests.integration.netlab import OFCTL, sh, wait_for
from tests.integration.peers import PEER, serve
from tests.integration.test_controller import _vlan_networks, launch

def recv(host, address, port) -> subprocess.Popen:
    """A TCP connection from ``host`` held open (``tcp-recv``); its first line says whether it
    connected."""
    return host.popen([sys.executable, "-u", "-c", PEER, "tcp-recv", address, str(port)],
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def broadcast(host, address, port, data) -> None:
    host.run([sys.executable, "-c", PEER, "udp-bcast", address, str(port), data], timeout=10)


def conntrack(zone: int) -> list[str]:
    out = sh(["ovs-appctl", "dpctl/dump-conntrack", f"zone={zone}"], check=False).stdout
    return [line for line in out.splitlines() if line.strip()]


def vif_zone(env, instance: str) -> int:
    with sqlite3.connect(env.workdir / "sdn.sqlite") as db:
        (vif_id,) = db.execute("SELECT v.id FROM virtual_interfaces v JOIN instances i "
                               "ON v.instance_uuid = i.uuid WHERE i.name = ?", (instance,)).fetchone()
    return firewall.ZONE_BASE + vif_id % firewall.ZONE_SPAN


def rule_id(env, text: str) -> int:
    return int(re.search(r"added rule (\d+)", text).group(1))


def table_packets(bridge: str, table: int) -> int:
    """n_packets of ``table``'s flows: the ACL drop/accept counters."""
    out = sh(OFCTL + ["dump-flows", bridge, f"table={table}"]).stdout
    return sum(int(n) for n in re.findall(r"n_packets=(\d+)", out))


def _lab(make_sdn_env, netns_host, same_net: bool, **ovs):
    env = _vlan_networks(make_sdn_env(config={
        "DEFAULT": {"network_manager": "vlan", "allow_same_net_traffic": same_net}, "ovs": ovs}))
    a1, h1 = launch(env, netns_host, "a1", "alpha")
    a2, h2 = launch(env, netns_host, "a2", "alpha")
    env.start_controller()
    for h in (h1, h2):
        h.dhclient()
    return env, (a1, h1), (a2, h2)


def test_connections_carry_their_rule_in_the_vifs_zone_and_go_with_the_vif(make_sdn_env,
                                                                              netns_host):
    env, (a1, h1), (a2, h2) = _lab(make_sdn_env, netns_host, same_net=False)
    rule = rule_id(env, env.cli("secgroup-rule", "add", "default", "--project", "alpha", "tcp",
                                "7000", "7000", "10.31.0.0/24").stdout)
    server = serve(h1, "tcp-stream", 7000)
    z1, z2 = vif_zone(env, "a1"), vif_zone(env, "a2")
    stream = None

    def connected():
        nonlocal stream
        stream = recv(h2, a1["address"], 7000)
        if stream.stdout.readline().strip() == "connected":
            return True
        stream.kill()
        return False
    try:
        wait_for(connected, timeout=15, what="a2 connecting to a1:7000 (the rule synced)")
        # a1's zone: the inbound connection, labelled with the rule that admitted it
        wait_for(lambda: any("dport=7000" in e and f"labels=0x{rule:x}" in e
                             for e in conntrack(z1)), timeout=5, what=f"a1's zone {z1} entry")
        # a2's zone: the same connection seen outbound, admitted by default's egress rule
        assert any("dport=7000" in e and "labels=0x" in e for e in conntrack(z2)), conntrack(z2)
        assert z1 != z2
        before = conntrack(z2)
        env.cli("instance", "delete", "a1", "--bridge", env.bridge.name)
        wait_for(lambda: not conntrack(z1), timeout=10, what=f"a1's zone {z1} to be flushed")
        assert conntrack(z2), ("a2's own connections stay (positive control)", before,
                               sh(["ovs-appctl", "dpctl/dump-conntrack"]).stdout[-3000:])
    finally:
        if stream:
            stream.kill()
        server.kill()


def test_an_ip_broadcast_meets_each_receivers_acl_and_the_tables_count(make_sdn_env,
                                                                      netns_host):
    """A UDP broadcast floods through the network's IP flood group, whose copies to filtered
    VIFs resubmit to the ingress ACL (conntrack inside a group bucket)."""
    env, (a1, h1), (a2, h2) = _lab(make_sdn_env, netns_host, same_net=False,
                                   acl_log_rate_limit=50)
    listener = serve(h1, "udp-listen", 9999)
    bcast = "10.31.0.63"       # the first /26 of 10.31.0.0/24
    try:
        dropped = table_packets(env.bridge.name, 64)
        broadcast(h2, bcast, 9999, "before")
        # no rule yet (and allow_same_net_traffic off): dropped, counted and logged
        wait_for(lambda: table_packets(env.bridge.name, 64) >= dropped + 5, timeout=5,
                 what="the ingress ACL's drop table to count the refused broadcasts")
        wait_for(lambda: f"security groups dropped udp {a2['address']}:" in env.controller_log()
                 and f"-> {bcast}:9999, in on datapath" in env.controller_log(), timeout=5,
                 what="the controller to log the dropped broadcast")
        env.cli("secgroup-rule", "add", "default", "--project", "alpha", "udp", "9999", "9999",
                "10.31.0.0/24")

        accepted = table_packets(env.bridge.name, 63)
        lines = []

        def got_after():
            broadcast(h2, bcast, 9999, "after")
            while select.select([listener.stdout], [], [], 0.3)[0]:
                lines.append(listener.stdout.readline())
            return any("after" in line for line in lines)
        wait_for(got_after, timeout=15, what="a1 receiving the broadcast once the rule synced")
        assert not any("before" in line for line in lines)
        assert table_packets(env.bridge.name, 63) > accepted
    finally:
        listener.kill()


def test_the_same_network_admission_is_a_label_of_its_own(make_sdn_env, netns_host):
    env, (a1, h1), (a2, h2) = _lab(make_sdn_env, netns_host, same_net=True)
    server = serve(h1, "tcp-stream", 7100)
    stream = recv(h2, a1["address"], 7100)
    try:
        assert stream.stdout.readline().strip() == "connected"
        z1 = vif_zone(env, "a1")
        wait_for(lambda: any("dport=7100" in e and f"labels=0x{LABEL_SAME_NET:x}" in e
                             for e in conntrack(z1)), timeout=5, what="a same-net entry")
    finally:
        stream.kill()
        server.kill()
