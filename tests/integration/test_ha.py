"""Two controllers on one switch (docs/HA.md): one MASTER, one SLAVE, one deployment lease.

Real userspace OVS, two ``sdn controller`` processes on the same database (SQLite, and
PostgreSQL from tests/pg.py's cluster, where the controllers are woken by NOTIFY), the bridge connected to both
(``Bridge.controller`` holds two Controller rows). What is asserted is what a tenant and an
operator see: pings between two instances while the master is killed with SIGKILL, how soon
DHCP is answered again (printed), the flow table before and after, a restarted controller
rejoining without touching a flow, and the periodic jobs running in the master only.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration import netlab
from tests.integration.netlab import wait_for

LEASE = 1.0           # [ovs] mastership_lease of both controllers (seconds)
PROBE = Path(__file__).with_name("dhcp_probe.py")


def launch(env, netns_host, name, project):
    alloc = env.cli_json("instance", "launch", name, "--project", project)
    host = netns_host(port_name=alloc["port_name"], mac=alloc["mac"])
    env.cli("instance", "plug", name, "--bridge", env.bridge.name)
    return alloc, host


def peer_env(env, tmp_path, controller_id: str) -> netlab.SdnEnv:
    """A second controller of ``env``'s deployment: same database and bridge, own port."""
    workdir = tmp_path / controller_id
    workdir.mkdir()
    port = netlab.free_tcp_port()
    text = env.config_file.read_text()
    text = re.sub(r"(?m)^ofp_tcp_listen_port\s*=.*$", f"ofp_tcp_listen_port = {port}", text)
    text = re.sub(r"(?m)^controller_id\s*=.*$", f"controller_id = {controller_id}", text)
    conf = workdir / "sdn.conf"
    conf.write_text(text)
    return netlab.SdnEnv(workdir=workdir, bridge=env.bridge, port=port, config_file=conf,
                         sdn_exe=env.sdn_exe)


def start_peer(peer: netlab.SdnEnv) -> None:
    """Start ``peer``'s controller process; the bridge already points at its port."""
    peer.start_controller(wait_connected=False)
    wait_for(lambda: peer._alive() and peer.listening(), 30, what=f"{peer.port} to listen")
    peer.wait_connected()


def echoes(packets) -> tuple[dict[int, float], dict[int, float]]:
    """({seq: first time seen} of echo requests, the same of echo replies) in a capture."""
    from scapy.layers.inet import ICMP

    found: tuple[dict[int, float], dict[int, float]] = ({}, {})
    for p in packets:
        if ICMP in p and p[ICMP].type in (8, 0):
            found[p[ICMP].type == 0].setdefault(p[ICMP].seq, float(p.time))
    return found


def wire_losses(pinger, target) -> tuple[dict[int, float], dict[int, str]]:
    """Echo requests the pinging instance's interface sent ({seq: time}) and, for each one whose
    reply never came back to it, where it vanished (from captures on both instances' interfaces).
    Loss on the wire, not ping's count, which also misses replies that come later than twice
    its largest round trip after its last request (iputils)."""
    requests, replies = echoes(pinger)
    reached, answered = echoes(target)
    lost = {seq: ("the request never reached the target" if seq not in reached else
                  "the target's reply never came back" if seq in answered else
                  "the target never replied")
            for seq in sorted(set(requests) - set(replies))}
    return requests, lost


def role_of(env: netlab.SdnEnv, dpid_role: str) -> bool:
    return f"role {dpid_role}" in env.controller_log()


