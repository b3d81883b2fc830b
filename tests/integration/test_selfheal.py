"""Self-healing switches and DHCP that outlives its dependencies (issue 9, "Tests"), on real
userspace OVS with real dhclient and real pings.

Each test has a positive control (the fault really happened, the thing that must survive is
really there) and asserts its measured times loosely (the bound of the issue), reporting the
measurement in the assertion message. Tests 1, 2, 4 and 5 share one module-scoped deployment
(one controller, two leased instances pinging each other, ``dhcp_lease_time`` 10 s); the
bridge re-creation and the 5,000-VIF flood build their own.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration import netlab
from tests.integration.conftest import NetnsFactory, module_factories
from tests.integration.netlab import OFCTL, sh, wait_for
from tests.integration.test_controller import launch, lease_state, vlan_env

LEASE_TIME = 10            # s; T1 5 s: renewals every ~5 s; unanswered, the address goes soon
MAINTENANCE_INTERVAL = 10  # s; ControllerDeps.maintenance_interval (sdn.apps.controller; fixed)
REPAIR_BOUND = 2.0         # s; issue 9: drift repaired within 2 s
APPLY_BOUND = 1.0          # s; issue 9: state applied within 1 s (of a reconnect, of a DB release)


# --------------------------------------------------------------------------- helpers


def sdn_flows(bridge: str) -> list[str]:
    """The bridge's flows without counters and cookies, sorted (``dump-flows --no-stats``)."""
    out = sh(OFCTL + ["dump-flows", "--no-stats", "--names", bridge]).stdout
    flows = []
    for line in out.splitlines():
        line = line.strip()
        if not line or line.startswith(("OFPST_FLOW", "NXST_FLOW")):
            continue
        flows.append(re.sub(r"cookie=0x[0-9a-f]+,\s*", "", line))
    return sorted(flows)


def cookies(bridge: str) -> list[str]:
    return re.findall(r"cookie=(0x[0-9a-f]+)", sh(OFCTL + ["dump-flows", bridge]).stdout)


def flow_with(bridge: str, text: str) -> bool:
    return any(text in f for f in netlab.dump_flows(bridge))


def set_datapath_id(bridge: str, dpid: str) -> None:
    sh(["ovs-vsctl", "--timeout=30", "set", "Bridge", bridge, f"other_config:datapath-id={dpid}"])
    wait_for(lambda: sh(["ovs-vsctl", "--timeout=5", "get", "Bridge", bridge, "datapath_id"]
                        ).stdout.strip().strip('"') == dpid,
             timeout=10, what=f"datapath_id of {bridge} to become {dpid}")


def event_times(host: netlab.NetnsHost, *reasons: str) -> list[tuple[float, str]]:
    """(wall time the dhclient script recorded it, reason) of ``host``'s dhclient events."""
    out = []
    for f in sorted(Path(host.dhcp_files["events"]).iterdir()):
        reason = f.name.split("-", 1)[-1]
        if not f.name.startswith(".") and (not reasons or reason in reasons):
            out.append((f.stat().st_mtime, reason))
    return out


