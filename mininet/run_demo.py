"""The sdn demo, end to end, on Mininet with userspace Open vSwitch.

    .venv/bin/python mininet/run_demo.py topology/demo.toml            # `make demo`
    .venv/bin/python mininet/run_demo.py topology/demo.toml --prepare  # state only, then print the mn command

Story: fresh state in var/demo (sdn.conf, SQLite), ``sdn db sync``, ``sdn network create`` per
``[[networks]]``, ``sdn controller`` as a subprocess, a Mininet network from
``mininet/sdn_topo.py`` (each instance launched through ``sdn instance launch``), ``sdn instance
plug`` for every instance, a real ``dhclient`` in every host, then checks: every host leased the
address sdn allocated to it, and ping between every pair matches ``[expect]``. Prints a report
and the flows of the first switch, stops everything it started (controller by pid, Mininet) and
exits 1 if any expectation failed, 2 if the demo could not run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
sys.path.insert(0, str(REPO_ROOT))  # tests.integration.netlab (dhclient helper, wait_for)
sys.path.insert(0, str(HERE))       # sdn_topo

from sdn_topo import SdnTopo, load_topology, sdn_executable  # noqa: E402
from tests.integration.netlab import (Dhclient, dhclient_argv, wait_for,  # noqa: E402
                                      write_dhclient_files, write_sdn_conf, merge_sections)


def log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def run_sdn(conf: Path, *args: str) -> str:
    argv = [sdn_executable(), "--config-file", str(conf), *map(str, args)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def prepare_state(spec: dict, state_dir: Path) -> Path:
    """Fresh state dir with sdn.conf, an up-to-date DB and the topology's networks."""
    if state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    ctl = spec.get("controller", {})
    switches = [s["name"] for s in spec["switches"]]
    trunks = [t.get(k) for t in spec.get("trunks", []) for k in ("a_intf", "b_intf")]
    sections = merge_sections({
        "DEFAULT": {"state_path": str(state_dir)},
        "database": {"connection": f"sqlite:///{state_dir / 'sdn.sqlite'}"},
        "ovs": {"ofp_listen_host": ctl.get("host", "127.0.0.1"),
                "ofp_tcp_listen_port": ctl.get("port", 6653),
                "integration_bridge": switches[0],
                "trunk_interfaces": [t for t in trunks if t]},
    }, spec.get("config"))
    conf = write_sdn_conf(state_dir / "sdn.conf", sections)
    log(f"config {conf}")
    run_sdn(conf, "db", "sync")
    for net in spec.get("networks", []):
        args = ["network", "create", "--label", net["label"], "--fixed_range_v4", net["fixed_range_v4"]]
        for key in ("num_networks", "network_size", "vlan", "vpn", "bridge", "bridge_interface",
                    "dns1", "dns2", "project_id"):
            if key in net:
                args += [f"--{key}", str(net[key])]
        for line in run_sdn(conf, *args).splitlines():
            log(line)
    for rng in spec.get("floating", []):
        log(run_sdn(conf, "floating", "create", rng["range"]).strip())
    return conf


def wait_ping(host, ip: str, timeout: float = 15, probe=None) -> bool:
    """Ping (``probe``, default :func:`ping`) until a reply or ``timeout``: the router learns
    the gateway MAC by ARP first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (probe or ping)(host, ip):
            return True
    return False


LISTEN = """
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(8)
    while True:
        c, _ = s.accept(); c.sendall(b"sdn-demo %d\\n" % port); c.close()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
print("listening", flush=True)
threading.Event().wait()
"""

CONNECT = """
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2,
                                 source_address=(sys.argv[3], 0))
    print("open" if s.recv(64).startswith(b"sdn-demo") else "closed")
except OSError as err:
    print("closed", err)