def raw_flows(bridge: str) -> dict[str, tuple[str, float]]:
    """{flow without counters/ages: (cookie, duration seconds)}."""
    out = {}
    for line in netlab.dump_flows(bridge):
        cookie = re.search(r"cookie=(0x[0-9a-f]+)", line).group(1)
        duration = float(re.search(r"duration=([0-9.]+)s", line).group(1))
        out[netlab.normalize_flow(line)] = (cookie, duration)
    return out


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_kill_the_master_under_traffic_then_restart_it_as_slave(database, make_sdn_env,
                                                                  netns_host, tmp_path, request):
    config = {"DEFAULT": {"network_manager": "vlan"},
              "ovs": {"mastership_lease": LEASE, "controller_id": "ctl-a"}}
    if database == "postgresql":     # tests/pg.py's cluster; controllers get NOTIFY wake-ups
        config["database"] = {"connection": request.getfixturevalue("pg_database")}
    env = make_sdn_env(config=config)
    env.cli("network", "create", "--label", "tenants", "--fixed_range_v4", "10.37.0.0/24",
            "--num_networks", "1", "--network_size", "64", "--vlan", "237")
    a1, h_a1 = launch(env, netns_host, "a1", "alpha")
    a2, h_a2 = launch(env, netns_host, "a2", "alpha")
    peer = peer_env(env, tmp_path, "ctl-b")
    try:
        env.start_controller()                  # ctl-a: first, takes the lease
        wait_for(lambda: role_of(env, "MASTER"), 10, what="ctl-a MASTER on the switch")
        netlab.add_controller(env.bridge.name, peer.port)
        start_peer(peer)                        # ctl-b: connects to the same switch as SLAVE
        wait_for(lambda: role_of(peer, "SLAVE"), 10, what="ctl-b SLAVE on the switch")
        assert "is now MASTER" not in peer.controller_log()
        for client in [h_a1.dhclient(wait=False), h_a2.dhclient(wait=False)]:
            client.wait_bound()
        assert h_a1.ips() == [a1["address"]] and h_a2.ips() == [a2["address"]]
        flows_before = netlab.flow_table(env.bridge.name)

        # 100 pings/s between the instances; the master dies in the middle. What counts as lost
        # is what a1's interface saw: an echo request out with no reply back (wire_losses)
        wire = [h_a1.capture("icmp"), h_a2.capture("icmp")]
        ping = h_a1.popen(["ping", "-n", "-D", "-O", "-i", "0.01", "-c", "800", "-W", "1",
                           a2["address"]], stdout=subprocess.PIPE, text=True)
        time.sleep(2.0)
        killed_at = time.time()
        env.stop_controller(kill=True, wait_disconnected=False)
        probe = h_a2.run([sys.executable, str(PROBE), "--address", a2["address"],
                          "--interval", "0.02", "--timeout", "20"], timeout=30)
        answer = json.loads(probe.stdout)
        assert answer["ack_at"] is not None, f"no DHCPACK after the kill:\n{peer.controller_log()}"
        failover = answer["ack_at"] - killed_at
        print(f"\nDHCP answered again {failover:.3f} s after kill -9 of the master "
              f"(lease {LEASE} s, {answer['requests']} requests sent)")
        assert answer["address"] == a2["address"]
        assert "is now MASTER" in peer.controller_log()
        out, _ = ping.communicate(timeout=30)
        time.sleep(2.0)     # replies a stalled switch still holds arrive in a burst
        requests, lost = wire_losses(*(capture.stop() for capture in wire))
        sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received",
                                            out).groups())
        print(f"pings: {sent} sent, {received} counted by ping, {len(requests) - len(lost)} of "
              f"{len(requests)} answered on a1's interface across the failover")
        if received < sent - len(lost):
            print(f"{sent - len(lost) - received} answered after ping stopped waiting (it waits "
                  f"2 x its largest round trip after the last request)")
        assert sent == 800 and len(requests) == sent, f"{len(requests)} captured\n{out[-300:]}"
        # docs/HA.md, "Pings across a failover": under heavy load (load average 15 on 2 cores)
        # replies were lost in bursts after a takeover in 2 of 10 PostgreSQL runs, cause not
        # found; none in 14 runs otherwise. 0 lost is the contract: the report says where each
        # lost ping vanished and when.
        lost_report = (f"{len(lost)} of {sent} pings lost across the failover: " + "; ".join(
            f"seq {seq} sent {requests[seq] - killed_at:+.3f} s after the kill: {why}"
            for seq, why in list(lost.items())[:20]) + f"\nkilled at {killed_at:.3f} (Unix time); "
            f"the new master's log:\n" + peer.controller_log()[-1500:])
        if lost:
            print(lost_report)
        # the new master's full sync replaced the flows in place: same table
        wait_for(lambda: "full sync" in peer.controller_log(), 10, what="ctl-b full sync")
        assert netlab.flow_table(env.bridge.name) == flows_before

        # ctl-a comes back: SLAVE, and not one flow is touched (cookies kept, durations grow)
        before_rejoin = raw_flows(env.bridge.name)
        log_len = len(env.controller_log())
        env.start_controller(wait_connected=False)
        wait_for(lambda: env._alive() and env.listening(), 30, what="ctl-a to listen again")
        env.wait_connected()
        wait_for(lambda: "role SLAVE" in env.controller_log()[log_len:], 15,
                 what="the restarted ctl-a to take the SLAVE role")
        time.sleep(2 * LEASE)                  # room for a wrong move (a sync, a takeover)
        after_rejoin = raw_flows(env.bridge.name)
        assert after_rejoin.keys() == before_rejoin.keys()
        for flow, (cookie, duration) in after_rejoin.items():
            assert cookie == before_rejoin[flow][0], f"cookie of {flow} changed"
            assert duration >= before_rejoin[flow][1], f"{flow} was replaced (duration reset)"
        second_run = env.controller_log()[log_len:]
        assert "is now MASTER" not in second_run and "full sync" not in second_run
        assert h_a1.ping(a2["address"], count=2)   # positive control: still forwarding

        # periodic jobs: in the master only (ctl-a's first run, then ctl-b; never both)
        runs_here = "periodic jobs (disassociation, lease expiry) run here"
        assert runs_here in env.controller_log()[:log_len]
        assert "periodic jobs" not in second_run
        peer_log = peer.controller_log()
        assert runs_here in peer_log
        assert peer_log.index(runs_here) > peer_log.index("is now MASTER")
        assert not lost, lost_report
    finally:
        peer.close()


