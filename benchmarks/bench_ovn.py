"""sdn beside OVN 23.03 in the same run (issue 16, part 1): wiring, port-up, RSS, restart.

Both sides run on the same kind of switch: a private ovsdb-server + ovs-vswitchd in a
namespace of their own (``benchmarks/ovn.py``'s ``Switch``), N VIF ports of type
``ovn.PORT_KIND`` (no kernel device) that exist before the state is committed, and real veth
ports for the DHCP and ping clients. The system OVS is not used.

- wiring: "N ports committed in state" -> "all their flows on the switch". OVN: one NB
  transaction -> ``ovn-nbctl --wait=hv sync`` + every port ``ovn-installed`` + flow count
  stable (``OvnLab.wait_installed``; ``at`` = first poll that saw the final count). sdn: one
  state transaction (``bench_system.write_vifs``) -> the controller's barrier-confirmed sync
  (its log line, as ``bench_system.flow_programming``).
- port-up: with N present, one more VIF (its veth port already on the switch): commit ->
  its flows installed (OVN: ``ovn-installed`` on the interface; sdn: the sync logged) -> the
  first DHCPACK to DHCPREQUESTs sent every 10 ms from the port (tests/integration/
  dhcp_probe.py, raw socket: no client backoff in the number). ``REPS`` repetitions.
- RSS: sdn's controller vs ovn-northd + ovn-controller + NB + SB, after wiring.
- restart: two VIFs ping at 100/s; the controller (ovn-controller) is killed with SIGKILL
  3 s in and restarted 1 s later; packets lost and the time from the restart to resynced
  (OVN: ``--wait=hv sync`` returns; sdn: its full sync logged).

Runs alternate (OVN, sdn, OVN, sdn, ...); a ratio is the median over the runs, with the
spread. Sizes where a run takes minutes run once and say so.

    .venv/bin/python benchmarks/bench_ovn.py [--quick] [--out var/bench]
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid as uuidlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import lib, ovn  # noqa: E402
from benchmarks.bench_system import _syncs, vif_networks, write_vifs  # noqa: E402

PROBE = lib.REPO / "tests" / "integration" / "dhcp_probe.py"
REPS = 10
OVN_CIDR = "10.90.0.0/16"
OVN_ROUTER = "10.90.0.1"
OVN_SERVER_MAC = "02:00:00:00:90:01"
#: give up on an OVN wiring run after this long (the issue: "OVN where it finishes within
#: 10 minutes")
OVN_WIRING_TIMEOUT = 600
PING_COUNT = 1200          # 12 s at 100/s
ECHO_MISSES = 60           # sdn's [ovs] echo_misses (bench_scale.ECHO_MISSES: the same reason)
FULL = dict(ratio_sizes=(1000,), single_sizes=(5000,), sdn_only=(10000,), runs=3,
            portup_ovn=(1000, 5000), portup_sdn=(1000, 10000), restart_ovn=(1000, 5000),
            restart_sdn=(10000,))
QUICK = dict(ratio_sizes=(200,), single_sizes=(), sdn_only=(1000,), runs=3,
             portup_ovn=(200,), portup_sdn=(200, 1000), restart_ovn=(200,), restart_sdn=(1000,))


def _spread(values: list[float]) -> dict:
    return {"runs": values, "median": round(statistics.median(values), 3),
            "min": min(values), "max": max(values)}


def _percentiles(values: list[float]) -> dict:
    v = sorted(values)

    def pct(p):   # nearest rank
        return v[min(len(v) - 1, max(0, int(round(p / 100 * len(v) + 0.5)) - 1))]
    return {"n": len(v), "p50": round(statistics.median(v), 4), "p99": round(pct(99), 4),
            "max": round(v[-1], 4), "all": [round(x, 4) for x in values]}


def _probe(ns: str, dev: str, address: str) -> subprocess.Popen:
    """DHCPREQUEST for ``address`` every 10 ms from ``dev`` until an ACK (JSON on stdout)."""
    return subprocess.Popen(["ip", "netns", "exec", ns, lib.PY, str(PROBE), "--iface", dev,
                             "--address", address, "--interval", "0.01", "--timeout", "120"],
                            stdout=subprocess.PIPE, text=True)


def _probe_result(p: subprocess.Popen) -> float:
    out, _ = p.communicate(timeout=150)
    ack = json.loads(out.strip().splitlines()[-1])["ack_at"]
    if ack is None:
        raise RuntimeError("no DHCPACK within 120 s")
    return ack


def _ping(ns: str, address: str) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-i", "0.01", "-c", str(PING_COUNT),
                             "-W", "1", "-q", address], stdout=subprocess.PIPE, text=True)


def _ping_result(p: subprocess.Popen) -> tuple[int, int]:
    out, _ = p.communicate(timeout=120)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    return int(m.group(1)), int(m.group(2))


def _ping_ok(ns: str, address: str) -> bool:
    return lib.sh(["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", address],
                  check=False).returncode == 0


# ------------------------------------------------------------------ OVN side

class OvnSide:
    """One OVN lab with ``n`` VIFs wired (``wire``), then port-ups and a restart on it."""

    def __init__(self, cl: lib.Cleanup, work: Path, tag: str):
        self.cl, self.tag = cl, tag
        self.lab = ovn.OvnLab(cl, work / f"ovn-{tag}", name=tag)
        self.extra = 0
        self.clients = lib.netns(cl, f"bovc{tag}")

    def wire(self, n: int) -> dict:
        lab = self.lab
        lab.start()
        lab.create_switch(OVN_CIDR, router=OVN_ROUTER, dns=OVN_ROUTER, server_mac=OVN_SERVER_MAC)
        self.ports = ovn.ports(n, OVN_CIDR, prefix="p")
        lab.switch.add_ports(self.ports)
        before = lab.switch.count_flows()
        t0 = time.time()
        lab.add_logical_ports(self.ports)
        committed = time.time()
        done = lab.wait_installed(self.ports, timeout=OVN_WIRING_TIMEOUT)
        return dict(vifs=n, seconds=round(done.at - t0, 3), commit_seconds=round(committed - t0, 3),
                    flows=done.flows, flows_per_port=round((done.flows - before) / n, 1),
                    hv_acked=done.hv_acked, rss_mb=lab.rss_mb())

    def _real_port(self):
        self.extra += 1
        p = ovn.ports(1, OVN_CIDR, prefix="x", first=60000 + self.extra)[0]
        _ns, dev = self.lab.switch.veth_port(p, self.clients)
        return p, dev

    def port_up(self) -> dict:
        p, dev = self._real_port()
        probe = _probe(self.clients, dev, p.ip)
        time.sleep(0.5)                      # the probe is sending
        waiter = subprocess.Popen(["ovs-vsctl", f"--db=unix:{self.lab.switch.db_sock}",
                                   "--timeout=120", "wait-until", "Interface", p.iface,
                                   'external_ids:ovn-installed="true"'], env=self.lab.switch.env)
        t0 = time.time()
        self.lab.add_logical_ports([p])
        waiter.wait(130)
        installed = time.time()
        if waiter.returncode:
            raise RuntimeError(f"{p.name} not ovn-installed within 120 s")
        ack = _probe_result(probe)
        return dict(installed_s=round(installed - t0, 4), ack_s=round(ack - t0, 4))

    def restart(self) -> dict:
        (a, dev_a), (b, dev_b) = self._real_port(), self._real_port()
        ns_b = lib.netns(self.cl, f"bovr{self.tag}")
        lib.sh(["ip", "-n", self.clients, "link", "set", dev_b, "netns", ns_b])
        lib.sh(["ip", "-n", ns_b, "link", "set", dev_b, "up"])
        self.lab.add_logical_ports([a, b])
        self.lab.wait_installed([a, b], timeout=600, settle=0.5)
        for ns, dev, p in ((self.clients, dev_a, a), (ns_b, dev_b, b)):
            lib.sh(["ip", "-n", ns, "addr", "add", f"{p.ip}/16", "dev", dev])
        lib.wait_for(lambda: _ping_ok(ns_b, a.ip), 60, 0.2, what="ping through OVN")
        ping = _ping(ns_b, a.ip)
        time.sleep(3)
        t_kill = self.lab.kill_controller()
        time.sleep(1)
        self.lab.start_controller()
        t_start = time.time()
        self.lab.nbctl("--timeout=300", "--wait=hv", "sync", timeout=310)
        resynced = time.time()
        sent, recv = _ping_result(ping)
        return dict(ping_sent=sent, ping_received=recv, lost=sent - recv,
                    lost_seconds=round((sent - recv) / 100, 2),
                    resync_seconds=round(resynced - t_start, 3),
                    down_seconds=round(t_start - t_kill, 2), rss_mb=self.lab.rss_mb())


# ------------------------------------------------------------------ sdn side

class SdnSide:
    """sdn's controller on a lab switch of its own (same kind as OVN's) with ``n`` VIFs."""

    def __init__(self, cl: lib.Cleanup, work: Path, tag: str):
        self.cl, self.tag, self.dir = cl, tag, work / f"sdn-{tag}"
        self.switch = ovn.Switch(cl, self.dir / "run", f"bsdn{tag}")
        self.clients = lib.netns(cl, f"bsdc{tag}")
        self.log = self.dir / "controller.log"

    def _start_controller(self):
        self.ctl = lib.start_controller(self.cl, self.conf, self.log, netns=self.switch.ns)
        return self.ctl

    def wire(self, n: int) -> dict:
        port = lib.netlab.free_tcp_port()
        # the state first (new_state empties the directory), then the switch's run dir in it
        # echo_misses: as OVN's probe intervals (ovn.CONTROLLER_OPTIONS), what a careful
        # operator sets on a busy 2-core machine: with the default 3, a restarted controller
        # computing its first full sync at 1k VIFs here was dropped every ~8 s, never converging
        self.conf, self.engine, self.net_ids = vif_networks(
            self.dir, port, n + 20, ovs={"ovsdb_connection": f"unix:{self.switch.db_sock}",
                                         "echo_misses": ECHO_MISSES})
        self.switch.start()
        self.br = self.switch.add_bridge("br-int", controller_port=port, protocols="OpenFlow13")
        uuids = [str(uuidlib.uuid4()) for _ in range(n)]
        self.switch.add_ports([ovn.LogicalPort(name=u, iface="tap" + u[:11], mac="", ip="")
                               for u in uuids])
        self._start_controller()
        lib.wait_for(lambda: _syncs(self.log), 120, what="first full sync")
        before = self.switch.count_flows()
        t0 = time.time()
        write_vifs(self.engine, self.net_ids, uuids)
        done = lib.wait_for(lambda: [s for s in _syncs(self.log) if s[0] >= t0 - 1 and s[2] >= 10 * n],
                            900, 0.1, what=f"{n} VIFs programmed")[0]
        self.n = n
        flows = self.switch.count_flows()
        return dict(vifs=n, seconds=round(done[0] - t0, 3), flows=flows,
                    flows_per_port=round((flows - before) / n, 1),
                    rss_mb=round(lib.rss_mb(self.ctl.pid), 1))

    def _real_vif(self):
        """A veth port for a VIF not yet in state: (uuid, MAC, client device, its address to be)."""
        u = str(uuidlib.uuid4())
        self.n += 1
        mac = lib.mac_n(0x02AB00000000, self.n)
        _ns, dev = self.switch.veth_port(ovn.LogicalPort(name=u, iface="tap" + u[:11], mac=mac, ip=""),
                                         self.clients, br=self.br)
        return u, mac, dev

    def _add_vif(self, u: str, mac: str) -> dict:
        return lib.add_vifs(self.engine, self.net_ids[0], [mac], uuids=[u])[0]

    def _next_address(self) -> str:
        from sqlalchemy import select
        from sdn.db import models
        with lib.db.read_transaction(self.engine) as s:
            return s.execute(select(models.FixedIp.address).where(
                models.FixedIp.network_id == self.net_ids[0], models.FixedIp.reserved.is_(False),
                models.FixedIp.instance_uuid.is_(None)).order_by(models.FixedIp.id).limit(1)).scalar()

    def port_up(self) -> dict:
        u, mac, dev = self._real_vif()
        address = self._next_address()
        probe = _probe(self.clients, dev, address)
        time.sleep(0.5)
        t0 = time.time()
        vif = self._add_vif(u, mac)
        if vif["address"] != address:
            raise RuntimeError(f"VIF got {vif['address']}, the probe asks for {address}")
        synced = lib.wait_for(lambda: [s for s in _syncs(self.log) if s[0] >= t0 and s[2] > 0],
                              120, 0.01, what="the new VIF's sync")[0]
        ack = _probe_result(probe)
        return dict(installed_s=round(synced[0] - t0, 4), ack_s=round(ack - t0, 4))

    def restart(self) -> dict:
        # two instances as `sdn instance launch` makes them: in their project's default
        # security group (same-network traffic allowed), unlike the bare VIFs of add_vifs
        mgr = lib.managers.get_manager(self.engine, lib.load_conf(self.conf))
        t0 = time.time()
        va, vb = (mgr.allocate_for_instance(f"bping{i}", "bench", networks=["10.64.0.0/22"])
                  for i in (1, 2))
        ns_b = lib.netns(self.cl, f"bsdr{self.tag}")
        for v, ns in ((va, self.clients), (vb, ns_b)):
            _ns, v["dev"] = self.switch.veth_port(ovn.LogicalPort(
                name=v["instance"], iface=v["port_name"], mac=v["mac"], ip=""), ns, br=self.br)
            lib.sh(["ip", "-n", ns, "addr", "add", f"{v['address']}/22", "dev", v["dev"]])
        lib.wait_for(lambda: [s for s in _syncs(self.log) if s[0] >= t0 and s[2] > 0], 120, 0.1,
                     what="the ping VIFs' sync")
        lib.wait_for(lambda: _ping_ok(ns_b, va["address"]), 60, 0.2, what="ping through sdn")
        ping = _ping(ns_b, va["address"])
        time.sleep(3)
        t_kill = time.time()
        lib.kill_group(self.ctl, sig=9)
        time.sleep(1)
        self._start_controller()
        t_start = time.time()
        done = lib.wait_for(lambda: [s for s in _syncs(self.log) if s[0] >= t_start and s[1] == "full"],
                            900, 0.1, what="reconcile after restart")[0]
        sent, recv = _ping_result(ping)
        return dict(ping_sent=sent, ping_received=recv, lost=sent - recv,
                    lost_seconds=round((sent - recv) / 100, 2),
                    resync_seconds=round(done[0] - t_start, 3),
                    down_seconds=round(t_start - t_kill, 2), rss_mb=round(lib.rss_mb(self.ctl.pid), 1))


# ------------------------------------------------------------------ the section

def _one(side_cls, work: Path, tag: str, n: int, portups: int, restart: bool, log) -> dict:
    """A fresh lab of ``side_cls``: wire ``n``, then ``portups`` port-ups, then (``restart``) the
    restart test; everything removed after."""
    cl = lib.Cleanup()
    try:
        side = side_cls(cl, work, tag)
        res = {"wiring": side.wire(n)}
        name = "ovn" if side_cls is OvnSide else "sdn"
        w = res["wiring"]
        log(f"    {name} {n}: wired in {w['seconds']}s, {w['flows_per_port']} flows/port, RSS {w['rss_mb']}")
        if portups:
            ups = [side.port_up() for _ in range(portups)]
            res["port_up"] = {"installed": _percentiles([u["installed_s"] for u in ups]),
                              "ack": _percentiles([u["ack_s"] for u in ups])}
            log(f"    {name} {n}: port-up ack p50 {res['port_up']['ack']['p50']}s max "
                f"{res['port_up']['ack']['max']}s")
        if restart:
            res["restart"] = side.restart()
            r = res["restart"]
            log(f"    {name} {n}: restart lost {r['lost']}/{r['ping_sent']}, resync {r['resync_seconds']}s")
        return res
    finally:
        cl.run()


def _guarded(fn, log, what: str) -> dict:
    try:
        return fn()
    except Exception as err:   # one size failing (e.g. OVN past its timeout) keeps the others
        log(f"    {what} FAILED: {type(err).__name__}: {err}")
        return {"error": f"{type(err).__name__}: {err}"}


def run(work: Path, log, quick: bool = False) -> dict:
    """Every measurement of the section; the JSON run.py stores (shapes in the docstring of
    ``table_rows``). ``quick``: small sizes (~2 min)."""
    plan = QUICK if quick else FULL
    t_start = time.monotonic()
    # SIGTERM (a timeout, a background kill: SIGINT is ignored there) unwinds through the
    # cleanups instead of leaving the labs' processes and namespaces behind
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out: dict = {"sizes": {}, "plan": {k: list(v) if isinstance(v, tuple) else v for k, v in plan.items()}}
    sizes = sorted(set(plan["ratio_sizes"]) | set(plan["single_sizes"]) | set(plan["sdn_only"]))
    for n in sizes:
        runs = plan["runs"] if n in plan["ratio_sizes"] else 1
        entry: dict = {"ovn": [], "sdn": []}
        for k in range(runs):   # each run's lab (logs, databases) in its own dir: <side><n/100><k>
            last = k == runs - 1
            if n not in plan["sdn_only"]:
                entry["ovn"].append(_guarded(lambda: _one(
                    OvnSide, work, f"o{n // 100}{k}", n, REPS if last and n in plan["portup_ovn"] else 0,
                    last and n in plan["restart_ovn"], log), log, f"ovn {n}"))
            entry["sdn"].append(_guarded(lambda: _one(
                SdnSide, work, f"s{n // 100}{k}", n, REPS if last and n in plan["portup_sdn"] else 0,
                last and n in plan["restart_sdn"], log), log, f"sdn {n}"))
        entry["summary"] = summarize(entry)
        out["sizes"][str(n)] = entry
    out["seconds"] = round(time.monotonic() - t_start, 1)
    log(f"    ovn section: {out['seconds']} s")
    return out


def summarize(entry: dict) -> dict:
    """Medians/spreads of the wiring time, the RSS; ratio OVN/sdn only from >=3 pairs."""
    s: dict = {}
    for side in ("ovn", "sdn"):
        ok = [r for r in entry[side] if "error" not in r]
        if ok:
            s[f"{side}_wiring_s"] = _spread([r["wiring"]["seconds"] for r in ok])
            s[f"{side}_flows_per_port"] = ok[-1]["wiring"]["flows_per_port"]
            rss = [r["wiring"]["rss_mb"] if side == "sdn" else r["wiring"]["rss_mb"]["total"] for r in ok]
            s[f"{side}_rss_mb"] = _spread(rss)
        errs = [r["error"] for r in entry[side] if "error" in r]
        if errs:
            s[f"{side}_errors"] = errs
    pairs = [(o["wiring"]["seconds"], d["wiring"]["seconds"]) for o, d in zip(entry["ovn"], entry["sdn"])
             if "error" not in o and "error" not in d]
    if len(pairs) >= 3:
        s["wiring_ratio"] = _spread([round(o / d, 2) for o, d in pairs])
    elif pairs:
        s["wiring_ratio_one_run"] = round(pairs[0][0] / pairs[0][1], 2)
    return s


def plot(res: dict, path: Path) -> None:
    """Port-up latency (commit -> first DHCPACK), every repetition, sdn vs OVN per size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    labels, data = [], []
    for n, entry in res.get("sizes", {}).items():
        for side in ("sdn", "ovn"):
            for r in entry.get(side, []):
                if "port_up" in r:
                    labels.append(f"{side} @{int(n):,}")
                    data.append([v * 1000 for v in r["port_up"]["ack"]["all"]])
    if not data:
        return
    ax.boxplot(data, labels=labels, whis=(0, 100))
    for i, d in enumerate(data, 1):
        ax.scatter([i] * len(d), d, s=12, alpha=0.6)
    ax.axhline(100, color="grey", linestyle=":", label="100 ms (target p99 at 10k)")
    ax.set_yscale("log")
    ax.set_ylabel("commit -> first DHCPACK (ms)")
    ax.set_title("Port-up latency, one more VIF with N present (sdn vs OVN 23.03)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    ap.add_argument("--out", default="var/bench")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    res = run(out / "work", lambda m: print(m, flush=True), args.quick)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ovn.json").write_text(json.dumps(res, indent=1))
    plot(res, out / "portup.png")
    print(json.dumps({n: e["summary"] for n, e in res["sizes"].items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# ------------------------------------------------------------------ table (run.py)

#: issue 16's targets: OVN wiring time / sdn's, OVN port-up p99 / sdn's, sdn port-up p99 (s)
WIRING_RATIO, PORTUP_RATIO, PORTUP_P99_S = 10.0, 5.0, 0.100


def _first_ok(runs: list[dict], key: str) -> dict | None:
    return next((r[key] for r in reversed(runs) if key in r), None)


def table_rows(res: dict | None) -> list[tuple[str, str, str, str, str]]:
    """run.py's rows (benchmark, sdn, OVN, ratio, target/verdict) of ``run``'s result."""
    if not res:
        return []
    if "error" in res:
        return [("ovn", "error", res["error"][:60], "-", "NOT MET")]

    def verdict(ok):
        return "MET" if ok else "NOT MET"
    rows, sizes = [], res["sizes"]
    for n, e in sizes.items():
        s, vifs = e["summary"], f"{int(n):,}"
        if "sdn_wiring_s" not in s:
            rows.append((f"wiring {vifs} ports", "error", "; ".join(s.get("sdn_errors", []))[:60], "-", "NOT MET"))
            continue
        sw = s["sdn_wiring_s"]
        ow = s.get("ovn_wiring_s")
        runs = len(sw["runs"])
        sdn_txt = (f"{sw['median']} s (median of {runs}, {sw['min']}-{sw['max']})" if runs >= 3
                   else f"{sw['median']} s (1 run)")
        goal = int(n) in (1000, 5000)
        if ow:
            ovn_txt = (f"{ow['median']} s ({ow['min']}-{ow['max']})" if len(ow["runs"]) >= 3
                       else f"{ow['median']} s (1 run)")
            if "wiring_ratio" in s:
                r = s["wiring_ratio"]
                ratio, value = f"{r['median']} ({r['min']}-{r['max']})", r["median"]
            else:
                value = s["wiring_ratio_one_run"]
                ratio = f"{value} (1 run)"
            target = f">={WIRING_RATIO:g} {verdict(value >= WIRING_RATIO)}" if goal else "report"
        else:
            err = "; ".join(s.get("ovn_errors", []))
            ovn_txt, ratio = (f"error: {err[:50]}" if err else "not run"), "-"
            target = f">={WIRING_RATIO:g} NOT MET (no OVN run)" if goal and err else "report"
        rows.append((f"wiring {vifs} ports: commit -> all flows on the switch, OVN/sdn time", sdn_txt,
                     ovn_txt, ratio, target))
        rows.append((f"  flows per port on the switch ({vifs} ports)", str(s["sdn_flows_per_port"]),
                     str(s.get("ovn_flows_per_port", "-")), "-", "report"))
        srss, orss = s["sdn_rss_mb"]["median"], (s.get("ovn_rss_mb") or {}).get("median")
        detail = _first_ok(e["ovn"], "wiring")
        parts = (" (" + ", ".join(f"{k} {v}" for k, v in detail["rss_mb"].items() if k != "total") + ")"
                 if detail else "")
        rows.append((f"  RSS MB at {vifs} ports: sdn controller vs northd+controller+NB+SB", str(srss),
                     f"{orss}{parts}" if orss else "not run", f"{orss / srss:.1f}" if orss else "-",
                     f"<= OVN {verdict(srss <= orss)}" if orss else "report"))
        sup, oup = _first_ok(e["sdn"], "port_up"), _first_ok(e["ovn"], "port_up")
        if sup:
            a = sup["ack"]
            if oup:
                o = oup["ack"]
                r = o["p99"] / a["p99"]
                ovn_txt, ratio = f"p50 {o['p50']} p99 {o['p99']} max {o['max']}", f"{r:.1f}"
                target = f">={PORTUP_RATIO:g}x {verdict(r >= PORTUP_RATIO)}"
            else:
                ovn_txt, ratio, target = "not run", "-", "report"
            if int(n) >= 10000:
                target = f"p99<={PORTUP_P99_S * 1000:g} ms {verdict(a['p99'] <= PORTUP_P99_S)}"
            rows.append((f"  port-up at {vifs}: commit -> first DHCPACK, s ({a['n']} reps), OVN/sdn p99",
                         f"p50 {a['p50']} p99 {a['p99']} max {a['max']}", ovn_txt, ratio, target))
            rows.append((f"  port-up at {vifs}: commit -> flows installed, p50 s",
                         str(sup["installed"]["p50"]), str(oup["installed"]["p50"]) if oup else "-",
                         "-", "report"))
    ovn_restarts = {n: _first_ok(e["ovn"], "restart") for n, e in sizes.items()}
    ovn_restarts = {n: r for n, r in ovn_restarts.items() if r}
    ovn_txt = "; ".join(f"@{int(n):,}: lost {r['lost']} ({r['lost_seconds']} s), resync {r['resync_seconds']} s"
                        for n, r in ovn_restarts.items()) or "not run"
    for n, e in sizes.items():
        r = _first_ok(e["sdn"], "restart")
        if not r:
            continue
        ovn_lost = any(o["lost"] > 0 for o in ovn_restarts.values())
        rows.append((f"kill -9 + restart of the controller, {int(n):,} ports, 100 pings/s: lost (s)",
                     f"{r['lost']} ({r['lost_seconds']} s)", ovn_txt, "-",
                     f"0 {verdict(r['lost'] == 0)}" + ("" if ovn_lost else " (OVN lost none)")))
        best = min((o["resync_seconds"] for o in ovn_restarts.values()), default=None)
        rows.append((f"  restart -> resynced, s ({int(n):,} ports; OVN: its fastest size)",
                     str(r["resync_seconds"]), str(best) if best is not None else "not run",
                     f"{best / r['resync_seconds']:.1f}" if best else "-",
                     f"faster {verdict(best is not None and r['resync_seconds'] < best)}"))
    rows.append(("  OVN section runtime, s", str(res.get("seconds")), "-", "-", "report"))
    return rows