"""


def firewall_checks(net, spec: dict, conf: Path, floating: dict, state_dir: Path,
                    failures: list[str]) -> list[list]:
    """TCP connects through security groups: a listener in the instance on every port of a
    ``[[firewall]]`` entry, a connect from outside to its floating IP; expected open or not."""
    rows = []
    for check in spec.get("firewall", []):
        dst, src = net.get(check["to"]), net.get(check["from"])
        address = floating.get(check["to"])
        if address is None:
            failures.append(f"firewall check to {check['to']}: it has no floating IP")
            continue
        (state_dir / "listen.py").write_text(LISTEN)
        (state_dir / "connect.py").write_text(CONNECT)
        ports = [p for p, _ in check["ports"]]
        server = dst.popen([sys.executable, str(state_dir / "listen.py"), *map(str, ports)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            server.stdout.readline()
            for port, expected in check["ports"]:
                out = src.cmd(f"{sys.executable} {state_dir / 'connect.py'} {address} {port} "
                              f"{check['source']}")
                got = out.strip().startswith("open")
                verdict = "ok" if got == expected else "FAIL"
                if verdict == "FAIL":
                    failures.append(f"TCP {check['from']} -> {check['to']}:{port}: expected "
                                    f"{'open' if expected else 'refused'}, got {out.strip()}")
                rows.append([f"{check['from']} -> {check['to']}", f"{address}:{port}",
                             "admitted" if expected else "blocked",
                             "connected" if got else "no connection", verdict])
        finally:
            server.terminate()
            server.wait(timeout=5)
    return rows


def public_access(net, spec: dict, conf: Path, allocs: dict, failures: list[str],
                  floating: dict | None = None) -> list[list]:
    """Floating IPs reachable from outside, default SNAT from an instance without one."""
    outside = spec["outside"]
    ext = net.get(outside["name"])
    for cidr in outside.get("addresses", []):
        ext.cmd(f"ip addr add {cidr} dev {ext.defaultIntf().name}")
    for dst, via in outside.get("routes", []):
        ext.cmd(f"ip route add {dst} via {via}")
    rows = []
    with_floating = set()
    for fip in spec.get("floating_ips", []):
        address = run_sdn(conf, "floating", "allocate", "--project", fip["project"]).strip()
        run_sdn(conf, "floating", "associate", address, "--instance", fip["instance"],
                "--project", fip["project"])
        with_floating.add(fip["instance"])
        if floating is not None:
            floating[fip["instance"]] = address
        ok = wait_ping(ext, address)
        rows.append([f"{outside['name']} -> {fip['instance']}", f"floating {address}",
                     allocs[fip["instance"]]["address"], "reply" if ok else "no reply",
                     "ok" if ok else "FAIL"])
        if not ok:
            failures.append(f"floating IP {address} of {fip['instance']} not reachable from outside")
    internet = outside.get("internet")
    for inst in spec.get("instances", []):
        if internet and inst["name"] not in with_floating:
            ok = wait_ping(net.get(inst["name"]), internet)
            rows.append([f"{inst['name']} -> {outside['name']}", f"internet {internet}",
                         "SNAT via routing_source_ip", "reply" if ok else "no reply",
                         "ok" if ok else "FAIL"])
            if not ok:
                failures.append(f"{inst['name']} cannot reach {internet} through default SNAT")
            break  # one instance shows default SNAT
    return rows


class Controller:
    """``sdn controller`` in its own process group; stopped by pid."""

    def __init__(self, conf: Path, state_dir: Path, host: str, port: int):
        if port_open(host, port):
            raise RuntimeError(f"something already listens on {host}:{port}; stop it or change "
                               "[controller] port in the topology file")
        self.logfile = state_dir / "controller.log"
        self._log = open(self.logfile, "ab")
        self.proc = subprocess.Popen([sdn_executable(), "--config-file", str(conf), "controller"],
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

        def listening():
            if self.proc.poll() is not None:
                raise RuntimeError(f"sdn controller exited {self.proc.returncode}:\n{self.tail()}")
            return port_open(host, port)
        wait_for(listening, 60, interval=0.1, what=f"sdn controller listening on {host}:{port}")
        log(f"controller pid {self.proc.pid} listening on {host}:{port} (log {self.logfile})")

    def tail(self, n: int = 4000) -> str:
        return self.logfile.read_text(errors="replace")[-n:] if self.logfile.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.proc.pid, sig)
                    self.proc.wait(timeout=wait)
                    break
                except ProcessLookupError:
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log.close()


def ping(host, ip: str) -> bool:
    """Two probes 0.2 s apart, 1 s wait: the first may be spent on ARP."""
    out = host.cmd(f"ping -n -q -c 2 -i 0.2 -W 1 {ip} >/dev/null 2>&1; echo rc=$?")
    return "rc=0" in out


def ping6(host, ip: str) -> bool:
    out = host.cmd(f"ping -6 -n -q -c 2 -i 0.2 -W 1 {ip} >/dev/null 2>&1; echo rc=$?")
    return out.strip().endswith("rc=0")


def global_v6(host) -> list[str]:
    """Global IPv6 addresses of the host's interface that finished DAD."""
    import json
    out = host.cmd(f"ip -j -6 addr show dev {host.defaultIntf().name} scope global")
    try:
        links = json.loads(out or "[]")
    except ValueError:
        return []
    return [a["local"] for link in links for a in link.get("addr_info", [])
            if "local" in a and not a.get("tentative")]


