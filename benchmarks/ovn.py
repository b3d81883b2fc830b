"""An OVN lab for the benchmarks (issue 16): OVN 23.03 beside sdn, nothing shared with the
system's Open vSwitch, everything removed afterwards.

A lab is one network namespace with its own ``ovsdb-server`` + ``ovs-vswitchd`` (a second
userspace ovs-vswitchd in the root namespace fails: one per netns, docs ENVIRONMENT.md), the
OVN Northbound and Southbound ``ovsdb-server``s on their own unix sockets, ``ovn-northd``
and ``ovn-controller``, all with their databases, sockets and logs in ``run_dir``. Processes
are children started here and killed by their own pids; the namespace, veths and client
namespaces are deleted by name (names made unique per lab). ovn-controller is configured
through the Open_vSwitch row's ``external_ids`` of the lab's OWN database, so the system OVS
(every test's and sdn's) is never touched and two labs coexist.

``Switch`` (the private OVS half) is usable alone, e.g. to put sdn's controller on the same
kind of switch as OVN for a same-run comparison (``Switch.controller`` + run the controller
with ``netns=switch.ns``: the controller target ``tcp:127.0.0.1:PORT`` is the lab's loopback).

API (kept stable; other benchmarks build on it)::

    from benchmarks import lib, ovn
    cl = lib.Cleanup()
    lab = ovn.OvnLab(cl, run_dir, name="a")         # name: <= 6 chars, unique per machine
    lab.start()                                       # databases, northd, switch, controller
    lab.create_switch("10.90.0.0/16", router="10.90.0.1", dns="10.90.0.1",
                      server_mac="02:00:00:00:90:01", lease_time=3600)  # once per lab
    ports = ovn.ports(1000, "10.90.0.0/16", mac_base=0x0A0000000000)  # [LogicalPort]
    lab.switch.add_ports(ports, kind=ovn.PORT_KIND)   # OVS interfaces bound by iface-id
    t0 = time.time(); lab.add_logical_ports(ports)    # ONE NB transaction: "MAC IP" addresses,
                                                      # port security, native DHCPv4 options
    lab.wait_installed(ports, timeout=600)            # --wait=hv sync + ovn-installed + flow
                                                      # count stable -> Installed(at, flows, hv_acked)
    ns, dev = lab.switch.veth_port(port, client_ns)   # a real interface for one port: ``dev`` in
                                                      # namespace ``client_ns`` (MAC = the port's)
    lab.pids() -> {"northd": pid, "controller": pid, "nb": pid, "sb": pid}
    lab.rss_mb() -> {same keys: MB, "total": MB}
    lab.kill_controller()  (SIGKILL, waits)  /  lab.start_controller()
    lab.stop()                                         # also done by cl.run()

Everything raises ``RuntimeError`` (a command's exit status and stderr) or ``TimeoutError``.
Needs root, Debian's ``ovn-central`` and ``ovn-host`` (23.03) and ``openvswitch-switch``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import lib

NB_SCHEMA = "/usr/share/ovn/ovn-nb.ovsschema"
SB_SCHEMA = "/usr/share/ovn/ovn-sb.ovsschema"
VSWITCH_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
BRIDGE = "br-int"

#: OVS interface type of the thousands of VIF ports: no kernel device each (a veth or an
#: internal port costs a tap device and a netdev rx queue polled by ovs-vswitchd). ovn-controller
#: binds dummy and internal ports by ``external_ids:iface-id`` (measured: 30 flows per port),
#: never patch ports (not ovn-installed after 20 s); ``dummy`` exists in a vswitchd started
#: with ``--enable-dummy`` (ours).
PORT_KIND = "dummy"

#: Careful-operator settings of ovn-controller (Open_vSwitch external_ids), and why:
#: - ovn-ofctrl-wait-before-clear: after (re)connecting to the switch, compute the whole flow
#:   table before replacing what is installed; the default (0) clears the flows at once, and a
#:   restarted ovn-controller drops traffic until it has recomputed (~0.85 s at 1k ports).
#: - ovn-monitor-all: one chassis sees every datapath anyway; conditional monitoring only adds
#:   SB server work (recommended for large deployments).
#: - ovn-remote-probe-interval / ovn-openflow-probe-interval: the defaults (5 s) drop the SB and
#:   switch connections while ovn-controller or ovs-vswitchd is busy at thousands of ports on
#:   this 2-core machine, and a reconnect costs a full recompute.
CONTROLLER_OPTIONS = {
    "ovn-ofctrl-wait-before-clear": "3000",
    "ovn-monitor-all": "true",
    "ovn-remote-probe-interval": "180000",
    "ovn-openflow-probe-interval": "180",
}
#: seconds an OpenFlow bundle may stay idle in the lab switch (see ``Switch.start``)
BUNDLE_IDLE_TIMEOUT_S = 120
#: northd <-> NB/SB probes (NB_Global options), for the same reason.
NORTHD_PROBE_MS = 180000


@dataclass(frozen=True)
class LogicalPort:
    """One VIF: logical port ``name`` (= OVS ``external_ids:iface-id``), OVS interface
    ``iface`` (<= 15 chars), Ethernet ``mac``, fixed IPv4 ``ip``."""
    name: str
    iface: str
    mac: str
    ip: str


def ports(n: int, cidr: str, mac_base: int = 0x0A0000000000, first: int = 0,
          prefix: str = "lp") -> list[LogicalPort]:
    """``n`` logical ports numbered from ``first``: IPs from the 10th host address of
    ``cidr`` on, MACs ``mac_base + i``, interface names ``<prefix>v<i>``."""
    net = ipaddress.ip_network(cidr)
    if first + n + 10 >= net.num_addresses:
        raise ValueError(f"{cidr} has room for {net.num_addresses - 11} ports, asked for {first + n}")
    out = []
    for i in range(first, first + n):
        out.append(LogicalPort(name=f"{prefix}{i}", iface=f"{prefix}v{i}"[:15],
                               mac=lib.mac_n(mac_base, i), ip=str(net.network_address + 10 + i)))
    return out


@dataclass(frozen=True)
class Installed:
    """``at``: Unix time the switch first held the final flow set; ``flows``: its size;
    ``hv_acked``: ``--wait=hv sync`` returned (see ``OvnLab.wait_installed``)."""
    at: float
    flows: int
    hv_acked: bool = True


# ------------------------------------------------------------------ JSON-RPC (RFC 7047)

def transact(sock: Path, db: str, ops: list, timeout: float = 600) -> list:
    """One OVSDB ``transact`` of ``ops`` on unix socket ``sock`` (RFC 7047 §4.1.3); returns the
    results. Raises RuntimeError naming the first failing operation. One request, so it has no
    size limit (``ovsdb-client transact`` takes the transaction as one argv string, <=128 KiB)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        s.sendall(json.dumps({"method": "transact", "params": [db, *ops], "id": 0}).encode())
        buf, dec = "", json.JSONDecoder()
        while True:
            try:
                msg, end = dec.raw_decode(buf.lstrip())
            except ValueError:              # incomplete: read more
                chunk = s.recv(1 << 20)
                if not chunk:
                    raise RuntimeError(f"{sock}: connection closed before the transact reply") from None
                buf += chunk.decode()
                continue
            buf = buf.lstrip()[end:]
            if msg.get("id") != 0:          # e.g. an echo request: not ours
                continue
            if msg.get("error"):
                raise RuntimeError(f"{sock}: transact failed: {msg['error']}")
            for i, res in enumerate(msg["result"]):
                if res and "error" in res:
                    raise RuntimeError(f"{sock}: operation {i} ({ops[i].get('op') if i < len(ops) else 'commit'}) "
                                       f"failed: {res['error']}: {res.get('details', '')}")
            return msg["result"]


