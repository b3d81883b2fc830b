"""DHCP measured past the load generator's ceiling (issue 16, parts 1-3): VIF-sourced DORA.

The generator is ``benchmarks/dhcpgen/dhcpgen.c`` (C, AF_PACKET, sendmmsg/recvmmsg), built
here with gcc: it broadcasts DISCOVERs from VIF MACs on VIF ports (udp 68->67, as a guest's
dhclient; not relayed), REQUESTs each OFFER and counts ACKs, at a fixed offered DORA/s. Its own
ceiling (``gen_limited``: it could not send at the offered rate) is measured every point; a rate
it could not offer is reported as ">=" and gives no ratio.

Servers, each measured in its own lab:

* ``kea``: Kea 2.2 memfile (persisted lease file) on a veth, raw socket;
* ``sdn_raw``: sdn's responder standalone (``benchmarks/rawsocket_server.py``), leases in SQLite;
* ``sdn_of<N>``: sdn's controller + a private userspace OVS (``benchmarks.ovn.Switch``) with N
  ports on the bridge (2 loaded veth VIF ports + dummy ports), load from the VIF ports;
* ``ovn<N>``: OVN native DHCP (ovn-controller's pinctrl) on the same kind of private switch
  (``benchmarks.ovn.OvnLab``), same ports, same load.

CPU per lease: utime+stime (``/proc/<pid>/stat``, every thread, and the processes' descendants)
of the server processes over a point, divided by the ACKs it produced, in us; the private
ovs-vswitchd of the OpenFlow labs is counted separately. Fixed offered rates (``CPU_RATES``) are
always measured; the lossless rate (highest offered rate with < 1 % loss in DISCOVER->OFFER and
in REQUEST->ACK) is found by doubling then bisecting. Peer and sdn alternate (peer, sdn, peer,
sdn ...) ``RUNS`` times; ratios are medians with their spread.

sdn meters DHCP per VIF (``[ovs] dhcp_rate_limit``, 100 packets/s by default): the labs here
set it to 0 (no meter), since OVN has none by default either (its CoPP ``dhcpv4-opts`` meter is
unset unless an operator adds one, and is per logical switch, not per port).
"""

from __future__ import annotations

import json
import os
import statistics
import time
import uuid as uuidlib
from pathlib import Path

from benchmarks import lib

GEN_SRC = Path(__file__).with_name("dhcpgen") / "dhcpgen.c"
CIDR = "10.9.0.0/16"
SERVER_IP = "10.9.0.1"
BASE_MAC = 0x020000000000
#: standalone: clients (MACs) behind the one segment veth; each recurs every CLIENTS exchanges
CLIENTS = 5000
#: seconds of offered load per point, and how long to wait for late replies after it
PERIOD = 2.0
DRAIN_MS = 500
RUNS = 3
#: offered rates at which CPU per lease is always measured (below every server's ceiling)
CPU_RATES = (1000, 2000)
#: seconds each sweep first waits idle (the other lab's backlog drains) and measures the
#: server's idle CPU (part of every CPU-per-lease figure; reported on its own)
IDLE_S = 2.0
START_RATE = 1000
WARM_RATE = 1000
MAX_RATE = 400_000
BISECT_STEPS = 3
LOSS_OK_PCT = 1.0
#: ports on the bridge of the OpenFlow labs; 2 of them are loaded veth VIF ports
PORT_COUNTS = (2, 1000)
#: the whole step's time budget (s): a pair started past its share runs fewer alternations
BUDGET_S = 900
LOADED_PORTS = 2
TICK = os.sysconf("SC_CLK_TCK")

METER_NOTE = ("sdn: [ovs] dhcp_rate_limit = 0 (per-VIF DHCP meter off; default 100 pps per VIF); "
              "OVN: no DHCP meter by default (CoPP dhcpv4-opts unset; when set it is per logical "
              "switch)")


# ------------------------------------------------------------------ generator