def ipv6_checks(net, instances: list[dict], allocs: dict, want: dict, failures: list[str],
                timeout: float = 30) -> tuple[list[list], list[list]]:
    """Each instance's kernel autoconfigures its derived address from sdn's router
    advertisements (SLAAC); then the IPv6 ping matrix against the same expectations as IPv4.
    Returns (address rows, ping rows)."""
    names = [i["name"] for i in instances if allocs[i["name"]].get("address_v6")]
    deadline = time.monotonic() + timeout
    configured: dict[str, list[str]] = {}
    for name in names:
        while True:
            configured[name] = global_v6(net.get(name))
            if allocs[name]["address_v6"] in configured[name] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    rows = []
    for name in names:
        derived = allocs[name]["address_v6"]
        ok = derived in configured[name]
        if not ok:
            failures.append(f"{name}: SLAAC gave {configured[name] or 'nothing'}, sdn derived {derived}")
        rows.append([name, allocs[name]["mac"], allocs[name].get("cidr_v6"), derived,
                     " ".join(configured[name]) or "-", "ok" if ok else "FAIL"])
    prow = []
    for src in names:
        for dst in names:
            if src == dst:
                continue
            target = allocs[dst]["address_v6"]
            exp = want.get(frozenset((src, dst)))
            got = ping6(net.get(src), target)
            if exp and not got:     # the first packets may wait for neighbour discovery
                got = wait_ping(net.get(src), target, timeout=10, probe=ping6)
            prow.append(ping_row("ping -6", src, dst, target, exp, got, failures))
    return rows, prow


def ping_row(command: str, src: str, dst: str, target: str, expected: bool | None, got: bool,
             failures: list[str]) -> list:
    """One row of a ping matrix; a reply against the expectation (or its absence) is a failure."""
    verdict = "-" if expected is None else ("ok" if expected == got else "FAIL")
    if verdict == "FAIL":
        failures.append(f"{command} {src} -> {dst} ({target}): expected "
                        f"{'reply' if expected else 'no reply'}, got {'reply' if got else 'no reply'}")
    return [src, dst, target, {None: "(any)", True: "reply", False: "no reply"}[expected],
            "reply" if got else "no reply", verdict]


