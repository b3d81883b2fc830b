"""Port-up latency (issue 16): one more VIF with N already on the switch, commit -> its flows
on the switch -> first DHCPACK from the new port.

Two parts:

- ``stages`` (in process, no switch): per port-up, the time of each stage the controller goes
  through: the manager's launch (``allocate_for_instance``, one transaction), the revision
  read, the view reload (``StateSource.load``, the reference) or refresh from the change feed
  (``StateSource.refresh``), port binding, compilation (``compile_datapath``, the reference,
  or ``IncrementalCompiler``), the flow index and the diff (``reconcile.plan_incremental``);
  and how much of it was Python's garbage collector.
- ``e2e``: a userspace bridge with N VIF ports (OVS patch ports named ``tap<uuid[:11]>``, N/1000
  networks of 1,000 VIFs), ``sdn controller`` connected; per repetition a VIF is launched
  through the manager (t0 .. commit), its port plugged (a veth renamed to its ``tap`` name,
  ``ovs-vsctl add-port``), and a raw-socket DHCP probe in a namespace sends a DHCPREQUEST
  (INIT-REBOOT, option 50 = its fixed IP) every 5 ms from the VIF's MAC from commit on, until
  a DHCPACK comes back. Reported per repetition: commit, plugged, flows installed (the end of
  the controller's sync that added them, from its log: after the bundle's barrier) and ACK,
  each from t0; p50 and p99 (= max of 10) over the repetitions. Also the controller's idle CPU
  (state wake-up, audits) over ``IDLE_S`` seconds.

    .venv/bin/python benchmarks/bench_portup.py [--sizes 1000,10000] [--reps 10]
        [--part stages,e2e] [--sdn-root DIR]   # DIR: another checkout's sdn (a baseline)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
import uuid as uuidlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import lib  # noqa: E402

PER_NETWORK = 1000
REPS = 10
IDLE_S = 10.0
PROBE_INTERVAL = 0.005


def _state(work: Path, n: int, port: int):
    """Config + state: ceil(n / 1000) flat networks of 2,048 addresses, n VIFs (1,000 each)."""
    conf, engine, mgr, net = lib.new_state(work, port, "10.64.0.0/21")
    nets = -(-n // PER_NETWORK)
    net_ids = [net["id"]] + [m["id"] for m in (mgr.create_networks(
        "bench2", "10.96.0.0/13", num_networks=nets - 1, network_size=2048) if nets > 1 else [])]
    uuids = [str(uuidlib.uuid4()) for _ in range(n)]
    with lib.db.transaction(engine) as session:
        for k, net_id in enumerate(net_ids):
            lo, hi = k * PER_NETWORK, min(n, (k + 1) * PER_NETWORK)
            lib.add_vifs(engine, net_id, [lib.mac_n(0x02AA00000000, i) for i in range(lo, hi)],
                         uuids=uuids[lo:hi], session=session)
    mgr.allocate_for_instance("warm", "bench")     # the project's default group exists after
    return conf, engine, mgr, uuids


class _GcTime:
    def __init__(self):
        self.seconds, self._start = 0.0, 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase, _info):
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._start

    def take(self) -> float:
        s, self.seconds = self.seconds, 0.0
        return s


def stages(work: Path, n: int, reps: int, log,
           paths: tuple[str, ...] = ("reference", "incremental")) -> dict:
    """Stage times (ms, median and max over ``reps`` port-ups) of the reference path (full
    load + full compile + full diff) and of the incremental one, on the same state."""
    from sdn.flows import reconcile
    from sdn.flows.compiler import CompileSettings, bind_ports, compile_datapath
    from sdn.flows.incremental import IncrementalCompiler
    from sdn.state import StateSource

    conf_path, engine, mgr, _ = _state(work / f"stages{n}", n, 6999)
    state = StateSource.from_conf(lib.load_conf(conf_path))
    settings = CompileSettings(dhcp_rate_pps=100)
    gc_time = _GcTime()
    out = {}
    for path in paths:
        view = state.load()
        ports = {v.port_name: i + 1 for i, v in enumerate(view.vifs)}
        compiler = IncrementalCompiler()
        compile_ = (lambda v, b: compile_datapath(v, b, settings)) if path == "reference" \
            else (lambda v, b: compiler.compile(v, b, settings))
        installed = reconcile.index(compile_(view, bind_ports(view, ports, frozenset())).flows)
        if path == "incremental":     # as the controller does after a bulk compile
            gc.collect(1)
            gc.freeze()
        times: dict[str, list[float]] = {}
        for rep in range(reps):
            t: dict[str, float] = {}
            gc_time.take()
            mark = time.perf_counter()

            def lap(name):
                nonlocal mark
                now = time.perf_counter()
                t[name] = (now - mark) * 1000
                mark = now
            mgr.allocate_for_instance(f"{path[:3]}{rep}", "bench")
            lap("write")
            state.revision()
            lap("revision")
            if path == "reference":
                new = state.load()
                lap("view")
                state.changes_since(view.revision, upto=new.revision)
                lap("feed")
            else:
                new, _feed = state.refresh(view)
                lap("view+feed")
            for vif in new.vifs:
                ports.setdefault(vif.port_name, len(ports) + 1)
            binding = bind_ports(new, ports, frozenset())
            lap("bind")
            desired = compile_(new, binding)
            lap("compile")
            flows = reconcile.index(desired.flows)
            lap("index")
            plan = reconcile.plan_incremental(installed, flows)
            reconcile.ct_zones(installed) - reconcile.ct_zones(flows)
            lap("diff")
            t["total"] = sum(t.values())
            t["of which gc"] = gc_time.take() * 1000
            t["flows added"] = len(plan.adds)
            installed, view = flows, new
            for k, v in t.items():
                times.setdefault(k, []).append(v)
        out[path] = {k: {"median": round(statistics.median(v), 1), "max": round(max(v), 1)}
                     for k, v in times.items()}
        out[path]["flows"] = len(installed)
        log(f"  stages n={n} {path}: " + ", ".join(
            f"{k} {v['median']:.1f}/{v['max']:.1f}" for k, v in out[path].items()
            if isinstance(v, dict)) + " (ms median/max)")
    return out


# ------------------------------------------------------------------------------ end to end

def _probe_main(iface: str) -> int:
    """In the client namespace: wait for "MAC ADDRESS" on stdin, then send DHCPREQUESTs from
    MAC every PROBE_INTERVAL until an ACK (``tests/integration/dhcp_probe.py``); print
    {"ack_at": unix time, ...}."""
    sys.path.insert(0, str(lib.REPO / "tests" / "integration"))
    from dhcp_probe import probe
    print("ready", flush=True)
    mac, address = sys.stdin.readline().split()
    answer = probe(iface, address, PROBE_INTERVAL, 60.0, bytes.fromhex(mac.replace(":", "")))
    print(json.dumps(answer), flush=True)
    return 0 if answer["ack_at"] else 1


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_LOG_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)[.,](\d{3})")


def _log_time(line: str) -> float | None:
    """The time of an oslo.log line (``2026-11-30 15:24:38.124 ...``; ``,`` also taken)."""
    import datetime
    m = _LOG_TS.match(line)
    if m is None:
        return None
    return datetime.datetime.strptime(f"{m.group(1)}.{m.group(2)}",
                                      "%Y-%m-%d %H:%M:%S.%f").timestamp()


def _sync_ends(log_path: Path, after: float) -> list[tuple[float, int]]:
    from benchmarks.bench_system import SYNC_RE
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        m, at = SYNC_RE.search(line), _log_time(line)
        if m and at is not None and at >= after - 0.002:
            out.append((at, int(m.group(2))))
    return out


def _plug(br: str, name: str) -> None:
    """Add port ``name`` to ``br`` in one OVSDB transaction (ovs-vsctl checks every name of
    the database client-side: seconds at 10k ports)."""
    ops = ["Open_vSwitch",
           {"op": "insert", "table": "Interface", "uuid-name": "i", "row": {"name": name}},
           {"op": "insert", "table": "Port", "uuid-name": "p",
            "row": {"name": name, "interfaces": ["named-uuid", "i"]}},
           {"op": "mutate", "table": "Bridge", "where": [["name", "==", br]],
            "mutations": [["ports", "insert", ["set", [["named-uuid", "p"]]]]]}]
    lib.sh(["ovsdb-client", "transact", json.dumps(ops)], timeout=120)


def e2e(work: Path, n: int, reps: int, log, sdn_root: Path | None = None) -> dict:
    from benchmarks.bench_scale import _patch_ports
    cl = lib.Cleanup()
    try:
        port = lib.netlab.free_tcp_port()
        conf, engine, mgr, uuids = _state(work / f"e2e{n}", n, port)
        br = lib.bridge(cl, "bbpu", port)
        _patch_ports(br, ["tap" + u[:11] for u in uuids])
        ns = lib.netns(cl, "bpu")
        ctl_log = work / f"e2e{n}" / "controller.log"
        env = dict(os.environ, PYTHONPATH=str(sdn_root)) if sdn_root else None
        ctl = cl.proc(lib.popen([lib.PY, "-m", "sdn.cli", "--config-file", str(conf),
                                 "controller"], ctl_log, env=env))
        lib.wait_for(lambda: _sync_ends(ctl_log, 0), 900, 0.5, what="first full sync")
        time.sleep(3.0)       # let the first audits pass
        cpu0, t_idle = _cpu_seconds(ctl.pid), time.monotonic()
        time.sleep(IDLE_S)
        idle_cpu = (_cpu_seconds(ctl.pid) - cpu0) / (time.monotonic() - t_idle)
        runs = []
        for i in range(reps):
            host, peer = f"bpuh{i}", f"bpuc{i}"
            lib.veth(cl, host, None, peer, ns)
            lib.sh(["ip", "-n", ns, "link", "set", peer, "promisc", "on"])
            probe = subprocess.Popen(["ip", "netns", "exec", ns, lib.PY, __file__, "--probe",
                                      peer], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
            cl.add(lambda p=probe: p.poll() is None and p.kill())
            assert probe.stdout.readline().strip() == "ready"
            time.sleep(1.0)        # the previous port-up's syncs and audit are over
            t0 = time.time()
            alloc = mgr.allocate_for_instance(f"portup{i}", "bench")
            t_commit = time.time()
            probe.stdin.write(f"{alloc['mac']} {alloc['address']}\n")
            probe.stdin.flush()
            tap = alloc["port_name"]
            lib.sh(["ip", "link", "set", host, "down"])
            lib.sh(["ip", "link", "set", host, "name", tap])
            cl.add(lib.sh, ["ip", "link", "del", tap], False)
            lib.sh(["ip", "link", "set", tap, "up"])
            _plug(br, tap)
            t_plug = time.time()
            answer = json.loads(probe.stdout.readline())
            if answer["ack_at"] is None:
                raise RuntimeError(f"port-up {i}: no DHCPACK within 60 s")
            syncs = _sync_ends(ctl_log, t0)
            flows_at = max((t for t, added in syncs if added), default=None)
            run = {"commit_ms": (t_commit - t0) * 1000, "plugged_ms": (t_plug - t0) * 1000,
                   "flows_ms": None if flows_at is None else (flows_at - t0) * 1000,
                   "ack_ms": (answer["ack_at"] - t0) * 1000,
                   "ack_after_plug_ms": (answer["ack_at"] - t_plug) * 1000,
                   "syncs": len(syncs)}
            runs.append({k: (round(v, 1) if isinstance(v, float) else v) for k, v in run.items()})
            log(f"  e2e n={n} port-up {i}: " + ", ".join(f"{k} {v}" for k, v in runs[-1].items()))
        summary = {}
        for key in ("commit_ms", "plugged_ms", "flows_ms", "ack_ms", "ack_after_plug_ms"):
            vals = sorted(r[key] for r in runs if r[key] is not None)
            if vals:
                summary[key] = {"p50": round(statistics.median(vals), 1),
                                "p99": round(vals[min(len(vals) - 1,
                                                      int(0.99 * len(vals)))], 1)}
        res = {"n": n, "reps": reps, "runs": runs, "summary": summary,
               "idle_cpu_percent": round(idle_cpu * 100, 2),
               "flows_on_switch": lib.count_flows(br),
               "rss_mb": round(lib.rss_mb(ctl.pid), 1), "sdn_root": str(sdn_root or lib.REPO)}
        log(f"  e2e n={n}: " + json.dumps(summary) + f", idle CPU {res['idle_cpu_percent']} %")
        return res
    finally:
        cl.run()


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--probe":
        return _probe_main(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--reps", type=int, default=REPS)
    ap.add_argument("--part", default="stages,e2e")
    ap.add_argument("--paths", default="reference,incremental",
                    help="stages: which paths to time")
    ap.add_argument("--sdn-root", type=Path, default=None,
                    help="run the controller from this checkout (a baseline)")
    ap.add_argument("--out", default="var/bench")
    args = ap.parse_args()
    out_dir = Path(args.out).resolve()
    work = out_dir / "work" / "portup"
    res = {}
    for n in (int(s) for s in args.sizes.split(",")):
        if "stages" in args.part:
            res[f"stages_{n}"] = stages(work, n, args.reps, lambda m: print(m, flush=True),
                                        tuple(args.paths.split(",")))
        if "e2e" in args.part:
            res[f"e2e_{n}"] = e2e(work, n, args.reps, lambda m: print(m, flush=True),
                                  args.sdn_root)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "portup.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