def build_generator(work: Path) -> Path:
    """gcc -O2 dhcpgen.c into ``work`` (again when the source is newer). Raises RuntimeError."""
    work.mkdir(parents=True, exist_ok=True)
    binary = work / "dhcpgen"
    if not binary.exists() or binary.stat().st_mtime < GEN_SRC.stat().st_mtime:
        lib.sh(["gcc", "-O2", "-Wall", "-o", str(binary), str(GEN_SRC)])
    return binary


def generate(binary: Path, ns: str, ifaces: list[str], rate: float, duration: float,
             clients: int, base_mac: int = BASE_MAC, drain_ms: int = DRAIN_MS,
             pcap: Path | None = None) -> dict:
    """One run of the generator in namespace ``ns``: its JSON report (see dhcpgen.c)."""
    argv = ["ip", "netns", "exec", ns, str(binary), "--iface", ",".join(ifaces), "--rate",
            str(rate), "--duration", str(duration), "--clients", str(clients), "--mac",
            lib.mac_n(base_mac, 0), "--drain", str(drain_ms)]
    if pcap:
        argv += ["--pcap", str(pcap)]
    p = lib.sh(argv, check=False, timeout=duration + drain_ms / 1000 + 60)
    if p.returncode:
        raise RuntimeError(f"dhcpgen exited {p.returncode}: {p.stderr.strip()[-500:]}")
    return json.loads(p.stdout)


def generator_ceiling(binary: Path, work: Path, rate: int = 1_000_000) -> int:
    """DISCOVERs/s the generator sends into a veth nobody answers on (its own ceiling)."""
    cl = lib.Cleanup()
    try:
        ns = lib.netns(cl, "bdgceil")
        lib.sh(["ip", "-n", ns, "link", "add", "bdgc0", "type", "veth", "peer", "name", "bdgc1"])
        for dev in ("bdgc0", "bdgc1"):
            lib.sh(["ip", "-n", ns, "link", "set", dev, "up"])
        return int(generate(binary, ns, ["bdgc0"], rate, 1.0, 1000, drain_ms=0)["sent_rate"])
    finally:
        cl.run()


# ------------------------------------------------------------------ CPU of processes