# ------------------------------------------------------------------ processes

def _wait_path(path: Path, proc: subprocess.Popen, what: str, timeout: float = 30) -> None:
    def ready():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode} (log next to {path})")
        return path.exists()
    lib.wait_for(ready, timeout, 0.02, what=what)


def _kill(proc: subprocess.Popen | None, sig=signal.SIGTERM) -> None:
    if proc is not None:
        lib.kill_group(proc, sig=sig)


class Switch:
    """A private Open vSwitch: ovsdb-server + ovs-vswitchd (``--enable-dummy``) in network
    namespace ``ns``, database/sockets/logs in ``run_dir``. ``env`` points the ovs-* tools at it
    (``OVS_RUNDIR``: ``ovs-vsctl`` finds ``db.sock``, ``ovs-ofctl BR`` finds ``BR.mgmt``)."""

    def __init__(self, cl: lib.Cleanup, run_dir: Path, ns: str):
        self.cl, self.run, self.ns = cl, Path(run_dir), ns
        self.db_sock = self.run / "db.sock"
        self.env = dict(os.environ, OVS_RUNDIR=str(self.run), OVS_DBDIR=str(self.run),
                        OVS_LOGDIR=str(self.run), OVN_RUNDIR=str(self.run))
        self.procs: dict[str, subprocess.Popen] = {}
        self._veth_n = 0

    def start(self) -> None:
        self.run.mkdir(parents=True, exist_ok=True)
        lib.netns(self.cl, self.ns)
        db = self.run / "conf.db"
        db.unlink(missing_ok=True)
        lib.sh(["ovsdb-tool", "create", str(db), VSWITCH_SCHEMA])
        self.procs["ovsdb"] = self.popen(
            "ovsdb", ["ovsdb-server", str(db), f"--remote=punix:{self.db_sock}",
                      f"--unixctl={self.run / 'ovsdb-server.ctl'}", "--no-chdir",
                      f"--log-file={self.run / 'ovsdb-server.log'}", "-vconsole:off"])
        _wait_path(self.db_sock, self.procs["ovsdb"], "the lab's ovsdb-server")
        # bundle-idle-timeout: ovs-vswitchd's default (10 s) expired ovn-controller's flow
        # bundle at 1k ports on this loaded 2-core machine (OFPBFC_TIMEOUT), after which
        # ovn-controller never reported its nb_cfg and --wait=hv hung; a careful operator raises it
        self.vsctl("--no-wait", "init", "--", "set", "Open_vSwitch", ".",
                   f"other_config:bundle-idle-timeout={BUNDLE_IDLE_TIMEOUT_S}")
        self.procs["vswitchd"] = self.popen(
            "vswitchd", ["ovs-vswitchd", f"unix:{self.db_sock}", "--enable-dummy",
                         f"--unixctl={self.run / 'ovs-vswitchd.ctl'}", "--no-chdir",
                         f"--log-file={self.run / 'ovs-vswitchd.log'}", "-vconsole:off"],
            netns=self.ns)
        lib.wait_for(lambda: self.vsctl("--timeout=2", "show", check=False).returncode == 0
                     and self.procs["vswitchd"].poll() is None, 30, 0.1, what="the lab's ovs-vswitchd")

    def stop(self) -> None:
        for key in ("vswitchd", "ovsdb"):
            _kill(self.procs.pop(key, None))

    def popen(self, key: str, argv: list[str], netns: str | None = None) -> subprocess.Popen:
        p = lib.popen(argv, self.run / f"{key}.out", netns=netns, env=self.env)
        self.cl.proc(p)
        return p

    # -- tools pointed at this switch
    def vsctl(self, *args, check=True, timeout=600) -> subprocess.CompletedProcess:
        return lib.sh(["ovs-vsctl", f"--db=unix:{self.db_sock}", *args], check=check,
                      timeout=timeout, env=self.env)

    def ofctl(self, *args, check=True, timeout=600) -> subprocess.CompletedProcess:
        return lib.sh(["ovs-ofctl", "-O", "OpenFlow13", *args], check=check, timeout=timeout,
                      env=self.env)

    def add_bridge(self, name: str = BRIDGE, controller_port: int | None = None,
                   protocols: str = "OpenFlow13,OpenFlow15") -> str:
        """A netdev bridge, fail_mode secure, in-band off (as ``netlab.create_bridge``);
        ``protocols``: sdn speaks 1.3, ovn-controller 1.5, ovs-ofctl here 1.3. With
        ``controller_port``: controller ``tcp:127.0.0.1:PORT`` (the lab namespace's loopback),
        1 s max backoff."""
        self.vsctl("--timeout=60", "add-br", name, "--", "set", "Bridge", name,
                   "datapath_type=netdev", f"protocols={protocols}", "fail_mode=secure",
                   "other_config:disable-in-band=true")
        if controller_port is not None:
            self.vsctl("--timeout=60", "--", "--id=@c", "create", "Controller",
                       f'target="tcp:127.0.0.1:{controller_port}"', "max_backoff=1000", "--",
                       "set", "Bridge", name, "controller=@c")
        return name

    def count_flows(self, br: str = BRIDGE) -> int:
        out = self.ofctl("dump-aggregate", br, timeout=300).stdout
        return int(re.search(r"flow_count=(\d+)", out).group(1))

    def add_ports(self, lports: list[LogicalPort], br: str = BRIDGE, kind: str = PORT_KIND,
                  batch: int = 500, wait: bool = True) -> None:
        """One OVS interface per port (name ``iface``, ``external_ids:iface-id=name``,
        ``kind``), ``batch`` per OVSDB transaction (``ovs-vsctl`` checks every name against the
        whole database client-side: minutes at thousands), then (``wait``) until each has an
        ofport."""
        for start in range(0, len(lports), batch):
            chunk = lports[start:start + batch]
            ops: list = []
            for i, p in enumerate(chunk):
                ops.append({"op": "insert", "table": "Interface", "uuid-name": f"i{i}",
                            "row": {"name": p.iface, "type": kind,
                                    "external_ids": ["map", [["iface-id", p.name],
                                                             ["attached-mac", p.mac]]]}})
                ops.append({"op": "insert", "table": "Port", "uuid-name": f"p{i}",
                            "row": {"name": p.iface, "interfaces": ["named-uuid", f"i{i}"]}})
            ops.append({"op": "mutate", "table": "Bridge", "where": [["name", "==", br]],
                        "mutations": [["ports", "insert",
                                       ["set", [["named-uuid", f"p{i}"] for i in range(len(chunk))]]]]})
            transact(self.db_sock, "Open_vSwitch", ops)
        if wait:
            want = {p.iface for p in lports}
            lib.wait_for(lambda: want <= self.numbered(), 1800, 0.5,
                         what=f"{len(lports)} ports of {br} numbered")

    def numbered(self) -> set[str]:
        """Names of the interfaces that have an ofport."""
        out = self.vsctl("--timeout=300", "--bare", "--columns=name,ofport", "list",
                         "Interface", timeout=360).stdout.split("\n\n")
        return {rec.split()[0] for rec in out if len(rec.split()) == 2 and int(rec.split()[1]) > 0}

    def veth_port(self, p: LogicalPort, client_ns: str, br: str = BRIDGE) -> tuple[str, str]:
        """A real interface for ``p``: veth ``p.iface`` on ``br`` (bound by iface-id) <->
        ``bc<n>`` in namespace ``client_ns`` (created by the caller) with MAC ``p.mac``, up,
        tx checksum off. Returns (client_ns, client device). Removed by the cleanup."""
        self._veth_n += 1
        dev = f"bc{self.ns[-6:]}{self._veth_n}"[:15]
        lib.sh(["ip", "link", "add", p.iface, "netns", self.ns, "type", "veth", "peer", "name",
                dev, "netns", client_ns])
        self.cl.add(lib.sh, ["ip", "-n", self.ns, "link", "del", p.iface], False)
        lib.sh(["ip", "-n", client_ns, "link", "set", dev, "address", p.mac])
        for ns, d in ((self.ns, p.iface), (client_ns, dev)):
            lib.sh(["ip", "-n", ns, "link", "set", d, "up"])
            lib.sh(["ip", "netns", "exec", ns, "ethtool", "-K", d, "tx", "off"], check=False)
        self.vsctl("--timeout=60", "add-port", br, p.iface, "--", "set", "Interface", p.iface,
                   f"external_ids:iface-id={p.name}", f"external_ids:attached-mac={p.mac}")
        return client_ns, dev


