"""DHCP relay-path reference (``run.py --only dhcp-relay``): servers side by side with perfdhcp.

perfdhcp speaks only as a relay agent and tops out near 25,000 DORA/s here (one thread), so
these numbers are a reference for the relay path, without ratios or targets; the DHCP
benchmark proper is ``bench_dora`` (dhcpgen, DORA from VIF ports, past its ceiling).

Servers: Kea 2.2 (memfile), dnsmasq, sdn's responder standalone on a raw socket
(``sdn.dhcp.rawsocket`` via ``benchmarks/rawsocket_server.py``, binding by chaddr among the network's VIFs, leases group-committed to
SQLite) and sdn's responder through userspace OVS + the controller (packet-in/packet-out).

Clients: perfdhcp simulates ``CLIENTS`` MACs (``-b mac=02:00:00:00:00:00 -R N``); sdn has one
VIF per simulated MAC in state, so it answers them as it answers guests. perfdhcp speaks as a
DHCP relay agent (giaddr = its address, udp 67->67): standalone, the raw socket binds by chaddr;
through OpenFlow, its port is a relay port (``[ovs] dhcp_relay_interfaces``, sdn.dhcp.relay),
since a VIF port rightly drops server-port traffic.

For each rate the offered DORA/s run lasts PERIOD s; the result per server is the highest rate
with < 1% drops in both DISCOVER-OFFER and REQUEST-ACK (rate = exchanges actually initiated/s).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from benchmarks import lib

CLIENTS = 2000
BASE_MAC = 0x020000000000
PERIOD = 4
RATES = [250, 500, 1000, 2000, 3000, 4000, 5000, 6000, 8000, 10000, 12000, 14000, 16000,
         18000, 20000, 22000, 25000]
RAW_EXTRA: list = []
#: perfdhcp's threading mode, the same for every server. Its default multi-thread mode used
#: more than a core by itself here (2 CPUs) and dropped replies in its own socket buffer
#: (UdpRcvbufErrors) before any server saturated; single-thread tops out near 21k/s.
CLIENT_MODE: list[str] = ["-g", "single"]
CIDR = "10.9.0.0/16"
SERVER_IP = "10.9.0.1"
CLIENT_IP = "10.9.255.250"


def parse_perfdhcp(out: str) -> dict:
    stats = {}
    for name in ("DISCOVER-OFFER", "REQUEST-ACK"):
        m = re.search(rf"Statistics for: {name}\*+\s*sent packets: (\d+)\s*received packets: (\d+)"
                      rf"\s*drops: (\d+)", out)
        if m:
            stats[name] = tuple(map(int, m.groups()))
    return stats


def perfdhcp(ns: str, iface: str, rate: int, clients: int, base_mac: str) -> dict:
    argv = ["ip", "netns", "exec", ns, "perfdhcp", "-4", "-l", iface, "-r", str(rate),
            "-R", str(clients), "-b", f"mac={base_mac}", "-p", str(PERIOD), "-W", "500000", "-B", *CLIENT_MODE]
    p = lib.sh(argv, check=False, timeout=PERIOD + 30)
    st = parse_perfdhcp(p.stdout)
    if "DISCOVER-OFFER" not in st:
        raise RuntimeError(f"perfdhcp gave no statistics: {p.stdout[-800:]} {p.stderr[-800:]}")
    do, ra = st["DISCOVER-OFFER"], st.get("REQUEST-ACK", (0, 0, 0))
    loss = max(do[2] / do[0] if do[0] else 1.0, ra[2] / ra[0] if ra[0] else 1.0)
    extra = {k: int(v) for k, v in re.findall(r"(orphans|rejected leases|non unique addresses): (\d+)", p.stdout)}
    return dict(offered=rate, achieved=round(do[0] / PERIOD), do=do, ra=ra, extra=extra, raw=p.stdout[-3000:],
                loss_pct=round(100 * loss, 3), dora_per_s=round((ra[1]) / PERIOD))


def sweep(name: str, ns: str, iface: str, clients: int, base_mac: str, log) -> dict:
    points, best, fails = [], 0, 0
    for rate in RATES:
        pt = perfdhcp(ns, iface, rate, clients, base_mac)
        points.append(pt)
        log(f"    {name:18s} offered {rate:6d}/s sent {pt['achieved']:6d}/s loss {pt['loss_pct']:7.3f}%")
        if pt["loss_pct"] < 1.0:
            best = max(best, min(rate, pt["achieved"]))
            fails = 0
        else:
            fails += 1
            if fails >= 2 or pt["loss_pct"] > 30:
                break
    return dict(server=name, clients=clients, max_rate=best, points=points)


def _segment(cl, tag: str, client_mac: str | None = None):
    cns, sns = lib.netns(cl, f"bc{tag}"), lib.netns(cl, f"bs{tag}")
    lib.veth(cl, "bcv", cns, "bsv", sns, a_mac=client_mac)
    lib.sh(["ip", "-n", cns, "addr", "add", f"{CLIENT_IP}/16", "dev", "bcv"])
    lib.sh(["ip", "-n", sns, "addr", "add", f"{SERVER_IP}/16", "dev", "bsv"])
    return cns, sns


def run_kea(cl, work: Path, clients: int, log) -> dict:
    cns, sns = _segment(cl, "k")
    lib.start_kea(cl, work, "bsv", sns, CIDR, "10.9.1.0 - 10.9.250.255", control_socket=True)
    time.sleep(2)
    try:
        return sweep(f"kea (R={clients})", cns, "bcv", clients, lib.mac_n(BASE_MAC, 0), log)
    finally:
        cl.run()


def run_dnsmasq(cl, work: Path, log) -> dict:
    cns, sns = _segment(cl, "d")
    cl.proc(lib.popen(["dnsmasq", "--no-daemon", "--port=0", "--interface=bsv", "--bind-interfaces",
                       "--dhcp-range=10.9.1.0,10.9.250.255,1h", "--no-ping", "--dhcp-authoritative",
                       "--dhcp-lease-max=100000", f"--dhcp-leasefile={work / 'dnsmasq.leases'}",
                       "--no-resolv", "--log-facility=-", "--quiet-dhcp"],
                      work / "dnsmasq.out", sns))
    time.sleep(1)
    try:
        return sweep("dnsmasq", cns, "bcv", CLIENTS, lib.mac_n(BASE_MAC, 0), log)
    finally:
        cl.run()


def run_sdn_raw(cl, work: Path, log) -> dict:
    conf_path, engine, _mgr, net = lib.new_state(work / "raw", lib.netlab.free_tcp_port(), CIDR)
    lib.add_vifs(engine, net["id"], [lib.mac_n(BASE_MAC, i) for i in range(CLIENTS + 1)])
    cns, sns = _segment(cl, "r")
    cl.proc(lib.popen([lib.PY, str(Path(__file__).with_name("rawsocket_server.py")),
                       "--config-file", str(conf_path), "bsv", *RAW_EXTRA],
                      work / "raw.out", sns))
    time.sleep(2)
    try:
        res = sweep("sdn standalone", cns, "bcv", CLIENTS, lib.mac_n(BASE_MAC, 0), log)
    finally:
        cl.run()
    return res


def _one_exchange(ns: str, iface: str, mac: str) -> bool:
    p = lib.sh(["ip", "netns", "exec", ns, "perfdhcp", "-4", "-l", iface, "-n", "1", "-R", "1",
                "-b", f"mac={mac}", "-W", "200000", "-B"], check=False, timeout=30)
    st = parse_perfdhcp(p.stdout).get("REQUEST-ACK")
    return bool(st and st[1])


def run_sdn_openflow(cl, work: Path, log) -> dict:
    """perfdhcp is a relay agent (giaddr, udp 67->67) on a port listed in
    ``[ovs] dhcp_relay_interfaces``: every request is a packet-in, every reply a packet-out,
    and the CLIENTS MACs are VIFs of the network in state (bound by chaddr, sdn.dhcp.relay)."""
    port = lib.netlab.free_tcp_port()
    conf_path, engine, _mgr, net = lib.new_state(work / "of", port, CIDR,
                                                 ovs={"dhcp_relay_interfaces": "bsof"})
    lib.add_vifs(engine, net["id"], [lib.mac_n(BASE_MAC, i) for i in range(CLIENTS + 1)])
    br = lib.bridge(cl, "bbdhcp", controller_port=port)
    cns = lib.netns(cl, "bco")
    lib.veth(cl, "bcv", cns, "bsof", None)
    lib.sh(["ip", "-n", cns, "addr", "add", f"{CLIENT_IP}/16", "dev", "bcv"])
    lib.sh(["ovs-vsctl", "add-port", br, "bsof"])
    ctl_log = work / "of-controller.log"
    ctl = lib.start_controller(cl, conf_path, ctl_log)
    lib.wait_for(lambda: "full sync" in ctl_log.read_text(), 30, what="controller sync")
    # a freshly added netdev port takes a moment to pass packets: wait until one DORA succeeds
    lib.wait_for(lambda: _one_exchange(cns, "bcv", lib.mac_n(BASE_MAC, CLIENTS)), 30, 0.2,
                 what="a first DHCP exchange through the relay port")
    try:
        res = sweep("sdn via OpenFlow", cns, "bcv", CLIENTS, lib.mac_n(BASE_MAC, 0), log)
        res["controller_rss_mb"] = round(lib.rss_mb(ctl.pid), 1)
    finally:
        cl.run()
    return res


def run(work: Path, log) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    out = {}
    for key, fn in (("kea", lambda cl: run_kea(cl, work, CLIENTS, log)),
                    ("dnsmasq", lambda cl: run_dnsmasq(cl, work, log)),
                    ("sdn_raw", lambda cl: run_sdn_raw(cl, work, log)),
                    ("sdn_openflow", lambda cl: run_sdn_openflow(cl, work, log))):
        cl = lib.Cleanup()
        try:
            out[key] = fn(cl)
        except Exception as err:
            log(f"    {key}: FAILED {err}")
            out[key] = dict(server=key, error=str(err), max_rate=0, points=[])
        finally:
            cl.run()
    return out