def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``/proc/<pid>/task/*/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except OSError:
            pass
    return out


def cpu_seconds(pids) -> float:
    """utime+stime of ``pids`` and their descendants, every thread (``/proc/<pid>/stat``
    fields 14-15, whole thread group), in seconds; a process gone counts 0."""
    total = 0
    for pid in {p for root in pids for p in _tree(root)}:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


# ------------------------------------------------------------------ labs

class Lab:
    """What a sweep needs: the generator's namespace and interfaces, clients, the server's
    pids and (OpenFlow labs) the private ovs-vswitchd's pid."""

    name = "?"
    ns: str
    ifaces: list[str]
    clients: int
    server_pids: list[int]
    vswitchd_pid: int | None = None


def _segment(cl, tag: str) -> tuple[str, str]:
    cns, sns = lib.netns(cl, f"bgc{tag}"), lib.netns(cl, f"bgs{tag}")
    lib.veth(cl, f"bgc{tag}", cns, f"bgs{tag}", sns)
    lib.sh(["ip", "-n", sns, "addr", "add", f"{SERVER_IP}/16", "dev", f"bgs{tag}"])
    return cns, sns


def kea_lab(cl, work: Path) -> Lab:
    cns, sns = _segment(cl, "k")
    p = lib.start_kea(cl, work, "bgsk", sns, CIDR, "10.9.1.0 - 10.9.250.255")
    lab = Lab()
    lab.name, lab.ns, lab.ifaces, lab.clients, lab.server_pids = "kea", cns, ["bgck"], CLIENTS, [p.pid]
    return lab


def sdn_raw_lab(cl, work: Path) -> Lab:
    conf_path, engine, _mgr, net = lib.new_state(work / "raw", lib.netlab.free_tcp_port(), CIDR)
    lib.add_vifs(engine, net["id"], [lib.mac_n(BASE_MAC, i) for i in range(CLIENTS)])
    cns, sns = _segment(cl, "r")
    p = cl.proc(lib.popen([lib.PY, str(Path(__file__).with_name("rawsocket_server.py")),
                           "--config-file", str(conf_path), "bgsr"], work / "raw.out", sns))
    lab = Lab()
    lab.name, lab.ns, lab.ifaces, lab.clients, lab.server_pids = "sdn standalone", cns, ["bgcr"], CLIENTS, [p.pid]
    return lab


def _wait_answering(binary: Path, lab: Lab, timeout: float = 60) -> None:
    """Until one low-rate point gets every exchange ACKed (flows in, server up)."""
    def ok():
        r = generate(binary, lab.ns, lab.ifaces, 20, 0.2, lab.clients, drain_ms=300)
        return r["acks"] == r["discovers"] > 0
    lib.wait_for(ok, timeout, 0.5, what=f"{lab.name} answering DHCP")


def _settle(count, per_port_min: int, settle: float = 2.0, timeout: float = 600) -> int:
    """Until ``count()`` (flows on the bridge) is at least ``per_port_min`` and has not changed
    for ``settle`` s: programming the switch must not be measured as DHCP CPU."""
    end, last, since = time.monotonic() + timeout, -1, time.monotonic()
    while time.monotonic() < end:
        n = count()
        if n != last:
            last, since = n, time.monotonic()
        elif n >= per_port_min and time.monotonic() - since >= settle:
            return n
        time.sleep(0.2)
    raise TimeoutError(f"flow count still changing (or below {per_port_min}) after {timeout}s")


def sdn_openflow_lab(cl, work: Path, nports: int, tag: str) -> Lab:
    """sdn's controller on a private switch (``ovn.Switch``) with ``nports`` VIF ports on the
    bridge: LOADED_PORTS veths (the generator's) and dummy ports, every one a VIF in state."""
    from benchmarks import ovn
    port = lib.netlab.free_tcp_port()
    run = work / f"of{tag}"
    conf_path, engine, _mgr, net = lib.new_state(run / "state", port, CIDR,
                                                 ovs={"dhcp_rate_limit": 0})
    uuids = [str(uuidlib.uuid4()) for _ in range(nports)]
    vifs = lib.add_vifs(engine, net["id"], [lib.mac_n(BASE_MAC, i) for i in range(nports)], uuids=uuids)
    lports = [ovn.LogicalPort(name=v["uuid"], iface=v["port"], mac=v["mac"], ip=v["address"]) for v in vifs]
    sw = ovn.Switch(cl, run / "ovs", f"bsdn{tag}")
    sw.start()
    cl.add(sw.stop)
    br = sw.add_bridge("br-sdn", controller_port=port)
    cns = lib.netns(cl, f"bgo{tag}")
    devs = [sw.veth_port(p, cns, br=br)[1] for p in lports[:LOADED_PORTS]]
    if nports > LOADED_PORTS:
        sw.add_ports(lports[LOADED_PORTS:], br=br)
    ctl_log = run / "controller.log"
    ctl = cl.proc(lib.popen([lib.SDN, "--config-file", str(conf_path), "controller"], ctl_log,
                            netns=sw.ns))
    lib.wait_for(lambda: "full sync" in ctl_log.read_text(errors="replace"), 300, 0.2,
                 what="the controller's first full sync")
    _settle(lambda: sw.count_flows(br), per_port_min=nports)
    lab = Lab()
    lab.name, lab.ns, lab.ifaces, lab.clients = f"sdn OpenFlow {nports} ports", cns, devs, LOADED_PORTS
    lab.server_pids, lab.vswitchd_pid = [ctl.pid], sw.procs["vswitchd"].pid
    return lab


def ovn_lab(cl, work: Path, nports: int, tag: str) -> Lab:
    """OVN native DHCP on its own private switch, ``nports`` logical ports (LOADED_PORTS veths)."""
    from benchmarks import ovn
    lab_ovn = ovn.OvnLab(cl, work / f"ovn{tag}", name=f"d{tag}")
    lab_ovn.start()
    lab_ovn.create_switch(CIDR, router=SERVER_IP, dns=SERVER_IP, server_mac="02:00:00:00:09:01")
    lports = ovn.ports(nports, CIDR, mac_base=BASE_MAC)
    cns = lib.netns(cl, f"bgn{tag}")
    devs = [lab_ovn.switch.veth_port(p, cns)[1] for p in lports[:LOADED_PORTS]]
    if nports > LOADED_PORTS:
        lab_ovn.switch.add_ports(lports[LOADED_PORTS:])
    lab_ovn.add_logical_ports(lports)
    # every port ovn-installed and the flow count settled (not ``--wait=hv``: here its hv_cfg
    # stayed 0 at 1,000 ports while the flows were all in)
    want = {p.iface for p in lports}
    lib.wait_for(lambda: want <= lab_ovn.installed_ifaces(), 600, 0.5,
                 what=f"{nports} OVN ports ovn-installed")
    _settle(lab_ovn.switch.count_flows, per_port_min=nports)
    lab = Lab()
    lab.name, lab.ns, lab.ifaces, lab.clients = f"OVN {nports} ports", cns, devs, LOADED_PORTS
    pids = lab_ovn.pids()
    lab.server_pids = [pids["controller"]]      # pinctrl is a thread of ovn-controller
    lab.vswitchd_pid = lab_ovn.switch.procs["vswitchd"].pid
    lab.ovn = lab_ovn
    return lab


# ------------------------------------------------------------------ measurement

def point(binary: Path, lab: Lab, rate: int, duration: float) -> dict:
    """One offered rate: the generator's report + server/vswitchd CPU per ACK (us)."""
    cpu0 = cpu_seconds(lab.server_pids)
    vs0 = cpu_seconds([lab.vswitchd_pid]) if lab.vswitchd_pid else None
    res = generate(binary, lab.ns, lab.ifaces, rate, duration, lab.clients)
    cpu = cpu_seconds(lab.server_pids) - cpu0
    acks = res["acks"]
    res["server_cpu_s"] = round(cpu, 3)
    res["cpu_us_per_dora"] = round(cpu / acks * 1e6, 1) if acks else None
    if vs0 is not None:
        vs = cpu_seconds([lab.vswitchd_pid]) - vs0
        res["vswitchd_cpu_s"] = round(vs, 3)
        res["vswitchd_us_per_dora"] = round(vs / acks * 1e6, 1) if acks else None
    res["ok"] = res["do_loss_pct"] < LOSS_OK_PCT and res["ra_loss_pct"] < LOSS_OK_PCT
    return {k: v for k, v in res.items() if k not in ("rx_frames", "unmatched")}


def sweep(binary: Path, lab: Lab, duration: float, log, max_rate: int = MAX_RATE) -> dict:
    """CPU_RATES, then doubling from START_RATE until a point fails (>= 1 % loss) or the
    generator cannot offer the rate, then BISECT_STEPS bisections between the last pass and
    the first failure. ``lossless``: highest passing offered rate; ``at_ceiling``: it is a
    lower bound (the generator's ceiling or MAX_RATE was reached without loss)."""
    points: dict[int, dict] = {}
    c0 = cpu_seconds(lab.server_pids)
    v0 = cpu_seconds([lab.vswitchd_pid]) if lab.vswitchd_pid else 0.0
    time.sleep(IDLE_S)
    idle = round(100 * (cpu_seconds(lab.server_pids) - c0) / IDLE_S, 1)
    idle_vs = round(100 * (cpu_seconds([lab.vswitchd_pid]) - v0) / IDLE_S, 1) if lab.vswitchd_pid else None

    def measure(rate: int) -> dict:
        pt = points[rate] = point(binary, lab, rate, duration)
        lat = (pt["latency_us"].get("dora") or {}).get("p50")
        log(f"    {lab.name:24s} {rate:7d}/s sent {pt['sent_rate']:7.0f}/s acks {pt['dora_per_s']:7.0f}/s "
            f"loss {pt['do_loss_pct']:6.2f}/{pt['ra_loss_pct']:6.2f}% cpu {pt['cpu_us_per_dora']} us/DORA"
            + (f" vswitchd {pt.get('vswitchd_us_per_dora')}" if lab.vswitchd_pid else "")
            + (f" p50 {lat:.0f} us" if lat else "") + (" GEN-LIMITED" if pt["gen_limited"] else ""))
        return pt

    for rate in CPU_RATES:
        measure(rate)
    good, bad, at_ceiling = 0, None, False
    rate = START_RATE
    while True:
        pt = points.get(rate) or measure(rate)
        if pt["gen_limited"]:
            at_ceiling = pt["ok"]
            if pt["ok"]:
                good = rate
            else:
                bad = rate
            break
        if not pt["ok"]:
            bad = rate
            break
        good = rate
        if rate >= max_rate:
            at_ceiling = True
            break
        rate = min(rate * 2, max_rate)
    if bad is not None and not at_ceiling:
        lo, hi = good, bad
        for _ in range(BISECT_STEPS):
            mid = int(round((lo + hi) / 2, -2))
            if mid <= lo or mid >= hi:
                break
            pt = points.get(mid) or measure(mid)
            if pt["ok"] and not pt["gen_limited"]:
                lo = mid
            else:
                hi = mid
        good = lo
    cpu = {str(r): points[r]["cpu_us_per_dora"] for r in CPU_RATES if points[r]["ok"]}
    vs = {str(r): points[r].get("vswitchd_us_per_dora") for r in CPU_RATES if points[r]["ok"]}
    return dict(server=lab.name, lossless=good, at_ceiling=at_ceiling, cpu_us_per_dora=cpu,
                idle_cpu_pct=idle, idle_vswitchd_pct=idle_vs,
                vswitchd_us_per_dora=vs if lab.vswitchd_pid else None,
                points=[points[r] for r in sorted(points)])


def alternate(binary: Path, peer: Lab, sdn: Lab, runs: int, duration: float, log,
              deadline: float = float("inf")) -> dict:
    """Sweeps peer, sdn, peer, sdn ... (``runs`` each; fewer, but at least one pair, once
    ``time.monotonic()`` is past ``deadline``)."""
    out = {"peer": [], "sdn": []}
    for i in range(runs):
        if i and time.monotonic() > deadline:
            log(f"    time budget spent: {i} of {runs} runs")
            break
        for key, lab in (("peer", peer), ("sdn", sdn)):
            log(f"   run {i + 1}/{runs}: {lab.name}")
            out[key].append(sweep(binary, lab, duration, log))
    return out


def _median_spread(values: list[float]) -> tuple[float | None, float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None, None
    return statistics.median(vals), min(vals), max(vals)


def summarize(runs: list[dict]) -> dict:
    """Median and spread over a server's sweeps: lossless rate (with whether any reached the
    ceiling) and CPU per lease at each CPU rate."""
    med, lo, hi = _median_spread([r["lossless"] for r in runs])
    out = dict(server=runs[0]["server"], runs=len(runs), lossless_median=med, lossless_min=lo,
               lossless_max=hi, lossless_runs=[r["lossless"] for r in runs],
               at_ceiling=any(r["at_ceiling"] for r in runs), cpu={}, vswitchd={},
               idle_cpu_pct=_median_spread([r.get("idle_cpu_pct") for r in runs])[0],
               idle_vswitchd_pct=_median_spread([r.get("idle_vswitchd_pct") for r in runs])[0])
    for rate in CPU_RATES:
        m, a, b = _median_spread([r["cpu_us_per_dora"].get(str(rate)) for r in runs])
        out["cpu"][str(rate)] = dict(median=m, min=a, max=b)
        if runs[0].get("vswitchd_us_per_dora") is not None:
            m, a, b = _median_spread([(r["vswitchd_us_per_dora"] or {}).get(str(rate)) for r in runs])
            out["vswitchd"][str(rate)] = dict(median=m, min=a, max=b)
    return out


def ratios(peer_runs: list[dict], sdn_runs: list[dict]) -> dict:
    """Per-pair ratios (run i of sdn over run i of peer): lossless rate (None when either run
    reached the generator's ceiling: unresolved) and peer-CPU / sdn-CPU per lease (> 1: sdn
    cheaper) at each CPU rate; median, min, max of each."""
    out = {}
    rate = [None if p["at_ceiling"] or s["at_ceiling"] or not p["lossless"] else s["lossless"] / p["lossless"]
            for p, s in zip(peer_runs, sdn_runs)]
    out["lossless"] = dict(zip(("median", "min", "max"), _median_spread(rate)),
                           resolved=all(r is not None for r in rate), pairs=rate)
    for r in CPU_RATES:
        vals = []
        for p, s in zip(peer_runs, sdn_runs):
            pc, sc = p["cpu_us_per_dora"].get(str(r)), s["cpu_us_per_dora"].get(str(r))
            vals.append(pc / sc if pc and sc else None)
        out[f"cpu_{r}"] = dict(zip(("median", "min", "max"), _median_spread(vals)), pairs=vals)
    return out


# ------------------------------------------------------------------ entry point

def run(work: Path, log, runs: int = RUNS, duration: float = PERIOD,
        port_counts=PORT_COUNTS, with_ovn: bool = True, budget_s: float = BUDGET_S) -> dict:
    """Every pair (Kea / sdn standalone; OVN / sdn OpenFlow at each port count): ``runs``
    alternating sweeps each, fewer when a pair would overrun its share of ``budget_s``.
    Returns {generator_ceiling, pairs: {name: {peer, sdn, ratios, *_summary}}, seconds}."""
    t0 = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    binary = build_generator(work)
    ceiling = generator_ceiling(binary, work)
    log(f"    generator ceiling (no server): {ceiling} DISCOVER/s; {METER_NOTE}")
    out = {"generator_ceiling": ceiling, "meters": METER_NOTE, "period_s": duration, "runs": runs,
           "cpu_rates": list(CPU_RATES), "pairs": {}}
    pairs = [("standalone", lambda cl: kea_lab(cl, work), lambda cl: sdn_raw_lab(cl, work))]
    for n in port_counts:
        peer = (lambda cl, n=n: ovn_lab(cl, work, n, f"{n}")) if with_ovn else None
        pairs.append((f"openflow_{n}", peer, lambda cl, n=n: sdn_openflow_lab(cl, work, n, f"{n}")))
    for k, (name, make_peer, make_sdn) in enumerate(pairs):
        deadline = t0 + budget_s * (k + 1) / len(pairs)
        cl = lib.Cleanup()
        try:
            log(f"  == DHCP {name}")
            sdn = make_sdn(cl)
            peer = make_peer(cl) if make_peer else None
            for lab in (sdn, peer):
                if lab is not None:
                    _wait_answering(binary, lab)
                    # one DORA per client first: a server's first answer to a client (Kea's
                    # new lease, sdn's per-binding constants) is not what the runs compare
                    generate(binary, lab.ns, lab.ifaces, WARM_RATE, max(0.2, lab.clients / WARM_RATE),
                             lab.clients)
            if peer is None:
                res = {"peer": None, "sdn": [sweep(binary, sdn, duration, log) for _ in range(runs)]}
            else:
                res = alternate(binary, peer, sdn, runs, duration, log, deadline)
                res["ratios"] = ratios(res["peer"], res["sdn"])
                res["peer_summary"] = summarize(res["peer"])
            res["sdn_summary"] = summarize(res["sdn"])
            out["pairs"][name] = res
        except Exception as err:
            log(f"    DHCP {name}: FAILED {type(err).__name__}: {err}")
            out["pairs"][name] = {"error": f"{type(err).__name__}: {err}"}
        finally:
            cl.run()
    out["seconds"] = round(time.monotonic() - t0, 1)
    log(f"    DHCP step: {out['seconds']:.0f} s (budget {budget_s:.0f} s)")
    return out


if __name__ == "__main__":   # quick look: python -m benchmarks.bench_dora [runs] [period]
    import sys
    res = run(lib.REPO / "var" / "bench" / "work" / "dora", print,
              runs=int(sys.argv[1]) if len(sys.argv) > 1 else 1,
              duration=float(sys.argv[2]) if len(sys.argv) > 2 else 1.0,
              with_ovn="--no-ovn" not in sys.argv)
    print(json.dumps({k: v for k, v in res.items() if k != "pairs"}, indent=1))