class OvnLab:
    """NB + SB databases, ovn-northd, a private ``Switch`` with integration bridge ``br-int``
    and ovn-controller (chassis ``ch-<name>``), in ``run_dir``; namespace ``bovn<name>``."""

    def __init__(self, cl: lib.Cleanup, run_dir: Path, name: str = "a",
                 controller_options: dict | None = None):
        if not re.fullmatch(r"[a-z0-9]{1,6}", name):
            raise ValueError(f"lab name {name!r}: 1-6 lowercase letters/digits")
        self.cl, self.run, self.name = cl, Path(run_dir), name
        self.switch = Switch(cl, self.run, f"bovn{name}")
        self.nb_sock, self.sb_sock = self.run / "nb.sock", self.run / "sb.sock"
        self.controller_options = dict(CONTROLLER_OPTIONS, **(controller_options or {}))
        self.procs: dict[str, subprocess.Popen] = {}
        self.dhcp_uuid: str | None = None
        self.ls = f"ls-{name}"
        cl.add(self.stop)

    # -- life cycle
    def start(self) -> None:
        sw = self.switch
        sw.start()
        for key, schema, sock in (("nb", NB_SCHEMA, self.nb_sock), ("sb", SB_SCHEMA, self.sb_sock)):
            db = self.run / f"{key}.db"
            db.unlink(missing_ok=True)
            lib.sh(["ovsdb-tool", "create", str(db), schema])
            self.procs[key] = sw.popen(key, [
                "ovsdb-server", str(db), f"--remote=punix:{sock}", f"--unixctl={self.run / key}.ctl",
                "--no-chdir", f"--log-file={self.run / key}.log", "-vconsole:off"])
            _wait_path(sock, self.procs[key], f"the {key.upper()} ovsdb-server")
        self.nbctl("init")
        lib.sh(["ovn-sbctl", f"--db=unix:{self.sb_sock}", "init"], env=sw.env)
        self.nbctl("set", "NB_Global", ".", f"options:northd_probe_interval={NORTHD_PROBE_MS}")
        self.procs["northd"] = sw.popen("northd", [
            "ovn-northd", f"--ovnnb-db=unix:{self.nb_sock}", f"--ovnsb-db=unix:{self.sb_sock}",
            f"--unixctl={self.run / 'northd.ctl'}", "--no-chdir",
            f"--log-file={self.run / 'northd.log'}", "-vconsole:off"])
        sw.add_bridge(BRIDGE)
        ids = {"system-id": f"ch-{self.name}", "ovn-remote": f"unix:{self.sb_sock}",
               "ovn-encap-type": "geneve", "ovn-encap-ip": "127.0.0.1", "ovn-bridge": BRIDGE,
               "ovn-bridge-datapath-type": "netdev", **self.controller_options}
        sw.vsctl("set", "Open_vSwitch", ".", *[f'external_ids:{k}="{v}"' for k, v in ids.items()])
        self.start_controller()
        lib.wait_for(lambda: f"ch-{self.name}" in lib.sh(
            ["ovn-sbctl", f"--db=unix:{self.sb_sock}", "--bare", "--columns=name", "list",
             "Chassis"], env=sw.env).stdout, 60, 0.1, what="the chassis registered in SB")

    def start_controller(self) -> subprocess.Popen:
        self.procs["controller"] = self.switch.popen("controller", [
            "ovn-controller", f"unix:{self.switch.db_sock}", "--no-chdir",
            f"--log-file={self.run / 'ovn-controller.log'}", "-vconsole:off"],
            netns=self.switch.ns)
        return self.procs["controller"]

    def kill_controller(self) -> float:
        """SIGKILL ovn-controller; returns the Unix time of the kill."""
        p = self.procs["controller"]
        t = time.time()
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        return t

    def stop(self) -> None:
        for key in ("controller", "northd", "sb", "nb"):
            _kill(self.procs.pop(key, None))
        self.switch.stop()

    # -- introspection
    def pids(self) -> dict[str, int]:
        return {k: self.procs[k].pid for k in ("northd", "controller", "nb", "sb")}

    def rss_mb(self) -> dict[str, float]:
        out = {k: round(lib.rss_mb(pid), 1) for k, pid in self.pids().items()}
        out["total"] = round(sum(out.values()), 1)
        return out

    # -- northbound
    def nbctl(self, *args, timeout=900) -> str:
        return lib.sh(["ovn-nbctl", f"--db=unix:{self.nb_sock}", *args], timeout=timeout,
                      env=self.switch.env).stdout.strip()

    def create_switch(self, cidr: str, router: str, dns: str, server_mac: str,
                      lease_time: int = 3600, server_id: str | None = None) -> str:
        """Logical switch ``ls-<name>`` and one DHCP_Options row for ``cidr`` (server_id:
        ``router`` by default). Returns the DHCP_Options UUID."""
        self.nbctl("ls-add", self.ls)
        options = {"server_id": server_id or router, "server_mac": server_mac,
                   "lease_time": lease_time, "router": router, "dns_server": dns}
        self.dhcp_uuid = self.nbctl("create", "DHCP_Options", f'cidr="{cidr}"',
                                    *[f'options:{k}="{v}"' for k, v in options.items()])
        return self.dhcp_uuid

    def add_logical_ports(self, lports: list[LogicalPort]) -> None:
        """ONE NB transaction: a Logical_Switch_Port per port (addresses and port_security
        ``"MAC IP"``, dhcpv4_options = the lab's) added to the logical switch."""
        if self.dhcp_uuid is None:
            raise RuntimeError("create_switch() first")
        ops: list = []
        for i, p in enumerate(lports):
            ops.append({"op": "insert", "table": "Logical_Switch_Port", "uuid-name": f"p{i}",
                        "row": {"name": p.name, "addresses": f"{p.mac} {p.ip}",
                                "port_security": f"{p.mac} {p.ip}",
                                "dhcpv4_options": ["uuid", self.dhcp_uuid]}})
        ops.append({"op": "mutate", "table": "Logical_Switch", "where": [["name", "==", self.ls]],
                    "mutations": [["ports", "insert",
                                   ["set", [["named-uuid", f"p{i}"] for i in range(len(lports))]]]]})
        transact(self.nb_sock, "OVN_Northbound", ops)

    # -- waiting for the switch
    def installed_ifaces(self) -> set[str]:
        """Interfaces ovn-controller has marked ``external_ids:ovn-installed=true`` (its flows
        for the port are on the switch)."""
        out = self.switch.vsctl("--timeout=300", "--bare", "--columns=name", "find", "Interface",
                                'external_ids:ovn-installed="true"', timeout=360).stdout
        return set(out.split())

    def wait_installed(self, lports: list[LogicalPort], timeout: float = 600,
                       settle: float = 1.0, hv_grace: float = 120) -> Installed:
        """Until ``ovn-nbctl --wait=hv sync`` returned, every port is ``ovn-installed`` and the
        flow count has not changed for ``settle`` s (``--wait=hv`` can return before the flows
        are in at thousands of ports). ``at``: the later of --wait=hv's return and the first
        poll that saw the final count. When the flows are in but --wait=hv has not returned
        ``hv_grace`` s later (seen once: an expired bundle and ovn-controller never acknowledged
        nb_cfg), ``hv_acked`` is False and ``at`` the flows' time."""
        end = time.monotonic() + timeout
        hv_at: list[float] = []
        waiter = subprocess.Popen(["ovn-nbctl", f"--db=unix:{self.nb_sock}", f"--timeout={int(timeout)}",
                                   "--wait=hv", "sync"], env=self.switch.env)
        self.cl.add(_kill, waiter)
        want = {p.iface for p in lports}
        lib.wait_for(lambda: want <= self.installed_ifaces(), max(1.0, end - time.monotonic()),
                     0.2, what=f"{len(lports)} ports ovn-installed")
        last, since = -1, time.time()
        while True:
            if waiter.poll() is not None and not hv_at:
                if waiter.returncode:
                    raise RuntimeError(f"ovn-nbctl --wait=hv sync exited {waiter.returncode}")
                hv_at.append(time.time())
            now, n = time.time(), self.switch.count_flows()
            if n != last:
                last, since = n, now
            elif now - since >= settle and (hv_at or now - since >= hv_grace):
                _kill(waiter)
                return Installed(at=max([since, *hv_at]), flows=last, hv_acked=bool(hv_at))
            if time.monotonic() > end:
                raise TimeoutError(f"flow count on {BRIDGE} still changing or --wait=hv not back "
                                   f"after {timeout}s")
            time.sleep(0.2)