class PingStream:
    """``ping -D -O -i 0.05`` from ``host`` to ``address``; ``replies()`` are wall times."""

    def __init__(self, host: netlab.NetnsHost, address: str, interval: float = 0.05):
        self.path = host.workdir / f"ping-{netlab.random_suffix(6)}.txt"
        self._out = open(self.path, "wb")
        self.proc = host.popen(["ping", "-n", "-D", "-O", "-i", str(interval), "-W", "1", address],
                               stdout=self._out, stderr=subprocess.STDOUT)
        self.started = time.time()

    def text(self) -> str:
        return self.path.read_text(errors="replace")

    def replies(self) -> list[float]:
        return [float(m) for m in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", self.text(), re.M)]

    def wait_replies_after(self, t: float, n: int = 1, timeout: float = 10) -> list[float]:
        return wait_for(lambda: [r for r in self.replies() if r > t][n - 1:] or None,
                        timeout, what=f"{n} ping replies after {t:.3f}")

    def max_gap(self, start: float, end: float) -> float:
        """The longest time without a reply within [start, end] (wall clock)."""
        times = [start] + [r for r in self.replies() if start < r < end] + [end]
        return max(b - a for a, b in zip(times, times[1:]))

    def stop(self) -> str:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(timeout=10)
        self._out.close()
        return self.text()


def no_traceback(env: netlab.SdnEnv) -> None:
    log = env.controller_log()
    assert "Traceback" not in log, log[log.index("Traceback") - 2000:][:6000]


# --------------------------------------------------------------------------- shared deployment


@dataclass
class Lab:
    env: netlab.SdnEnv
    hosts: NetnsFactory
    a1: dict
    h_a1: netlab.NetnsHost
    a2: dict
    h_a2: netlab.NetnsHost

    @property
    def br(self) -> str:
        return self.env.bridge.name


@pytest.fixture(scope="module")
def lab(tmp_path_factory, integration_ready):
    """One controller on one bridge, a1 and a2 (project alpha, one VLAN network) leased with
    ``dhcp_lease_time`` 10 s and their dhclients kept running (renewing every ~5 s)."""
    with module_factories(tmp_path_factory.mktemp("selfheal")) as (_bridges, envs, hosts):
        env = vlan_env(envs, dhcp_lease_time=LEASE_TIME)
        a1, h_a1 = launch(env, hosts, "a1", "alpha")
        a2, h_a2 = launch(env, hosts, "a2", "alpha")
        env.start_controller()
        for client in [h_a1.dhclient(wait=False), h_a2.dhclient(wait=False)]:
            client.wait_bound()
        assert h_a1.ping(a2["address"]) and h_a2.ping(a1["address"])
        yield Lab(env, hosts, a1, h_a1, a2, h_a2)
        no_traceback(env)


# --------------------------------------------------------------------------- 1. del-flows


def test_del_flows_on_a_connected_bridge_is_repaired_within_2s(lab):
    br = lab.br
    before = sdn_flows(br)
    assert len(before) > 20, before
    stream = PingStream(lab.h_a1, lab.a2["address"])
    try:
        stream.wait_replies_after(stream.started, n=5)
        t_wall, t0 = time.time(), time.monotonic()
        sh(OFCTL + ["del-flows", br])
        gone = len(sdn_flows(br))
        repaired = wait_for(lambda: sdn_flows(br) == before and time.monotonic(), timeout=15,
                            interval=0.02, what="every sdn flow back after del-flows")
        repair = repaired - t0
        # positive control: the flows were really gone (the audit runs every second)
        assert gone < len(before), f"del-flows left {gone} of {len(before)} flows"
        assert repair < REPAIR_BOUND, f"del-flows repaired in {repair:.3f}s (bound {REPAIR_BOUND}s)"
        # pings resume: replies after the repair, and the outage is about the repair time
        stream.wait_replies_after(t_wall + repair, n=5, timeout=5)
        outage = stream.max_gap(t_wall - 1, time.time())
        assert outage < REPAIR_BOUND + 1, (f"pings stopped for {outage:.2f}s "
                                            f"(repair took {repair:.3f}s)")
        print(f"del-flows: {len(before)} flows back in {repair:.3f}s; ping outage {outage:.2f}s")
    finally:
        stream.stop()
    assert len(set(c[-12:] for c in cookies(br))) == 1, "flows of an older generation left"


# --------------------------------------------------------------------------- 2. foreign flows


FOREIGN = "cookie=0x5d01000000000001,table=0,priority=7,dl_src=02:de:ad:00:00:01,actions=drop"
NON_SDN = "cookie=0x1234,table=0,priority=1,in_port=999,actions=drop"


def test_foreign_sdn_flows_are_removed_and_other_flows_kept(lab):
    br = lab.br
    before = sdn_flows(br)
    current = lab.env.pipeline_cookie().split("=")[1]   # this generation's cookie
    # a hand-added flow with sdn's current cookie (the audit's flow count sees it) and one
    # with an sdn cookie of another generation; a non-sdn flow that must be left alone
    same_gen = f"cookie={current},table=0,priority=7,dl_src=02:de:ad:00:00:02,actions=drop"
    try:
        for foreign in (FOREIGN, same_gen):
            lab.env.bridge.add_flow(NON_SDN)
            t0 = time.monotonic()
            lab.env.bridge.add_flow(foreign)
            mac = re.search(r"dl_src=([0-9a-f:]+)", foreign).group(1)
            present = flow_with(br, mac)
            removed = wait_for(lambda: not flow_with(br, mac) and time.monotonic(), timeout=15,
                               interval=0.02, what=f"the foreign flow {foreign} removed")
            took = removed - t0
            assert present, f"positive control: {foreign} was not installed"
            assert took < REPAIR_BOUND, f"foreign flow {foreign} removed after {took:.3f}s"
            # the repair did not touch the non-sdn flow, and put back exactly sdn's flows
            flows = netlab.dump_flows(br)
            assert [f for f in flows if "cookie=0x1234," in f and "in_port=999" in f], flows
            wait_for(lambda: [f for f in sdn_flows(br) if "in_port=999" not in f] == before,
                     timeout=5, what="sdn's flows unchanged by the repair")
            print(f"foreign flow {foreign.split(',')[0]}: removed in {took:.3f}s")
    finally:
        sh(OFCTL + ["del-flows", br, "cookie=0x1234/-1"], check=False)


# --------------------------------------------------------------------------- 4. locked database


LOCKER = textwrap.dedent("""
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("ROLLBACK")
    print("released", flush=True)
    sys.stdin.read()
""")


def db_path(env: netlab.SdnEnv) -> str:
    text = env.config_file.read_text()
    return re.search(r"^connection = sqlite:///(.+)$", text, re.M).group(1)


def test_write_locked_database_pings_renewals_and_prompt_apply(lab):
    lock_for = 20.0
    br, path = lab.br, db_path(lab.env)
    pair_ip = "10.31.0.60"   # in alpha's network (10.31.0.0/26), not an instance's address
    assert not flow_with(br, pair_ip)
    stream = PingStream(lab.h_a1, lab.a2["address"])
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, path, str(lock_for)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    change = None
    try:
        stream.wait_replies_after(stream.started, n=5)
        assert locker.stdout.readline().strip() == "locked"
        t_lock = time.time()
        # positive control: another writer really cannot get in
        probe = sqlite3.connect(path, timeout=0.2, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            probe.execute("BEGIN IMMEDIATE")
        probe.close()
        # the state change is made while locked: the CLI waits for the lock (its busy timeout
        # is 30 s) and commits the moment it is released
        time.sleep(lock_for - 3)
        change = subprocess.Popen(
            [lab.env.sdn_exe, "--config-file", str(lab.env.config_file), "instance",
             "allow-address", "a1", "--ip", pair_ip],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        assert locker.stdout.readline().strip() == "released"
        t_release, t_rel = time.time(), time.monotonic()
        applied = wait_for(lambda: flow_with(br, pair_ip) and time.monotonic(), timeout=40,
                           interval=0.02, what=f"the allowed address {pair_ip} in the flows")
        apply = applied - t_rel
        out, _ = change.communicate(timeout=30)
        assert change.returncode == 0, out

        # pings kept flowing during the lock
        outage = stream.max_gap(t_lock, t_release)
        lost = [line for line in stream.text().splitlines() if "no answer yet" in line]
        # renewals during the lock were answered (RENEW: a unicast REQUEST got its ACK) and
        # the addresses kept
        for alloc, host in ((lab.a1, lab.h_a1), (lab.a2, lab.h_a2)):
            during = [r for t, r in event_times(host) if t_lock < t < t_release]
            assert during.count("RENEW") >= 2, (
                f"{alloc['instance']}: dhclient events during the {lock_for:.0f}s lock: {during}\n"
                f"{lab.env.controller_log()[-3000:]}")
            assert not {"EXPIRE", "FAIL", "REBIND"} & set(during), during
            assert host.ips() == [alloc["address"]]
        assert outage < 1.0, f"pings stopped for {outage:.2f}s during the lock; {lost[:5]}"
        assert apply < APPLY_BOUND, (f"state change applied {apply:.3f}s after the lock was "
                                     f"released (bound {APPLY_BOUND}s)")
        print(f"locked database: {len(stream.replies())} replies, longest gap {outage:.2f}s; "
              f"state change applied {apply:.3f}s after release")
    finally:
        if locker.poll() is None:
            os.killpg(locker.pid, signal.SIGKILL)
            locker.wait(timeout=10)
        if change is not None and change.poll() is None:
            os.killpg(change.pid, signal.SIGKILL)
            change.wait(timeout=10)
        stream.stop()
    # the renewals answered from memory reach the database once it is back
    wait_for(lambda: lease_state(lab.env, lab.a1["address"]), timeout=10,
             what="a1 still leased in state")


# --------------------------------------------------------------------------- 5. lease expiry


def test_lease_expiry_clears_leased(lab):
    a3, h_a3 = launch(lab.env, lab.hosts, "a3", "alpha")
    client = h_a3.dhclient()
    assert h_a3.ips() == [a3["address"]]
    # positive control: the lease is recorded (write-ahead: before the ACK left)
    assert lease_state(lab.env, a3["address"]) is True
    os.kill(client.pid, signal.SIGKILL)     # no DHCPRELEASE: the lease just runs out
    client.proc.wait(timeout=5)
    last_ack = max(t for t, _ in event_times(h_a3, "BOUND", "RENEW", "REBOOT"))
    bound = LEASE_TIME + MAINTENANCE_INTERVAL + 2   # the maintenance loop wakes every second
    cleared = wait_for(lambda: lease_state(lab.env, a3["address"]) is False and time.time(),
                       timeout=bound + 10, interval=0.5,
                       what=f"{a3['address']} not leased after its lease expired")
    took = cleared - last_ack
    # a lease that is being renewed stays (a1's dhclient renews every ~5 s)
    assert lease_state(lab.env, lab.a1["address"]) is True
    assert took >= LEASE_TIME, f"lease cleared {took:.1f}s after its last ACK, before it expired"
    assert took <= bound, (f"lease cleared {took:.1f}s after its last ACK (lease {LEASE_TIME}s, "
                           f"maintenance every {MAINTENANCE_INTERVAL}s)")
    assert "leases expired without renewal" in lab.env.controller_log()
    print(f"lease expiry: leased cleared {took:.1f}s after the last ACK")


# --------------------------------------------------------------------------- 3. bridge re-created


def plug(env, netns_host, name, bridge):
    """Launch ``name`` (project alpha), make its namespace and plug it into ``bridge``."""
    alloc = env.cli_json("instance", "launch", name, "--project", "alpha")
    host = netns_host(port_name=alloc["port_name"], mac=alloc["mac"])
    env.cli("instance", "plug", name, "--bridge", bridge)
    return alloc, host


def test_bridge_recreated_gets_state_within_1s_while_another_keeps_syncing(
        make_sdn_env, ovs_bridge, netns_host):
    env = vlan_env(make_sdn_env)
    br_a, br_b = env.bridge, ovs_bridge()
    dpid_a, dpid_b = "00000000005d0a01", "00000000005d0b01"
    set_datapath_id(br_a.name, dpid_a)
    set_datapath_id(br_b.name, dpid_b)
    a1, h_a1 = plug(env, netns_host, "a1", br_a.name)
    a2, h_a2 = plug(env, netns_host, "a2", br_a.name)
    b1, h_b1 = plug(env, netns_host, "b1", br_b.name)
    b2, h_b2 = plug(env, netns_host, "b2", br_b.name)
    env.start_controller()
    br_b.set_controller(env.port)
    wait_for(lambda: env.openflow_connections() == 2 and flow_with(br_b.name, b1["mac"]),
             timeout=30, what=f"{br_b.name} synced")
    for client in [h.dhclient(wait=False) for h in (h_a1, h_a2, h_b1, h_b2)]:
        client.wait_bound()
    assert h_a1.ping(a2["address"]) and h_b1.ping(b2["address"])
    stream = PingStream(h_b1, b2["address"])
    try:
        stream.wait_replies_after(stream.started, n=5)

        # A goes away: B's state changes still reach B at once, A's wait for A
        sh(["ovs-vsctl", "--timeout=30", "del-br", br_a.name])
        t_down = time.time()
        env.cli("instance", "allow-address", "a1", "--ip", "10.31.0.61")
        env.cli("instance", "allow-address", "b1", "--ip", "10.31.0.62")
        t0 = time.monotonic()
        b_took = wait_for(lambda: flow_with(br_b.name, "10.31.0.62") and time.monotonic(),
                          timeout=30, interval=0.02, what="B's state change on B") - t0
        assert b_took < APPLY_BOUND, f"B got a state change {b_took:.3f}s after it, A down"
        wait_for(lambda: env.openflow_connections() == 1, timeout=10,
                 what=f"{br_a.name}'s OpenFlow connection closed")

        # A comes back: same name, same datapath id, its instances re-plugged
        netlab.create_bridge(name=br_a.name)
        set_datapath_id(br_a.name, dpid_a)
        for name in ("a1", "a2"):
            env.cli("instance", "plug", name, "--bridge", br_a.name)
        br_a.set_controller(env.port)
        t_conn = wait_for(lambda: env.openflow_connections() == 2 and time.monotonic(),
                          timeout=30, interval=0.02, what=f"{br_a.name} reconnected")
        synced = wait_for(lambda: flow_with(br_a.name, "10.31.0.61") and time.monotonic(),
                          timeout=30, interval=0.02, what="the change made while A was down on A")
        reconnect_took = synced - t_conn
        # and a change made now reaches both
        env.cli("instance", "allow-address", "a2", "--ip", "10.31.0.63")
        env.cli("instance", "allow-address", "b2", "--ip", "10.31.0.64")
        t1 = time.monotonic()
        a_took = wait_for(lambda: flow_with(br_a.name, "10.31.0.63") and time.monotonic(),
                          timeout=30, interval=0.02, what="a new change on the re-created A") - t1
        b2_took = wait_for(lambda: flow_with(br_b.name, "10.31.0.64") and time.monotonic(),
                           timeout=30, interval=0.02, what="a new change on B") - t1
        assert reconnect_took < APPLY_BOUND, (f"re-created {br_a.name} held the current state "
                                              f"{reconnect_took:.3f}s after reconnecting")
        assert a_took < APPLY_BOUND and b2_took < APPLY_BOUND, (a_took, b2_took)
        # the re-created switch forwards again; B never stopped
        assert h_a1.ping(a2["address"]) and h_a2.ping(a1["address"])
        outage = stream.max_gap(t_down, time.time())
        assert outage < 1.0, f"B's pings stopped for {outage:.2f}s while A was re-created"
        print(f"bridge re-created: B change {b_took:.3f}s with A down; A synced "
              f"{reconnect_took:.3f}s after reconnect; then A {a_took:.3f}s, B {b2_took:.3f}s")
    finally:
        stream.stop()
    log = env.controller_log()
    assert f"datapath {dpid_a} disconnected" in log, log[-3000:]
    no_traceback(env)


# --------------------------------------------------------------------------- 6. 5,000 VIFs flood


N_VIFS = 5000


def add_patch_ports(bridge: str, names: list[str]) -> dict[str, int]:
    """Cheap VIF ports (as benchmarks/bench_system.py): OVS patch ports whose peers do not
    exist, no kernel device. Returns name -> ofport once OVS numbered them all."""
    for i in range(0, len(names), 1000):
        cmd = ["ovs-vsctl", "--no-wait", "--timeout=120"]
        for name in names[i:i + 1000]:
            cmd += ["--", "add-port", bridge, name, "--", "set", "Interface", name, "type=patch",
                    f"options:peer=none{name[3:]}"]
        sh(cmd, timeout=180)
    want = set(names)

    def numbered():
        out = sh(["ovs-vsctl", "--timeout=60", "--bare", "--columns=name,ofport", "find",
                  "Interface", "type=patch"], timeout=90).stdout
        ports = {}
        for record in out.split("\n\n"):
            fields = record.split()
            if len(fields) == 2 and fields[0] in want and int(fields[1]) > 0:
                ports[fields[0]] = int(fields[1])
        return ports if len(ports) == len(want) else None
    return wait_for(numbered, timeout=180, interval=1.0, what=f"{len(names)} patch ports numbered")


@pytest.mark.scale   # make bench: 5,000 ports take ~90 s of the 30-minute make test
def test_5000_vifs_in_one_network_flood_on_real_ovs(make_sdn_env):
    from benchmarks.lib import add_vifs   # one instance + VIF + fixed IP per MAC, one transaction
    from sdn import config
    from sdn.db import api as db

    env = make_sdn_env(config={"DEFAULT": {"network_manager": "flatdhcp"},
                               "ovs": {"dhcp_rate_limit": 0}})
    env.cli("network", "create", "--label", "big", "--fixed_range_v4", "10.60.0.0/19",
            "--network_size", "8192", "--bridge", env.bridge.name)
    conf = config.load(["--config-file", str(env.config_file)], conf=config.make_conf())
    engine = db.get_engine(conf.database.connection)
    try:
        net_id = env.cli_json("network", "list")[0]["id"]
        macs = [f"02:5d:00:00:{i >> 8:02x}:{i & 0xFF:02x}" for i in range(N_VIFS)]
        vifs = add_vifs(engine, net_id, macs, project="alpha",
                        uuids=[str(uuidlib.uuid4()) for _ in range(N_VIFS)])
    finally:
        engine.dispose()
    try:
        _flood_5000(env, vifs)
    finally:   # a 5,000-port bridge takes ovs-vswitchd longer than Bridge.close() waits
        env.stop_controller(wait_disconnected=False)
        t = time.monotonic()
        sh(["ovs-vsctl", "--timeout=300", "--if-exists", "del-br", env.bridge.name], timeout=320)
        env.bridge.closed = True
        print(f"5,000-port bridge deleted in {time.monotonic() - t:.1f}s")


def _flood_5000(env, vifs):
    t = time.monotonic()
    ofports = add_patch_ports(env.bridge.name, [v["port"] for v in vifs])
    ports_s = time.monotonic() - t
    t = time.monotonic()
    env.start_controller(timeout=180)       # returns once the full sync's bundle committed
    sync_s = time.monotonic() - t

    timing = f"ports numbered in {ports_s:.1f}s, controller synced in {sync_s:.1f}s"

    # the flood group chains: a root group applying chunk groups that hold one bucket per VIF;
    # two of them, since the VIFs have security groups: ARP (straight out) and IP (each copy
    # through its receiver's ingress ACL)
    groups = sh(OFCTL + ["dump-groups", env.bridge.name], timeout=60).stdout
    all_groups = re.findall(r"group_id=(\d+),type=all,(.*)", groups)
    buckets = {gid: body.count("bucket=") for gid, body in all_groups}
    roots = [gid for gid, body in all_groups if "group:" in body]
    assert len(roots) == 2, groups[:2000]
    for root in roots:
        chained = set(re.findall(r"group:(\d+)", dict(all_groups)[root]))
        assert sum(buckets[g] for g in chained) == N_VIFS and len(chained) >= 2, buckets

    src, dst = vifs[0], vifs[N_VIFS // 2]
    # positive control: a unicast ARP reply to one VIF reaches that VIF only
    out = env.bridge.trace(
        f"in_port={ofports[src['port']]},dl_src={src['mac']},dl_dst={dst['mac']},arp,"
        f"arp_op=2,arp_sha={src['mac']},arp_spa={src['address']},arp_tpa={dst['address']}")
    assert [int(n) for n in re.findall(r"^\s*output:(\d+)\s*$", out, re.M)] == \
        [ofports[dst["port"]]], out[-3000:]

    # a broadcast ARP request from one VIF reaches every other VIF of the network, once
    out = env.bridge.trace(
        f"in_port={ofports[src['port']]},dl_src={src['mac']},dl_dst=ff:ff:ff:ff:ff:ff,arp,"
        f"arp_op=1,arp_sha={src['mac']},arp_spa={src['address']},arp_tpa={dst['address']}")
    (env.workdir / "flood-trace.txt").write_text(out)
    in_port = ofports[src["port"]]   # listed, then "skipping output to input port"
    outputs = [n for n in map(int, re.findall(r"^\s*output:(\d+)\s*$", out, re.M))
               if n != in_port]
    others = {ofports[v["port"]] for v in vifs[1:]}
    verdict = "\n".join(line for line in out.splitlines()[-6:]
                        if line.startswith(("Datapath actions", "Translation failed")))
    assert len(outputs) == len(set(outputs)), "a port got the flood twice"
    assert set(outputs) == others, (
        f"flood reached {len(set(outputs) & others)} of {len(others)} other VIFs in the trace "
        f"({len(set(outputs) - others)} unexpected ports); ofproto/trace says:\n{verdict}\n"
        f"({timing}; full trace in {env.workdir / 'flood-trace.txt'})")
    # the ports are patch ports without peers, so the datapath actions are empty either way;
    # what must not happen is OVS giving up on the translation (too many resubmits, 64 KB)
    assert "Translation failed" not in out, verdict
    no_traceback(env)
    print(f"{N_VIFS} VIFs: {timing}; flood to {len(outputs)} ports through {len(chained)} "
          f"chained groups")
