#!/usr/bin/env python3
"""Run every sdn benchmark side by side with what operators would pick instead (issue 6).

    .venv/bin/python benchmarks/run.py [--out var/bench]
        [--only dhcp,dhcp-relay,flows,dataplane,alloc,restart,secgroups,failover,scale,ovn]
        [--dhcp-runs 3] [--dhcp-period 2] [--dhcp-ports 2,1000]
        [--flow-vifs 1000,10000] [--ovn-quick]

Prints a table of ratios with the raw numbers, writes ``results.json`` and ``results.md`` and
draws ``dhcp.png`` (DHCP success rate against offered rate, every server) and ``portup.png``
(port-up latency, sdn vs OVN: benchmarks/bench_ovn.py) in ``--out``.
The machine is shared and noisy: compare the ratios, measured in the same run.
Needs root, userspace OVS, perfdhcp (kea-admin), kea-dhcp4, dnsmasq, iperf3, matplotlib
(``make bench`` installs them), and Debian's postgresql (the allocation step starts a cluster of
its own, benchmarks/bench_alloc.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import bench_alloc, bench_dhcp, bench_failover, bench_scale, bench_secgroups, bench_system  # noqa: E402
from benchmarks import bench_dora, bench_ovn  # noqa: E402

TARGETS = {
    "dhcp_standalone": 1.5, "dhcp_openflow": 1.0, "flows_1k": 0.5, "flows_10k": 1.0,
    "rss_10k_mb": 200, "dataplane": 0.95, "alloc_duplicates": 0, "restart_lost": 0,
    "secgroups_dataplane": 0.95,
}


def log(msg: str) -> None:
    print(msg, flush=True)


def _median_spread(f: dict) -> str:
    """"0.87 [0.80-1.02], 3 pairs" from a flow programming result (older results: the ratio)."""
    spread = f.get("ratio_spread")
    if not spread:
        return f"{f['ratio']:.2f}"
    return f"{f['ratio']:.2f} [{spread['min']:.2f}-{spread['max']:.2f}], {f.get('pairs', '?')} pairs"


def table(r: dict) -> list[tuple[str, str, str, str, str]]:
    """(benchmark, sdn, baseline, ratio, target/verdict) rows."""
    rows = []

    def verdict(ok):
        return "MET" if ok else "NOT MET"
    rows += dora_rows(r.get("dhcp"))
    rows += relay_rows(r.get("dhcp_relay"))
    for key in ("flows_1k", "flows_10k"):
        f = r.get(key)
        if f and "error" not in f:
            rows.append((f"flow programming {f['vifs']} VIFs, flows/s (barrier-confirmed)",
                         f"{f['sdn_flows_per_s']} ({f['flows_added']} in {f['sdn_seconds']}s)",
                         f"bundle {f['bundle_flows_per_s']} ({f['bundle_seconds']}s)",
                         _median_spread(f), f">={TARGETS[key]} {verdict(f['ratio'] >= TARGETS[key])}"))
            ok = f["controller_rss_mb"] <= 200 if key == "flows_10k" else True
            rows.append((f"controller RSS at {f['vifs']} VIFs, MB", str(f["controller_rss_mb"]), "-", "-",
                         f"<=200 at 10k {verdict(ok)}" if key == "flows_10k" else "report"))
        elif f:
            rows.append((key, "error", f["error"][:60], "-", "NOT MET"))
    p = r.get("dataplane")
    if p and "error" in p:
        rows.append(("dataplane", "error", p["error"][:60], "-", "NOT MET"))
    elif p:
        rows.append(("iperf3 TCP, Mbit/s (sdn pipeline vs bare NORMAL)", str(p["sdn"]["mbit_s"]),
                     f"NORMAL {p['normal']['mbit_s']}", f"{p['ratio']:.2f}",
                     f">=0.95 {verdict(p['ratio'] >= 0.95)}"))
        rows.append(("datapath flows under traffic (dpctl/dump-flows)",
                     str(p["sdn"]["datapath_flows"]), f"NORMAL {p['normal']['datapath_flows']}", "-", "report"))
    alloc = r.get("alloc", [])
    if isinstance(alloc, dict):     # the step failed as a whole
        rows.append(("allocation", "error", alloc.get("error", "")[:60], "-", "NOT MET"))
        alloc = []
    for a in alloc:
        runs = a.get("runs_ops_per_s", [a["ops_per_s"]])
        rows.append((f"fixed-IP allocation {a['backend']}, {a['processes']} procs, ops/s (median of "
                     f"{len(runs)})", str(a["ops_per_s"]), f"{a['operations']} ops/run, runs {runs}",
                     f"{a['ratio_to_sqlite']:.2f} of sqlite" if a.get("ratio_to_sqlite") is not None else "-",
                     f"0 duplicates ({a['duplicates']}) {verdict(a['duplicates'] == 0)}"))
    s = r.get("restart")
    if s and "error" in s:
        rows.append(("restart", "error", s["error"][:60], "-", "NOT MET"))
    elif s:
        rows.append((f"kill -9 + restart, {s['vifs']} VIFs, 100 pings/s: lost", str(s["lost"]),
                     f"{s['ping_sent']} sent", "-", f"0 {verdict(s['lost'] == 0)}"))
        rows.append(("  time from restart to reconciled (full sync done), s", str(s["reconcile_seconds"]),
                     "-", "-", "report"))
    rows += secgroup_rows(r.get("secgroups"))
    rows += failover_rows(r.get("failover"))
    return rows


def failover_rows(f) -> list[tuple[str, str, str, str, str]]:
    """Rows of the failover step (benchmarks/bench_failover.py): one per lease length."""
    if f and "error" in f:
        return [("failover", "error", f.get("error", "")[:60], "-", "NOT MET")]
    rows = []
    by_lease: dict[float, dict[str, dict]] = {}
    for res in (f or {}).get("leases", []):
        by_lease.setdefault(res["lease_s"], {})[res.get("database", "sqlite")] = res

    def spread(res: dict) -> str:
        return f"{res['median_s']} [{res.get('min_s', '?')}-{res['max_s']}]"

    for lease, per in by_lease.items():    # SQLite and PostgreSQL side by side: median [min-max]
        sqlite, postgresql = per.get("sqlite"), per.get("postgresql")
        goal = "<=2 s" if lease <= 1 else "report"
        ok = all(r["median_s"] <= 2 for r in per.values())
        runs = next(iter(per.values()))["runs"]
        rows.append((f"failover: master kill -9 -> first DHCPACK by the new master, s "
                     f"(lease {lease:g} s, median [min-max] of {runs}; PostgreSQL vs SQLite)",
                     f"postgresql {spread(postgresql)}" if postgresql else "-",
                     f"sqlite {spread(sqlite)}" if sqlite else "-",
                     f"{postgresql['median_s'] / sqlite['median_s']:.2f}"
                     if sqlite and postgresql and sqlite["median_s"] else "-",
                     f"{goal} {'MET' if ok else 'NOT MET'}" if goal != "report" else goal))
    feed = (f or {}).get("feed")
    if feed:
        skipped = feed["concerned_a"] and not feed["concerned_b"]
        rows.append((f"change feed: launch on net A, switch B ({feed['vifs_per_datapath']} VIFs) "
                     f"not recompiled, compile ms saved", str(feed["compile_b_ms"]),
                     f"feed read {feed['feed_read_ms']} ms", "-",
                     f"B skipped {'MET' if skipped else 'NOT MET'}"))
    return rows


def secgroup_rows(g: dict | None) -> list[tuple[str, str, str, str, str]]:
    """Rows of the security-group step (benchmarks/bench_secgroups.py); medians of the runs."""
    if not g:
        return []
    if "error" in g:
        return [("secgroups", "error", g["error"][:60], "-", "NOT MET")]
    rows = []
    s = g.get("scale") or {}
    if "error" in s:
        rows.append(("secgroups scale", "error", s["error"][:60], "-", "NOT MET"))
    elif s:
        ok = s["flows_on_switch"] == s["formula_flows"]
        rows.append((f"SG flows on switch, {s['vifs']} VIFs/{s['groups']} groups, "
                     f"{s['ingress_rules_per_vif']} ingress rules/VIF",
                     str(s["flows_on_switch"]), f"formula {s['formula_flows']}", "-",
                     f"= formula {'MET' if ok else 'NOT MET'}"))
        n = len(s["full_sync"]["runs"])
        rows.append((f"  full sync of the {s['vifs']}-VIF state, commit -> on switch, s",
                     f"{s['full_sync']['median_seconds']} (median of {n})",
                     f"{s['full_sync']['median_flow_mods']} flow mods", "-", "report"))
        o = s["groups_onto_synced"]
        rows.append(("  all groups onto synced VIFs, commit -> on switch, s",
                     f"{o['median_seconds']} (median of {len(o['runs'])})",
                     f"{o['median_flow_mods']} flow mods", "-", "report"))
        for key, what in (("join_remote_group", "add-secgroup of 1 instance to a remote group"),
                          ("leave_remote_group", "remove-secgroup of it again"),
                          ("rule_remove_cidr", "remove 1 CIDR rule"),
                          ("rule_remove_remote", "remove 1 remote-group rule"),
                          ("rule_add_remote", "add 1 remote-group rule")):
            c = s.get(key)
            if not c:
                continue
            members = f", group of {c['group_members']}" if "group_members" in c else ""
            rows.append((f"  {what}, s / flow mods{members}",
                         f"{c['median_seconds']} (median of {len(c['runs'])})",
                         f"{c['median_flow_mods']} mods (max {c['max_flow_mods']})", "-",
                         f"O(VIFs)? {'no' if c['max_flow_mods'] < s['vifs'] else 'YES'}"))
    d = g.get("dataplane") or {}
    if "error" in d:
        rows.append(("secgroups dataplane", "error", d["error"][:60], "-", "NOT MET"))
    elif d:
        t = TARGETS["secgroups_dataplane"]
        rows.append(("iperf3 TCP, Mbit/s, firewall (stateful) vs port security off",
                     str(d["with_fw"]["median_mbit_s"]), f"off {d['without_fw']['median_mbit_s']}",
                     f"{d['ratio']:.2f} (median of {d['pairs']} pairs)",
                     f">={t} {'MET' if d['ratio'] >= t else 'NOT MET'}"))
        rows.append(("  own datapath flows under traffic (with / without firewall)",
                     str(d["with_fw"]["median_own_datapath_flows"]),
                     f"off {d['without_fw']['median_own_datapath_flows']}", "-", "report"))
    return rows


def scale_rows(r: dict | None) -> list[tuple[str, str, str, str, str]]:
    """Rows of the scale step (benchmarks/bench_scale.py): one run."""
    if not r:
        return []
    if "error" in r:
        return [("scale", "error", r["error"][:60], "-", "NOT MET")]
    rows = [(f"{r['networks']} VLAN networks / {r['vifs']} VIFs / {r['switches']} switches + "
             "network hosts: commit -> all flows in, s", f"{r['total_seconds']} (one run)",
             f"{r['flows_total']} flows", "-", "report")]
    for name, p in r["per_switch"].items():
        rows.append((f"  {name}: converged s / flows / groups / controller RSS MB (idle)",
                     str(p["seconds"]), f"{p['flows']} flows, {p['groups']} groups", "-",
                     f"RSS {p['controller_rss_mb']} ({p['controller_rss_idle_mb']})"))
    return rows


def _spread(med, lo, hi) -> str:
    """``median [min-max]`` (just the median when every run agreed), "-" when there is none."""
    if med is None:
        return "-"
    return f"{med:g} [{lo:g}-{hi:g}]" if lo != hi else f"{med:g}"


def dora_rows(d) -> list[tuple[str, str, str, str, str]]:
    """Rows of the VIF-sourced DHCP step (benchmarks/bench_dora.py): lossless DORA/s and server
    CPU per lease, medians [min-max] of the alternating runs. A lossless rate at the generator's
    ceiling is ">=" and gives no ratio."""
    if not d:
        return []
    if "error" in d:
        return [("DHCP (dhcpgen)", "error", d["error"][:60], "-", "NOT MET")]
    rows = [(f"DHCP load generator (dhcpgen, VIF-sourced DORA) ceiling, DISCOVER/s; "
             f"{d['runs']} alternating runs, {d['period_s']:g} s per point", str(d["generator_ceiling"]),
             "-", "-", "report"),
            ("  DHCP meters during the runs", "sdn dhcp_rate_limit=0 (off)",
             "OVN: none by default (CoPP unset)", "-", "report")]
    pairs = d["pairs"]
    kea = (pairs.get("standalone") or {}).get("peer_summary")

    def rate(summary) -> str:
        s = _spread(summary["lossless_median"], summary["lossless_min"], summary["lossless_max"])
        return (">=" + s) if summary["at_ceiling"] else s

    def verdict(ok: bool) -> str:
        return "MET" if ok else "NOT MET"

    for name, res in pairs.items():
        label = ("DHCP standalone (raw socket) vs Kea 2.2 memfile" if name == "standalone"
                 else f"DHCP through OpenFlow, {name.split('_')[1]} ports on the bridge, vs OVN native")
        if "error" in res:
            rows.append((label, "error", res["error"][:60], "-", "NOT MET"))
            continue
        sdn, peer = res["sdn_summary"], res.get("peer_summary")
        goal = 1.5 if name == "standalone" else 1.0
        if peer is None:
            rows.append((f"{label}: lossless DORA/s (<1% loss), no peer run", rate(sdn), "-", "-", "report"))
            continue
        lr = res["ratios"]["lossless"]
        if lr["resolved"]:
            ratio = f"{lr['median']:.2f} [{lr['min']:.2f}-{lr['max']:.2f}]"
            target = f">={goal} {verdict(lr['median'] >= goal)}"
        else:
            ratio, target = "- (generator ceiling)", f">={goal} unresolved"
        rows.append((f"{label}: lossless DORA/s (<1% loss in both exchanges), median [min-max]",
                     rate(sdn), rate(peer), ratio, target))
        if sdn.get("idle_cpu_pct") is not None and peer.get("idle_cpu_pct") is not None:
            vs = (f"; vswitchd {sdn['idle_vswitchd_pct']:g} / {peer['idle_vswitchd_pct']:g}"
                  if sdn.get("idle_vswitchd_pct") is not None else "")
            rows.append((f"  idle CPU %, server (in every CPU figure below){vs}", f"{sdn['idle_cpu_pct']:g}",
                         f"{peer['idle_cpu_pct']:g}", "-", "report"))
        for r in d["cpu_rates"]:
            cr = res["ratios"][f"cpu_{r}"]
            sc, pc = sdn["cpu"][str(r)], peer["cpu"][str(r)]
            what = "peer/sdn" if name == "standalone" else "sdn/OVN"
            if cr["median"] is None:
                rows.append((f"  server CPU us per DORA at {r}/s", _spread(sc["median"], sc["min"], sc["max"]),
                             _spread(pc["median"], pc["min"], pc["max"]), "-", "- (a side lost >=1%)"))
                continue
            if name == "standalone":
                ratio, target = cr["median"], f">=1.5 {verdict(cr['median'] >= 1.5)}"
            else:
                ratio = 1 / cr["median"]
                target = f"<=2 {verdict(ratio <= 2)}"
            rows.append((f"  server CPU us per DORA at {r}/s (ratio {what})",
                         _spread(sc["median"], sc["min"], sc["max"]), _spread(pc["median"], pc["min"], pc["max"]),
                         f"{ratio:.2f}", target))
            if name != "standalone":
                sv, pv = sdn["vswitchd"].get(str(r)) or {}, peer["vswitchd"].get(str(r)) or {}
                rows.append((f"  ovs-vswitchd CPU us per DORA at {r}/s (counted separately)",
                             _spread(sv.get("median"), sv.get("min"), sv.get("max")),
                             _spread(pv.get("median"), pv.get("min"), pv.get("max")), "-", "report"))
        if name != "standalone" and kea:
            ok = not kea["at_ceiling"] and sdn["lossless_median"] >= kea["lossless_median"]
            rows.append(("  its lossless rate vs Kea's (standalone pair, same run)", rate(sdn), f"kea {rate(kea)}",
                         f"{sdn['lossless_median'] / kea['lossless_median']:.2f}" if kea["lossless_median"] else "-",
                         f">=1.0 {verdict(ok)}" if not kea["at_ceiling"] else ">=1.0 unresolved"))
    return rows


def relay_rows(d) -> list[tuple[str, str, str, str, str]]:
    """The perfdhcp step (benchmarks/bench_dhcp.py), kept only as the relay-path reference:
    perfdhcp speaks as a relay agent and tops out near 25k/s here, so no ratio and no target."""
    if not d:
        return []
    if "error" in d:
        return [("DHCP relay path (perfdhcp, reference)", "error", d["error"][:60], "-", "report")]
    return [(f"DHCP relay-path reference (perfdhcp as relay agent): {res.get('server', key)}, DORA/s <1% loss",
             str(res.get("max_rate")), "-", "-", "reference only") for key, res in d.items()]


def render(rows) -> str:
    head = ("benchmark", "sdn", "baseline", "ratio", "target")
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(5)]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    return "\n".join(lines)


def plot(dhcp: dict, path: Path) -> None:
    """DHCP success rate (ACKs per DISCOVER offered, %) against offered DORA/s (bench_dora): per
    server a line through the median of its runs at each rate, every run's points faint; hollow
    markers where the generator could not offer the rate."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, res in dhcp.get("pairs", {}).items():
        for side in ("peer", "sdn"):
            runs = res.get(side) or []
            summary = res.get(f"{side}_summary")
            if not runs or not summary:
                continue
            pts = [(p["offered_rate"], 100 * p["acks"] / p["discovers"] if p["discovers"] else 0,
                    p["gen_limited"]) for run in runs for p in run["points"]]
            by_rate: dict = {}
            for rate, success, _ in pts:
                by_rate.setdefault(rate, []).append(success)
            rates = sorted(by_rate)
            lossless = ("≥" if summary["at_ceiling"] else "") + f"{summary['lossless_median']:g}"
            line, = ax.plot(rates, [statistics.median(by_rate[r]) for r in rates], marker="o",
                            markersize=3, linewidth=1,
                            label=f"{summary['server']} (lossless {lossless}/s, median of {len(runs)})")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ".", alpha=0.3, color=line.get_color())
            limited = [p for p in pts if p[2]]
            if limited:
                ax.plot([p[0] for p in limited], [p[1] for p in limited], "o", mfc="none",
                        color=line.get_color())
    ax.axhline(99, color="grey", linestyle=":", label="99% (1% loss)")
    ax.set_xscale("log")
    ax.set_xlabel("offered rate (DORA/s, dhcpgen from VIF ports)")
    ax.set_ylabel("success rate (ACKs per DISCOVER, %)")
    ax.set_title("DHCP success rate against offered rate")
    ax.set_ylim(0, 101)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="var/bench")
    ap.add_argument("--only", default="dhcp,flows,dataplane,alloc,restart,secgroups,failover,scale,ovn")
    ap.add_argument("--dhcp-runs", type=int, default=bench_dora.RUNS,
                    help="alternating runs per DHCP pair (peer, sdn, peer, sdn ...); 1 for a quick look")
    ap.add_argument("--dhcp-period", type=float, default=bench_dora.PERIOD,
                    help="seconds of offered load per DHCP point (quick: 1)")
    ap.add_argument("--dhcp-ports", default=",".join(map(str, bench_dora.PORT_COUNTS)),
                    help="ports on the bridge of the DHCP-through-OpenFlow pairs (comma-separated)")
    ap.add_argument("--flow-vifs", default="1000,10000",
                    help="VIF counts of the flow programming benchmark (comma-separated)")
    ap.add_argument("--ovn-quick", action="store_true",
                    help="OVN beside sdn at small sizes (minutes instead of ~15)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    only = set(args.only.split(","))
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "host_cpus": os.cpu_count()}
    steps = []
    if "dhcp" in only:
        steps.append(("dhcp", lambda: bench_dora.run(
            work / "dora", log, runs=args.dhcp_runs, duration=args.dhcp_period,
            port_counts=[int(n) for n in args.dhcp_ports.split(",") if n])))
    if "dhcp-relay" in only:     # opt-in: perfdhcp as a relay agent, reference only
        steps.append(("dhcp_relay", lambda: bench_dhcp.run(work / "dhcp", log)))
    if "flows" in only:
        for n in (int(v) for v in args.flow_vifs.split(",")):
            key = f"flows_{n // 1000}k" if n % 1000 == 0 else f"flows_{n}"
            steps.append((key, lambda n=n: bench_system.flow_programming(work, n, log)))
    if "dataplane" in only:
        steps.append(("dataplane", lambda: bench_system.data_plane(work, log)))
    if "alloc" in only:
        steps.append(("alloc", lambda: bench_alloc.run(work / "alloc", log)))
    if "restart" in only:
        steps.append(("restart", lambda: bench_system.restart(work, log)))
    if "secgroups" in only:
        steps.append(("secgroups", lambda: bench_secgroups.run(work, log)))
    if "failover" in only:
        steps.append(("failover", lambda: bench_failover.run(work, log)))
    if "scale" in only:
        steps.append(("scale", lambda: bench_scale.run(work, log)))
    if "ovn" in only:
        steps.append(("ovn", lambda: bench_ovn.run(work / "ovn", log, quick=args.ovn_quick)))
    for name, fn in steps:
        log(f"== {name}")
        t = time.monotonic()
        try:
            results[name] = fn()
        except Exception as err:  # one broken benchmark must not hide the others
            log(f"    {name} FAILED: {type(err).__name__}: {err}")
            results[name] = {"error": f"{type(err).__name__}: {err}"}
        log(f"   ({time.monotonic() - t:.0f}s)")
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    rows = table(results) + scale_rows(results.get("scale")) + bench_ovn.table_rows(results.get("ovn"))
    text = render(rows)
    (out / "results.md").write_text(text + "\n")
    if isinstance(results.get("dhcp"), dict) and "pairs" in results["dhcp"]:
        plot(results["dhcp"], out / "dhcp.png")
    if isinstance(results.get("ovn"), dict) and "error" not in results["ovn"]:
        bench_ovn.plot(results["ovn"], out / "portup.png")
    print()
    print(text)
    print(f"\nresults: {out / 'results.json'}, {out / 'results.md'}, plot {out / 'dhcp.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