def table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [["-" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


SEND_PINGS = """
import sys
from scapy.all import ICMP, IP, Ether, Raw, sendp
src_mac, dst_mac, src_ip, dst_ip, iface, tag = sys.argv[1:7]
sendp([Ether(src=src_mac, dst=dst_mac) / IP(src=src_ip, dst=dst_ip) / ICMP(id=0x5d, seq=i) / Raw(tag)
       for i in range(5)], iface=iface, verbose=False)
"""


def spoof_attempt(attacker, victim, a_alloc: dict, v_alloc: dict, source_ip: str,
                  state_dir: Path) -> tuple[int, int]:
    """Scapy pings attacker -> victim, 5 from ``source_ip`` then 5 from the attacker's own
    address (the control); returns (spoofed, control) packets captured at the victim.

    The controls follow the spoofed frames down the same path, so once all 5 controls are
    seen, every spoofed frame that could arrive has arrived.
    """
    script = state_dir / "send_pings.py"
    script.write_text(SEND_PINGS)
    cap = victim.popen(["tcpdump", "-l", "-n", "-i", victim.defaultIntf().name, "-A",
                        "icmp[icmptype] = 8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
    spoofed = control = 0
    try:
        cap.stderr.readline()  # "listening on ...": the capture is live
        for src_ip, tag in ((source_ip, "SPOOF"), (a_alloc["address"], "CONTROL")):
            attacker.cmd(f"{sys.executable} {script} {a_alloc['mac']} {v_alloc['mac']} {src_ip} "
                         f"{v_alloc['address']} {attacker.defaultIntf().name} {tag}")
        deadline = time.monotonic() + 10
        while control < 5 and time.monotonic() < deadline:
            line = cap.stdout.readline()
            if not line:
                break
            spoofed += "SPOOF" in line
            control += "CONTROL" in line
    finally:
        cap.terminate()
        cap.wait(timeout=5)
    return spoofed, control


def run(spec: dict, state_dir: Path, dhcp_timeout: float) -> int:
    from mininet.log import setLogLevel
    from mininet.net import Mininet
    from mininet.node import OVSSwitch, RemoteController

    setLogLevel("warning")
    conf = prepare_state(spec, state_dir)
    os.environ["SDN_CONFIG"] = str(conf)
    ctl_spec = spec.get("controller", {})
    ctl_host, ctl_port = ctl_spec.get("host", "127.0.0.1"), int(ctl_spec.get("port", 6653))
    controller = Controller(conf, state_dir, ctl_host, ctl_port)
    net = None
    dhclients: dict[str, Dhclient] = {}
    failures: list[str] = []
    try:
        topo = SdnTopo(spec, config=str(conf))
        allocs = topo.allocations
        net = Mininet(topo=topo, switch=OVSSwitch, build=False, autoSetMacs=False,
                      controller=lambda name: RemoteController(name, ip=ctl_host, port=ctl_port))
        net.build()
        net.start()
        for sw in net.switches:
            for intf in sw.intfList():
                if intf.name != "lo":
                    subprocess.run(["ethtool", "-K", intf.name, "tx", "off"], capture_output=True)
        for h in net.hosts:
            h.cmd(f"ethtool -K {h.defaultIntf().name} tx off")
        if not net.waitConnected(timeout=30):
            raise RuntimeError(f"switches did not connect to the controller:\n{controller.tail()}")
        log("switches connected: " + ", ".join(s.name for s in net.switches))

        instances = spec.get("instances", [])
        for inst in instances:
            log(run_sdn(conf, "instance", "plug", inst["name"], "--bridge", inst["host"]).strip())
        for r in spec.get("secgroup_rules", []):
            log(run_sdn(conf, "secgroup-rule", "add", r["group"], "--project", r["project"],
                        *r["rule"]).strip())

        for inst in instances:
            h = net.get(inst["name"])
            files = write_dhclient_files(state_dir / "dhclient" / inst["name"], timeout=int(dhcp_timeout))
            dhclients[inst["name"]] = Dhclient(
                dhclient_argv(files, h.defaultIntf().name), files,
                lambda argv, **kw: h.popen(argv, **kw))
        leased: dict[str, str | None] = {}
        for name, dh in dhclients.items():
            try:
                ev = dh.wait_event("BOUND", timeout=dhcp_timeout)
                leased[name] = ev.get("new_ip_address")
            except (TimeoutError, RuntimeError) as e:
                leased[name] = None
                failures.append(f"{name}: no DHCP lease ({str(e).splitlines()[0]})")

        rows = []
        for inst in instances:
            a = allocs[inst["name"]]
            ok = leased[inst["name"]] == a["address"]
            if leased[inst["name"]] and not ok:
                failures.append(f"{inst['name']}: leased {leased[inst['name']]}, sdn allocated {a['address']}")
            rows.append([inst["name"], inst["project"], inst["host"], a.get("vlan"), a["mac"], a["port_name"],
                         a["address"], leased[inst["name"]], "ok" if ok else "FAIL"])
        print()
        print(table(rows, ["instance", "project", "host", "VLAN", "MAC", "port", "allocated", "leased", "dhcp"]))

        expect = spec.get("expect", {})
        want: dict[frozenset, bool] = {}
        for a_, b_ in expect.get("reachable", []):
            want[frozenset((a_, b_))] = True
        for a_, b_ in expect.get("isolated", []):
            want[frozenset((a_, b_))] = False
        prow = []
        names = [i["name"] for i in instances]
        for src in names:
            for dst in names:
                if src == dst:
                    continue
                target = leased.get(dst) or allocs[dst]["address"]
                got = ping(net.get(src), target)
                prow.append(ping_row("ping", src, dst, target, want.get(frozenset((src, dst))),
                                     got, failures))
        print()
        print(table(prow, ["from", "to", "address", "expected", "actual", "result"]))

        if any(a.get("address_v6") for a in allocs.values()):
            v6rows, v6pings = ipv6_checks(net, instances, allocs, want, failures)
            print()
            print("IPv6 (SLAAC from sdn's router advertisements)")
            print(table(v6rows, ["instance", "MAC", "network /64", "derived by sdn",
                                 "configured by the kernel", "slaac"]))
            print()
            print(table(v6pings, ["from", "to", "IPv6 address", "expected", "actual", "result"]))

        floating: dict[str, str] = {}
        if spec.get("outside"):
            print()
            print(table(public_access(net, spec, conf, allocs, failures, floating),
                        ["path", "to", "fixed IP / NAT", "actual", "result"]))
        frows = firewall_checks(net, spec, conf, floating, state_dir, failures)
        if frows:
            print()
            print("security groups (rules: " + "; ".join(
                f"{r['project']}/{r['group']}: {' '.join(r['rule'])}"
                for r in spec.get("secgroup_rules", [])) + ")")
            print(table(frows, ["TCP connect", "to", "expected", "actual", "result"]))

        srows = []
        for attempt in spec.get("spoof", []):
            att, vic = attempt["attacker"], attempt["victim"]
            spoofed, control = spoof_attempt(net.get(att), net.get(vic), allocs[att], allocs[vic],
                                             attempt["source_ip"], state_dir)
            verdict = "blocked" if spoofed == 0 and control > 0 else "FAIL"
            if verdict == "FAIL":
                failures.append(f"spoof {att} -> {vic} from {attempt['source_ip']}: {spoofed} "
                                f"spoofed and {control} control pings arrived (want 0 and >0)")
            srows.append([att, vic, attempt["source_ip"], f"{spoofed}/5", f"{control}/5", verdict])
        if srows:
            print()
            print(table(srows, ["attacker", "victim", "spoofed source", "spoofed arrived",
                                "control arrived", "result"]))

        first = spec["switches"][0]["name"]
        print(f"\n$ ovs-ofctl -O OpenFlow13 dump-flows --names {first}")
        print(subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", "--names", first],
                             capture_output=True, text=True).stdout)
    finally:
        for dh in dhclients.values():
            dh.stop()
        if net is not None:
            net.stop()
        controller.stop()

    print()
    if failures:
        print(f"DEMO FAILED: {len(failures)} expectation(s) not met")
        for f in failures:
            print(f"  - {f}")
        print(f"controller log: {controller.logfile}")
        return 1
    print("DEMO OK: every instance leased its sdn address; reachability matches [expect]")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("topology", nargs="?", default=str(REPO_ROOT / "topology" / "demo.toml"))
    ap.add_argument("--state-dir", default=str(REPO_ROOT / "var" / "demo"))
    ap.add_argument("--prepare", action="store_true",
                    help="only create the state (config, DB, networks) and print how to run mn by hand")
    ap.add_argument("--dhcp-timeout", type=float, default=30)
    ap.add_argument("--port", type=int, help="OpenFlow port of the controller (overrides [controller] port)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("run_demo.py needs root (Mininet, Open vSwitch)", file=sys.stderr)
        return 2
    spec = load_topology(args.topology)
    if args.port:
        spec.setdefault("controller", {})["port"] = args.port
    state_dir = Path(args.state_dir).resolve()
    try:
        if args.prepare:
            conf = prepare_state(spec, state_dir)
            port = spec.get("controller", {}).get("port", 6653)
            print(f"\n{sdn_executable()} --config-file {conf} controller &\n"
                  f"SDN_CONFIG={conf} mn --custom {HERE / 'sdn_topo.py'} --topo sdn,{spec['_path']} "
                  f"--controller remote,ip=127.0.0.1,port={port} "
                  f"--switch ovs,datapath=user,protocols=OpenFlow13\n"
                  f"(then in mn: 'sh {sdn_executable()} --config-file {conf} instance plug a1 --bridge s1' "
                  f"per instance, and 'a1 dhclient -v a1-eth0')")
            return 0
        return run(spec, state_dir, args.dhcp_timeout)
    except (RuntimeError, TimeoutError, FileNotFoundError, subprocess.SubprocessError) as e:
        print(f"demo could not run: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    started = time.monotonic()
    rc = main()
    log(f"finished in {time.monotonic() - started:.1f}s, exit {rc}")
    sys.exit(rc)
