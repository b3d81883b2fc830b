#!/usr/bin/env python3
"""Run every sdn benchmark side by side with what operators would pick instead (issue 6).

    .venv/bin/python benchmarks/run.py [--out var/bench]
        [--only dhcp,flows,dataplane,alloc,restart,secgroups,failover,scale,ovn]
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
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import bench_alloc, bench_dhcp, bench_failover, bench_scale, bench_secgroups, bench_system  # noqa: E402
from benchmarks import bench_ovn  # noqa: E402

TARGETS = {
    "dhcp_standalone": 1.5, "dhcp_openflow": 1.0, "flows_1k": 0.5, "flows_10k": 0.5,
    "rss_10k_mb": 200, "dataplane": 0.95, "alloc_duplicates": 0, "restart_lost": 0,
    "secgroups_dataplane": 0.95,
}


def log(msg: str) -> None:
    print(msg, flush=True)


def table(r: dict) -> list[tuple[str, str, str, str, str]]:
    """(benchmark, sdn, baseline, ratio, target/verdict) rows."""
    rows = []

    def verdict(ok):
        return "MET" if ok else "NOT MET"
    d = r.get("dhcp")
    if d:
        kea = d["kea"]["max_rate"]
        raw, of, dm = d["sdn_raw"]["max_rate"], d["sdn_openflow"]["max_rate"], d["dnsmasq"]["max_rate"]
        ratio = raw / kea if kea else 0
        rows.append(("DHCP standalone (raw socket) vs Kea, DORA/s <1% loss", str(raw), f"kea {kea}",
                     f"{ratio:.2f}", f">=1.5 {verdict(ratio >= 1.5)}"))
        ratio = of / kea if kea else 0
        rows.append(("DHCP through OpenFlow (relay port, packet-in/out) vs Kea", str(of),
                     f"kea {kea}", f"{ratio:.2f}",
                     f">=1.0 {verdict(ratio >= 1.0)}"))
        rows.append(("DHCP dnsmasq (reference)", "-", f"dnsmasq {dm}",
                     f"sdn/dnsmasq {raw / dm:.1f}" if dm else "-", "-"))
    for key in ("flows_1k", "flows_10k"):
        f = r.get(key)
        if f and "error" not in f:
            rows.append((f"flow programming {f['vifs']} VIFs, flows/s (barrier-confirmed)",
                         f"{f['sdn_flows_per_s']} ({f['flows_added']} in {f['sdn_seconds']}s)",
                         f"bundle {f['bundle_flows_per_s']} ({f['bundle_seconds']}s)",
                         f"{f['ratio']:.2f}", f">=0.5 {verdict(f['ratio'] >= 0.5)}"))
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
    for res in (f or {}).get("leases", []):
        goal = "<=2 s" if res["lease_s"] <= 1 else "report"
        ok = res["median_s"] <= 2
        rows.append((f"failover: master kill -9 -> first DHCPACK by the new master, s "
                     f"(lease {res['lease_s']:g} s, median of {res['runs']})",
                     str(res["median_s"]), f"max {res['max_s']}", "-",
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


def render(rows) -> str:
    head = ("benchmark", "sdn", "baseline", "ratio", "target")
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(5)]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    return "\n".join(lines)


def plot(dhcp: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for key, res in dhcp.items():
        pts = res.get("points") or []
        if not pts:
            continue
        ax.plot([p["offered"] for p in pts], [100 - p["loss_pct"] for p in pts], marker="o",
                label=f"{res.get('server', key)} (max {res['max_rate']}/s)")
    ax.axhline(99, color="grey", linestyle=":", label="99% (1% drops)")
    ax.set_xscale("log")
    ax.set_xlabel("offered rate (DORA exchanges/s, perfdhcp)")
    ax.set_ylabel("success rate (%)")
    ax.set_title("DHCP success rate against offered rate")
    ax.set_ylim(0, 101)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="var/bench")
    ap.add_argument("--only", default="dhcp,flows,dataplane,alloc,restart,secgroups,failover,scale,ovn")
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
        steps.append(("dhcp", lambda: bench_dhcp.run(work / "dhcp", log)))
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
    if isinstance(results.get("dhcp"), dict) and "error" not in results["dhcp"]:
        plot(results["dhcp"], out / "dhcp.png")
    if isinstance(results.get("ovn"), dict) and "error" not in results["ovn"]:
        bench_ovn.plot(results["ovn"], out / "portup.png")
    print()
    print(text)
    print(f"\nresults: {out / 'results.json'}, {out / 'results.md'}, plot {out / 'dhcp.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