def test_a_change_confined_to_one_network_recompiles_only_its_switches(make_sdn_env, ovs_bridge,
                                                                       netns_host):
    """The change feed: a launch in project alpha concerns only the switch alpha's VIFs are
    on; a security group rule (global) concerns both (the positive control)."""
    env = make_sdn_env(config={"DEFAULT": {"network_manager": "vlan"}})
    env.cli("network", "create", "--label", "tenants", "--fixed_range_v4", "10.38.0.0/24",
            "--num_networks", "2", "--network_size", "64", "--vlan", "238")
    launch(env, netns_host, "a1", "alpha")
    other = ovs_bridge()
    b1 = env.cli_json("instance", "launch", "b1", "--project", "beta")
    netns_host(port_name=b1["port_name"], mac=b1["mac"])
    env.cli("instance", "plug", "b1", "--bridge", other.name)
    env.start_controller()
    netlab.add_controller(other.name, env.port)
    wait_for(lambda: any("cookie=0x5d" in f for f in other.dump_flows(table=0)), 30,
             what=f"the controller to sync {other.name}")
    dpid = {br: netlab.sh(["ovs-vsctl", "get", "Bridge", br, "datapath_id"]).stdout.strip()
            .strip('"') for br in (env.bridge.name, other.name)}

    def syncs(br: str, since: int) -> int:
        return env.controller_log()[since:].count(f"datapath {dpid[br]} incremental sync")

    mark = len(env.controller_log())
    env.cli_json("instance", "launch", "a2", "--project", "alpha")   # alpha's group exists
    wait_for(lambda: "concern 1 of 2 switches" in env.controller_log()[mark:], 10,
             what="the feed to confine the launch to alpha's switch")
    wait_for(lambda: syncs(env.bridge.name, mark) >= 1, 10, what="alpha's switch to sync")
    assert syncs(other.name, mark) == 0

    mark = len(env.controller_log())
    env.cli("secgroup-rule", "add", "default", "--project", "beta", "tcp", "22", "22",
            "0.0.0.0/0")
    wait_for(lambda: syncs(env.bridge.name, mark) >= 1 and syncs(other.name, mark) >= 1, 10,
             what="a security group change to reach both switches")
