"""Failover time of several controllers (docs/HA.md): master killed with SIGKILL -> first
DHCPACK answered by the new master, median of ``RUNS``, per lease length and state database
(SQLite, and PostgreSQL: a database of the benchmark's own throw-away cluster, tests/pg.py,
with PostgreSQL's durable defaults as bench_alloc.py uses; the controllers are woken by NOTIFY
and hold the holder lock as a session advisory lock).

Set-up: one state database, one userspace bridge connected to two ``sdn controller``
processes (``bench-a``, ``bench-b``), one VIF in a namespace. Each run kills whichever
controller holds the deployment lease (read from ``leader_leases``), sends a DHCPREQUEST every
20 ms from the VIF (``tests/integration/dhcp_probe.py``, a raw socket: no client backoff in the
number) until an ACK comes back, then restarts the killed controller and waits until it has
rejoined as SLAVE before the next run. The number is lease expiry + the slave's renewal round
(a third of the lease) + role request + the first packet-in answered.

    .venv/bin/python benchmarks/bench_failover.py [--runs 10] [--leases 1,3]
        [--databases sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import lib  # noqa: E402
from sdn.apps.mastership import DEPLOYMENT  # noqa: E402
from sdn.db import leader  # noqa: E402
from tests import pg  # noqa: E402

RUNS = 10
LEASES = (1.0, 3.0)
DATABASES = ("sqlite", "postgresql")
CIDR = "10.77.0.0/24"
MAC = "fa:16:3e:77:00:05"
PROBE = lib.REPO / "tests" / "integration" / "dhcp_probe.py"


class Controller:
    """One controller process of the pair: its config, log, and where its current run's log
    starts (to read only what this run wrote)."""

    def __init__(self, cl, name: str, conf: Path, port: int, log: Path):
        self.cl, self.name, self.conf, self.port, self.log = cl, name, conf, port, log
        self.proc = None
        self.mark = 0

    def start(self) -> None:
        self.mark = self.log.stat().st_size if self.log.exists() else 0
        self.proc = lib.start_controller(self.cl, self.conf, self.log)
        lib.wait_for(lambda: lib.controller_listening(self.port), 30, what=f"{self.name} listening")

    def text(self) -> str:
        with open(self.log, "rb") as fh:
            fh.seek(self.mark)
            return fh.read().decode(errors="replace")

    def kill(self) -> float:
        killed_at = time.time()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        return killed_at


def probe(ns: str, address: str) -> dict:
    out = lib.sh(["ip", "netns", "exec", ns, lib.PY, str(PROBE), "--iface", "bfo0",
                  "--address", address, "--interval", "0.02", "--timeout", "30"], timeout=60)
    return json.loads(out.stdout)


def failover(work: Path, lease: float, runs: int, log, database: str = "sqlite",
             db_url: str | None = None) -> dict:
    """``runs`` failovers on one bridge and database (``db_url``: an empty PostgreSQL database;
    None: SQLite). Returns {lease_s, database, runs, seconds, median_s, min_s, max_s}."""
    cl = lib.Cleanup()
    try:
        tag = f"{int(lease * 1000)}-{database}"
        port_a, port_b = lib.netlab.free_tcp_port(), lib.netlab.free_tcp_port()
        conf_a, engine, _mgr, net = lib.new_state(
            work / f"failover-{tag}", port_a, CIDR,
            ovs={"mastership_lease": lease, "controller_id": "bench-a"}, db_url=db_url)
        text = conf_a.read_text().replace(f"ofp_tcp_listen_port = {port_a}",
                                          f"ofp_tcp_listen_port = {port_b}")
        conf_b = conf_a.with_name("sdn-b.conf")
        conf_b.write_text(text.replace("controller_id = bench-a", "controller_id = bench-b"))
        vif = lib.add_vifs(engine, net["id"], [MAC])[0]
        br = lib.bridge(cl, "bbfail", controller_port=port_a)
        lib.netlab.add_controller(br, port_b)
        ns = lib.netns(cl, "bfo")
        lib.veth(cl, "bfo0", ns, vif["port"], None, a_mac=MAC)
        lib.sh(["ovs-vsctl", "add-port", br, vif["port"]])
        ctls = {"bench-a": Controller(cl, "bench-a", conf_a, port_a, conf_a.with_name("a.log")),
                "bench-b": Controller(cl, "bench-b", conf_b, port_b, conf_b.with_name("b.log"))}
        for ctl in ctls.values():
            ctl.start()
        lib.wait_for(lambda: any("full sync" in c.text() for c in ctls.values()), 30,
                     what="the master's first full sync")
        first = probe(ns, vif["address"])          # positive control: the master answers
        if first["ack_at"] is None:
            raise RuntimeError("no DHCPACK before any kill")
        times = []
        for i in range(runs):
            master = ctls[leader.current(engine, DEPLOYMENT).holder]
            slave = next(c for c in ctls.values() if c is not master)
            lib.wait_for(lambda: "role SLAVE" in slave.text(), 30,
                         what=f"{slave.name} SLAVE before run {i}")
            killed_at = master.kill()
            answer = probe(ns, vif["address"])
            if answer["ack_at"] is None:
                raise RuntimeError(f"run {i}: no DHCPACK within 30 s of killing {master.name}")
            times.append(round(answer["ack_at"] - killed_at, 3))
            log(f"    {database} lease {lease:g}s run {i}: killed {master.name}, DHCP answered by "
                f"{slave.name} after {times[-1]:.3f}s")
            master.start()                       # rejoins as SLAVE (asserted by test_ha.py)
        engine.dispose()
        return {"lease_s": lease, "database": database, "runs": runs, "seconds": times,
                "median_s": round(statistics.median(times), 3), "min_s": min(times),
                "max_s": max(times)}
    finally:
        cl.run()


def feed_skip(work: Path, log, vifs: int = 1000) -> dict:
    """The change feed's saving, in process (no switch): two datapaths of ``vifs`` VIFs, each
    on its own network; a launch in an existing project on the first network; which datapaths
    the feed says it concerns, and what compiling the other one (skipped) would have cost."""
    from sdn.apps.statefeed import datapath_affected
    from sdn.db import changes
    from sdn.flows.compiler import CompileSettings, bind_ports, compile_datapath
    from sdn.state import StateSource

    _conf, engine, mgr, net_a = lib.new_state(work / "feed", lib.netlab.free_tcp_port(),
                                              "10.80.0.0/20")
    net_b = mgr.create_networks("bench2", "10.81.0.0/20", num_networks=1, network_size=4096)[0]
    ports = {}
    for key, net, base in (("a", net_a, 0xFA163E100000), ("b", net_b, 0xFA163E200000)):
        added = lib.add_vifs(engine, net["id"], [lib.mac_n(base, i) for i in range(vifs)])
        ports[key] = {v["port"]: i + 1 for i, v in enumerate(added)}
    mgr.allocate_for_instance("warm", "bench", networks=[net_a["cidr"]])   # its default group
    state = StateSource(engine, mgr, domain="novalocal", lease_time=120, mtu=None)
    view = state.load()
    bindings = {k: bind_ports(view, p, frozenset()) for k, p in ports.items()}
    mgr.allocate_for_instance("extra", "bench", networks=[net_a["cidr"]])
    t = time.perf_counter()
    view = state.load()
    reload_s = time.perf_counter() - t
    t = time.perf_counter()
    touched = changes.networks_touched(state.changes_since(view.revision - 1, upto=view.revision))
    feed_s = time.perf_counter() - t
    out = {"vifs_per_datapath": vifs, "view_reload_ms": round(reload_s * 1000, 1),
           "feed_read_ms": round(feed_s * 1000, 1)}
    for key in ports:
        t = time.perf_counter()
        desired = compile_datapath(view, bind_ports(view, ports[key], frozenset()),
                                   CompileSettings(dhcp_rate_pps=100))
        out[f"compile_{key}_ms"] = round((time.perf_counter() - t) * 1000)
        out[f"flows_{key}"] = len(desired.flows)
        out[f"concerned_{key}"] = datapath_affected(bindings[key], ports[key], touched)
    log(f"    change feed: a launch on network A concerns A={out['concerned_a']} "
        f"B={out['concerned_b']}; compiling B would take {out['compile_b_ms']} ms "
        f"({out['flows_b']} flows); feed read {out['feed_read_ms']} ms")
    return out


def run(work: Path, log, runs: int = RUNS, leases=LEASES, databases=DATABASES) -> dict:
    """{"leases": [failover() per lease and database], "feed": feed_skip()}; one PostgreSQL
    cluster for the whole step, a fresh database per lease."""
    cluster = pg.Cluster.start(durable=True) if "postgresql" in databases else None
    try:
        results = []
        for lease in leases:
            for database in databases:
                url = (cluster.url(cluster.create_database(f"failover_{int(lease * 1000)}"))
                       if database == "postgresql" else None)
                results.append(failover(work, lease, runs, log, database, url))
            log("    lease {:g}s, median [min-max] of {}: {}".format(lease, runs, "  ".join(
                f"{r['database']} {r['median_s']:.3f}s [{r['min_s']:.3f}-{r['max_s']:.3f}]"
                for r in results if r["lease_s"] == lease)))
    finally:
        if cluster is not None:
            cluster.stop()
    return {"leases": results, "feed": feed_skip(work, log)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=RUNS)
    ap.add_argument("--leases", default=",".join(f"{v:g}" for v in LEASES),
                    help="lease lengths in seconds, comma-separated")
    ap.add_argument("--databases", default=",".join(DATABASES),
                    help="state databases, comma-separated (sqlite, postgresql)")
    ap.add_argument("--out", default="var/bench")
    args = ap.parse_args()
    res = run(Path(args.out).resolve() / "work", lambda m: print(m, flush=True), args.runs,
              [float(v) for v in args.leases.split(",")], args.databases.split(","))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
