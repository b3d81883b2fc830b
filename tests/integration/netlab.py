"""Helpers for integration tests on real userspace Open vSwitch and network namespaces.

Everything here works by handle: each object remembers exactly what it created (bridge name,
namespace name, veth name, child process ids) and ``close()`` removes exactly that, so tests can
run next to other bridges/namespaces on the same machine. No sleeps: synchronise with
``wait_for``.

Used by ``tests/integration/conftest.py`` (fixtures) and by ``mininet/run_demo.py`` (dhclient
script), so it depends on the standard library only (Scapy is imported lazily for pcap parsing).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

OFCTL = ["ovs-ofctl", "-O", "OpenFlow13"]


# --------------------------------------------------------------------------- generic


def sh(cmd: Sequence[str] | str, check: bool = True, timeout: float = 30,
       input: str | None = None) -> subprocess.CompletedProcess:
    """Run a command (list, or a string split with shlex), capture text output.

    On failure with ``check`` the exception message includes the command, exit code and stderr.
    """
    argv = shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise CommandError(proc.returncode, argv, output=proc.stdout, stderr=proc.stderr)
    return proc


class CommandError(subprocess.CalledProcessError):
    """CalledProcessError whose message shows the command line and its stderr."""

    def __str__(self) -> str:
        return (f"{shlex.join(self.cmd)} exited {self.returncode}: "
                f"{(self.stderr or '').strip() or (self.output or '').strip()}")


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.05,
             what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; return that value.

    Raises ``TimeoutError("timed out after Xs waiting for <what> (last value: ...)")``. Exceptions
    raised by the predicate propagate immediately (use that to fail fast, e.g. when a process
    you are waiting on has died).
    """
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")
        time.sleep(interval)


def random_suffix(n: int = 4) -> str:
    """``n`` lowercase hex characters."""
    return secrets.token_hex((n + 1) // 2)[:n]


def free_tcp_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_mac() -> str:
    """Locally administered unicast MAC (``02:...``)."""
    return "02:" + ":".join(secrets.token_hex(1) for _ in range(5))


def ovs_available() -> tuple[bool, str]:
    """(True, "") when ovs-vsctl answers; otherwise (False, reason)."""
    try:
        p = sh(["ovs-vsctl", "--timeout=5", "show"], check=False, timeout=10)
    except (FileNotFoundError, subprocess.TimeoutExpired) as e:
        return False, f"ovs-vsctl unusable: {e}"
    if p.returncode != 0:
        return False, f"ovs-vsctl show failed: {p.stderr.strip()}"
    return True, ""


def start_ovs() -> tuple[bool, str]:
    """Start userspace OVS with ovs-ctl if it is not answering (its ulimit complaint is ignored)."""
    ok, why = ovs_available()
    if ok:
        return ok, why
    ctl = "/usr/share/openvswitch/scripts/ovs-ctl"
    if not os.path.exists(ctl):
        return False, f"{why}; and {ctl} does not exist"
    sh([ctl, "start", "--system-id=random"], check=False, timeout=60)
    return ovs_available()


def link_exists(name: str, netns: str | None = None) -> bool:
    cmd = ["ip"] + (["-n", netns] if netns else []) + ["link", "show", "dev", name]
    return sh(cmd, check=False).returncode == 0


def netns_list() -> list[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    out = sh(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_process_group(proc: subprocess.Popen, sig_timeout: float = 5.0) -> None:
    """SIGTERM then SIGKILL the process group led by ``proc`` (started with start_new_session)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, sig_timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# --------------------------------------------------------------------------- OVS


def dump_flows(bridge: str, table: int | None = None) -> list[str]:
    """Installed flows, one string each (``ovs-ofctl -O OpenFlow13 dump-flows --names``).

    The reply header line is dropped; each line is stripped.
    """
    cmd = OFCTL + ["dump-flows", "--names", bridge] + ([f"table={table}"] if table is not None else [])
    out = sh(cmd).stdout
    return [line.strip() for line in out.splitlines()
            if line.strip() and not line.lstrip().startswith(("OFPST_FLOW", "NXST_FLOW"))]


_FLOW_VOLATILE = re.compile(r"\b(cookie|duration|n_packets|n_bytes|idle_age|hard_age)=[^,\s]+,?\s*")


def normalize_flow(line: str) -> str:
    """A dump-flows line without what changes by itself or per sync (cookie, counters, ages)."""
    return _FLOW_VOLATILE.sub("", line).strip()


def flow_table(bridge: str) -> list[str]:
    """The bridge's flows, normalized (``normalize_flow``) and sorted: equal lists mean the
    same flows are installed."""
    return sorted(normalize_flow(f) for f in dump_flows(bridge))


def dump_flows_text(bridge: str) -> str:
    """The raw ``dump-flows --names`` output, for reports and assertion messages."""
    return sh(OFCTL + ["dump-flows", "--names", bridge]).stdout


def add_flow(bridge: str, flow: str) -> None:
    sh(OFCTL + ["add-flow", bridge, flow])


def trace(bridge: str, flow: str) -> str:
    """``ovs-appctl ofproto/trace BRIDGE FLOW`` output (FLOW in ovs-ofctl syntax, port names ok)."""
    return sh(["ovs-appctl", "ofproto/trace", bridge, flow]).stdout


def ofport(bridge: str, port_name: str) -> int:
    """OpenFlow port number of ``port_name``; waits briefly for OVS to assign it (-1/[] → pending)."""
    def get():
        p = sh(["ovs-vsctl", "--timeout=5", "get", "Interface", port_name, "ofport"], check=False)
        if p.returncode != 0:
            return None
        try:
            n = int(p.stdout.strip())
        except ValueError:
            return None
        return n if n > 0 else None
    return wait_for(get, timeout=10, what=f"ofport of {port_name} on {bridge}")


def controller_connected(bridge: str) -> bool:
    """True when the bridge's (single) controller record says ``is_connected: true``."""
    uuid = _controller_uuid(bridge)
    if not uuid:
        return False
    p = sh(["ovs-vsctl", "--timeout=5", "get", "Controller", uuid, "is_connected"], check=False)
    return p.returncode == 0 and p.stdout.strip() == "true"


def _controller_uuid(bridge: str) -> str | None:
    p = sh(["ovs-vsctl", "--timeout=5", "--bare", "get", "Bridge", bridge, "controller"], check=False)
    if p.returncode != 0:
        return None
    ids = p.stdout.strip().strip("[]").split(",")
    ids = [i.strip() for i in ids if i.strip()]
    return ids[0] if ids else None


@dataclass
class Bridge:
    """An OVS bridge created by ``create_bridge``; ``close()`` deletes it (and its ports)."""

    name: str
    controller_port: int | None = None
    closed: bool = False

    def __str__(self) -> str:
        return self.name

    def dump_flows(self, table: int | None = None) -> list[str]:
        return dump_flows(self.name, table)

    def add_flow(self, flow: str) -> None:
        add_flow(self.name, flow)

    def trace(self, flow: str) -> str:
        return trace(self.name, flow)

    def ofport(self, port_name: str) -> int:
        return ofport(self.name, port_name)

    def ports(self) -> list[str]:
        return sh(["ovs-vsctl", "--timeout=5", "list-ports", self.name]).stdout.split()

    def controller_connected(self) -> bool:
        return controller_connected(self.name)

    def set_controller(self, port: int) -> None:
        """Point the bridge at ``tcp:127.0.0.1:<port>`` with a new Controller row (connects now)."""
        self.controller_port = port
        sh(["ovs-vsctl", "--timeout=30", "--", "--id=@c", "create", "Controller",
            f"target=\"tcp:127.0.0.1:{port}\"", "max_backoff=1000", "--", "set", "Bridge",
            self.name, "controller=@c"])

    def add_internal_port(self, name: str) -> None:
        sh(["ovs-vsctl", "--timeout=5", "add-port", self.name, name, "--",
            "set", "Interface", name, "type=internal"])

    def close(self) -> None:
        if self.closed:
            return
        sh(["ovs-vsctl", "--timeout=30", "--if-exists", "del-br", self.name], check=False)
        self.closed = True


def add_controller(bridge: str, port: int) -> None:
    """One more Controller row ``tcp:127.0.0.1:<port>`` on ``bridge`` (1 s maximum backoff);
    the connections to its other controllers stay up (several controllers, docs/HA.md)."""
    sh(["ovs-vsctl", "--timeout=30", "--", "--id=@c", "create", "Controller",
        f"target=\"tcp:127.0.0.1:{port}\"", "max_backoff=1000", "--",
        "add", "Bridge", bridge, "controller", "@c"])


def create_bridge(name: str | None = None, controller_port: int | None = None,
                  fail_mode: str = "secure") -> Bridge:
    """Create a netdev (userspace) OpenFlow13 bridge, by default named ``sdnt<4 hex>``.

    With ``controller_port`` the controller target is ``tcp:127.0.0.1:<port>`` with a 1 s maximum
    reconnect backoff (so a controller started later is found quickly). In-band control is
    disabled so flow dumps and traces show only what the test/controller installed.
    """
    name = name or f"sdnt{random_suffix(4)}"
    if len(name) > 15:
        raise ValueError(f"bridge name {name!r} is longer than 15 characters (IFNAMSIZ)")
    cmd = ["ovs-vsctl", "--timeout=30", "add-br", name, "--", "set", "Bridge", name,
           "datapath_type=netdev", "protocols=OpenFlow13", f"fail_mode={fail_mode}",
           "other_config:disable-in-band=true"]
    sh(cmd)
    bridge = Bridge(name=name, controller_port=controller_port)
    if controller_port is not None:
        bridge.set_controller(controller_port)
    return bridge


# --------------------------------------------------------------------------- dhclient

#: dhclient-script replacement: configures the leased address for real (ip addr), sets the
#: default route and MTU when given, and records every invocation's environment as one
#: file ``events/<seq>-<reason>`` (``env -0`` output, parsed by ``read_dhclient_events``).
DHCLIENT_SCRIPT = r"""#!/bin/sh
# written by tests/integration/netlab.py; events go to events/ next to this script
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EVDIR="$(dirname "$0")/events"
mkdir -p "$EVDIR"
case "$reason" in
  PREINIT)
    ip link set dev "$interface" up
    ;;
  BOUND|RENEW|REBIND|REBOOT)
    if [ -n "$old_ip_address" ] && [ "$old_ip_address" != "$new_ip_address" ]; then
      ip -4 addr del "$old_ip_address/$old_subnet_mask" dev "$interface" 2>/dev/null
    fi
    ip -4 addr replace "$new_ip_address/$new_subnet_mask" \
      ${new_broadcast_address:+broadcast $new_broadcast_address} dev "$interface"
    if [ -n "$new_interface_mtu" ] && [ "$new_interface_mtu" -ge 576 ]; then
      ip link set dev "$interface" mtu "$new_interface_mtu"
    fi
    if [ -n "$new_routers" ]; then
      set -- $new_routers
      ip -4 route replace default via "$1" dev "$interface"
    fi
    ;;
  EXPIRE|FAIL|RELEASE|STOP)
    if [ -n "$old_ip_address" ]; then
      ip -4 addr del "$old_ip_address/$old_subnet_mask" dev "$interface" 2>/dev/null
    fi
    ;;
esac
# recorded after the interface is configured: a test waiting for BOUND then sees the address
n=$(ls "$EVDIR" | wc -l)
env -0 > "$EVDIR/.$$" && mv "$EVDIR/.$$" "$EVDIR/$(printf %04d "$n")-$reason"
exit 0
"""

#: dhclient.conf: short retry timings so a failed exchange is noticed in seconds, the options a
#: nova guest asked dnsmasq for, and no client-identifier (nova's dnsmasq keyed on the MAC).
DHCLIENT_CONF = """\
option rfc3442-classless-static-routes code 121 = array of unsigned integer 8;
timeout {timeout};
retry 1;
initial-interval 1;
backoff-cutoff 2;
request subnet-mask, broadcast-address, time-offset, routers, domain-name,
        domain-name-servers, domain-search, host-name, interface-mtu,
        rfc3442-classless-static-routes, ntp-servers;
"""


def write_dhclient_files(directory: Path, timeout: int = 20) -> dict[str, Path]:
    """Write script + conf into ``directory``; return paths: script, conf, leases, pid, events, log."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "dhclient-script"
    script.write_text(DHCLIENT_SCRIPT)
    script.chmod(0o755)
    conf = directory / "dhclient.conf"
    conf.write_text(DHCLIENT_CONF.format(timeout=timeout))
    events = directory / "events"
    events.mkdir(exist_ok=True)
    return {"script": script, "conf": conf, "leases": directory / "dhclient.leases",
            "pid": directory / "dhclient.pid", "events": events, "log": directory / "dhclient.log"}


def dhclient_argv(files: dict[str, Path], iface: str, *extra: str) -> list[str]:
    return ["dhclient", "-4", "-v", "-d", "-1", "-cf", str(files["conf"]), "-lf", str(files["leases"]),
            "-pf", str(files["pid"]), "-sf", str(files["script"]), *extra, iface]


def read_dhclient_events(events_dir: Path) -> list[dict[str, str]]:
    """Every dhclient-script invocation, oldest first: the environment dict (has ``reason``)."""
    out = []
    for f in sorted(Path(events_dir).iterdir()):
        if f.name.startswith("."):      # still being written by the script
            continue
        env = {}
        for item in f.read_bytes().split(b"\0"):
            if b"=" in item:
                k, _, v = item.decode(errors="replace").partition("=")
                env[k] = v
        env.setdefault("reason", f.name.split("-", 1)[-1])
        out.append(env)
    return out


class Dhclient:
    """A running ``dhclient -4 -d -1`` (foreground, our child) for one interface.

    ``-1`` makes the initial acquisition a single attempt (exit 2 on failure); once bound the
    process stays and renews at T1 by itself (a unicast REQUEST in RENEWING state), so a test with
    a short lease can ``wait_event("RENEW")``.
    """

    def __init__(self, popen_argv: list[str], files: dict[str, Path], spawn: Callable[..., subprocess.Popen]):
        self.files = files
        self._log = open(files["log"], "ab")
        self.proc = spawn(popen_argv, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self) -> list[dict[str, str]]:
        return read_dhclient_events(self.files["events"])

    def log(self) -> str:
        try:
            return self.files["log"].read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_event(self, *reasons: str, timeout: float = 20, after: int = 0) -> dict[str, str]:
        """Wait for a script invocation whose reason is in ``reasons`` among events[after:].

        Fails fast (RuntimeError with the dhclient log) if dhclient exits first.
        """
        def pred():
            for ev in self.events()[after:]:
                if ev.get("reason") in reasons:
                    return ev
            if self.proc.poll() is not None:
                # one last look: the script may have run just before exit
                for ev in self.events()[after:]:
                    if ev.get("reason") in reasons:
                        return ev
                raise RuntimeError(f"dhclient exited {self.proc.returncode} before {reasons}; log:\n{self.log()}")
            return None
        return wait_for(pred, timeout, what=f"dhclient event {'/'.join(reasons)}")

    def wait_bound(self, timeout: float = 20) -> dict[str, str]:
        """Wait for BOUND/REBOOT (address configured); returns the script environment."""
        return self.wait_event("BOUND", "REBOOT", "RENEW", "REBIND", timeout=timeout)

    def stop(self) -> None:
        """Kill this dhclient (SIGTERM, then SIGKILL) without releasing the lease."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if not self._log.closed:
            self._log.close()


# --------------------------------------------------------------------------- capture


class Capture:
    """tcpdump writing a pcap (``-U``, packet-buffered) in a namespace or the root namespace.

    Started and ready (tcpdump printed "listening on") when the constructor returns.
    ``stop()`` ends it and returns the packets (Scapy objects); ``text()`` decodes with tcpdump.
    """

    def __init__(self, iface: str, bpf: str = "", netns: str | None = None, count: int | None = None,
                 directory: Path | None = None, ready_timeout: float = 10):
        directory = Path(directory or "/tmp")
        self.pcap = directory / f"capture-{iface}-{random_suffix(6)}.pcap"
        self.errfile = self.pcap.with_suffix(".err")
        argv = (["ip", "netns", "exec", netns] if netns else []) + [
            "tcpdump", "-i", iface, "-U", "-n", "-s", "0", "-w", str(self.pcap)]
        if count:
            argv += ["-c", str(count)]
        argv += shlex.split(bpf) if bpf else []
        self._err = open(self.errfile, "wb")
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=self._err, start_new_session=True)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"tcpdump exited {self.proc.returncode}: {self.errfile.read_text()}")
            return "listening on" in self.errfile.read_text(errors="replace")
        wait_for(ready, ready_timeout, what=f"tcpdump on {iface} to start")

    def wait_count(self, n: int, timeout: float = 10) -> list:
        """Wait until at least ``n`` packets were captured; return them (capture keeps running)."""
        def enough():
            pkts = self.packets()
            return pkts if len(pkts) >= n else None
        return wait_for(enough, timeout, what=f"{n} captured packets on {self.pcap.name}")

    def packets(self) -> list:
        from scapy.all import rdpcap  # lazy: only tests that capture need scapy (all: layer bindings)
        try:
            return list(rdpcap(str(self.pcap)))
        except (FileNotFoundError, EOFError):
            return []
        except Exception:  # partially written record while tcpdump is running
            return []

    def stop(self) -> list:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)  # tcpdump flushes on SIGINT
                self.proc.wait(timeout=5)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                _kill_process_group(self.proc)
        if not self._err.closed:
            self._err.close()
        return self.packets()

    def text(self, flags: str = "-e -v") -> str:
        return sh(["tcpdump", "-n", "-r", str(self.pcap), *shlex.split(flags)], check=False).stdout


# --------------------------------------------------------------------------- namespaces


class NetnsHost:
    """A network namespace with one veth: ``eth0`` (given MAC) inside, ``port_name`` outside.

    The outside end is NOT on a bridge (``sdn instance plug`` does that); ``attach(bridge)`` adds
    it with plain ovs-vsctl for tests that need no sdn. ``close()`` kills this host's processes by
    pid, deletes the port/veth and the namespace.
    """

    def __init__(self, port_name: str | None = None, mac: str | None = None, name: str | None = None,
                 workdir: Path | None = None):
        self.name = name or f"sdnt-{random_suffix(6)}"
        self.port_name = port_name or f"sdnv{random_suffix(8)}"
        if len(self.port_name) > 15:
            raise ValueError(f"port name {self.port_name!r} is longer than 15 characters (IFNAMSIZ)")
        self.mac = (mac or random_mac()).lower()
        self.iface = "eth0"
        self.workdir = Path(workdir or f"/tmp/{self.name}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bridge: str | None = None
        self._procs: list[subprocess.Popen] = []
        self._dhclients: list[Dhclient] = []
        self._captures: list[Capture] = []
        self._dhcp_files: dict[str, Path] | None = None
        self.closed = False
        self.extra_ports: list[str] = []
        sh(["ip", "netns", "add", self.name])
        try:
            sh(["ip", "link", "add", self.port_name, "type", "veth", "peer", "name", self.iface,
                "netns", self.name])
            sh(["ip", "-n", self.name, "link", "set", self.iface, "address", self.mac])
            sh(["ip", "-n", self.name, "link", "set", "lo", "up"])
            sh(["ip", "-n", self.name, "link", "set", self.iface, "up"])
            sh(["ip", "link", "set", self.port_name, "up"])
            # userspace OVS + veth: TCP breaks unless checksum offload is off (ENVIRONMENT.md)
            sh(["ethtool", "-K", self.port_name, "tx", "off"])
            self.run(["ethtool", "-K", self.iface, "tx", "off"])
        except Exception:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"NetnsHost(ns={self.name}, port={self.port_name}, mac={self.mac})"

    # -- commands
    def argv(self, cmd: Sequence[str] | str) -> list[str]:
        argv = shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, cmd: Sequence[str] | str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a command inside the namespace (``ip netns exec``)."""
        return sh(self.argv(cmd), check=check, timeout=timeout)

    def popen(self, cmd: Sequence[str] | str, **kw) -> subprocess.Popen:
        """Start a background process in the namespace; it is killed (by pid group) at close()."""
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.argv(cmd), **kw)
        self._procs.append(proc)
        return proc

    def ping(self, ip: str, count: int = 1, timeout: float = 2) -> bool:
        """True if ``ping -c count -W timeout ip`` from the namespace gets a reply."""
        p = self.run(["ping", "-n", "-q", "-c", str(count), "-W", str(int(max(1, timeout))), ip],
                     check=False, timeout=timeout * count + 10)
        return p.returncode == 0

    def set_ip(self, cidr: str) -> None:
        """Static address, e.g. ``10.99.0.1/24``."""
        self.run(["ip", "-4", "addr", "add", cidr, "dev", self.iface])

    def addresses(self) -> list[str]:
        """IPv4 addresses (``a.b.c.d/len``) on eth0."""
        out = json.loads(self.run(["ip", "-j", "-4", "addr", "show", "dev", self.iface]).stdout or "[]")
        return [f"{a['local']}/{a['prefixlen']}" for link in out for a in link.get("addr_info", [])]

    def ips(self) -> list[str]:
        """IPv4 addresses on eth0 without prefix length."""
        return [a.split("/")[0] for a in self.addresses()]

    def link_mtu(self) -> int:
        return json.loads(self.run(["ip", "-j", "link", "show", "dev", self.iface]).stdout)[0]["mtu"]

    def default_route(self) -> str | None:
        routes = json.loads(self.run(["ip", "-j", "-4", "route", "show", "default"]).stdout or "[]")
        return routes[0].get("gateway") if routes else None

    # -- OVS
    def attach(self, bridge: str | Bridge) -> int:
        """Add the outside veth end to ``bridge`` (plain ovs-vsctl add-port); return its ofport."""
        bridge = str(bridge)
        sh(["ovs-vsctl", "--timeout=30", "add-port", bridge, self.port_name])
        self.bridge = bridge
        return ofport(bridge, self.port_name)

    def add_interface(self, port_name: str, mac: str, iface: str) -> None:
        """One more veth for an instance with several VIFs: ``iface`` (``mac``) inside,
        ``port_name`` outside (not on a bridge); deleted at close()."""
        sh(["ip", "link", "add", port_name, "type", "veth", "peer", "name", iface, "netns", self.name])
        self.extra_ports.append(port_name)
        sh(["ip", "-n", self.name, "link", "set", iface, "address", mac.lower()])
        sh(["ip", "-n", self.name, "link", "set", iface, "up"])
        sh(["ip", "link", "set", port_name, "up"])
        sh(["ethtool", "-K", port_name, "tx", "off"])
        self.run(["ethtool", "-K", iface, "tx", "off"])

    def dhclient_on(self, iface: str, wait: bool = True, timeout: float = 20) -> Dhclient:
        """A real dhclient for ``iface`` with files of its own (``workdir/dhclient-<iface>``:
        the test's script, lease, pid), running beside the others; stopped at close()."""
        files = write_dhclient_files(self.workdir / f"dhclient-{iface}")
        start = len(read_dhclient_events(files["events"]))
        dh = Dhclient(self.argv(dhclient_argv(files, iface)), files,
                      lambda argv, **kw: subprocess.Popen(argv, start_new_session=True, **kw))
        self._dhclients.append(dh)
        if wait:
            dh.wait_event("BOUND", "REBOOT", timeout=timeout, after=start)
        return dh

    def ips_of(self, iface: str) -> list[str]:
        """IPv4 addresses (without prefix length) on ``iface``."""
        out = json.loads(self.run(["ip", "-j", "-4", "addr", "show", "dev", iface]).stdout or "[]")
        return [a["local"] for link in out for a in link.get("addr_info", [])]

    # -- DHCP
    @property
    def dhcp_files(self) -> dict[str, Path]:
        if self._dhcp_files is None:
            self._dhcp_files = write_dhclient_files(self.workdir / "dhclient")
        return self._dhcp_files

    def dhclient(self, wait: bool = True, timeout: float = 20) -> Dhclient:
        """Start a real ``dhclient -4 -v -d -1`` on eth0 (lease/pid/script files in workdir).

        The script (``DHCLIENT_SCRIPT``) really configures the address and records each event.
        With ``wait`` it returns after BOUND/REBOOT (raises if dhclient gives up). Stops any
        dhclient this host started before. ``.events()`` lists script invocations.
        """
        self.stop_dhclient()
        files = self.dhcp_files
        start = len(read_dhclient_events(files["events"]))
        dh = Dhclient(self.argv(dhclient_argv(files, self.iface)), files,
                      lambda argv, **kw: subprocess.Popen(argv, start_new_session=True, **kw))
        self._dhclients.append(dh)
        if wait:
            dh.wait_event("BOUND", "REBOOT", timeout=timeout, after=start)
        return dh

    def renew(self, timeout: float = 20) -> dict[str, str]:
        """Restart dhclient with the same lease file: INIT-REBOOT (broadcast REQUEST for the
        remembered address, reason REBOOT). For the T1 unicast RENEW, keep the dhclient running
        and ``wait_event("RENEW")`` (needs a short lease). Returns the new event's environment."""
        before = len(self.dhcp_events())
        dh = self.dhclient(wait=False)
        return dh.wait_event("BOUND", "REBOOT", timeout=timeout, after=before)

    def release(self, timeout: float = 20) -> None:
        """``dhclient -r`` with the same pid/lease files: stops the running dhclient and sends a
        DHCPRELEASE; the script's RELEASE event removes the address."""
        files = self.dhcp_files
        self._resolve_dhcp_server()
        self.run(dhclient_argv(files, self.iface, "-r"), timeout=timeout)
        for dh in self._dhclients:
            try:
                dh.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.stop_dhclient()

    def _resolve_dhcp_server(self) -> None:
        """Have the server's MAC in the neighbour table before ``dhclient -r``.

        dhclient unicasts the RELEASE and then runs its script, which removes the address; if
        the kernel still has to ARP for the server, the queued RELEASE dies with the address
        (seen: 2 runs in 6). A real client's lost RELEASE just lets the lease expire; the test
        wants to see the release, so it takes the race away on the client side.
        """
        servers = [ev.get("new_dhcp_server_identifier") for ev in self.dhcp_events()]
        server = next((s for s in reversed(servers) if s), None)
        if not server:
            return
        self.run(["ping", "-c", "1", "-W", "1", server], check=False)  # answered or not: it ARPs
        wait_for(lambda: "lladdr" in self.run(["ip", "neigh", "show", server, "dev", self.iface],
                                              check=False).stdout,
                 timeout=5, what=f"the DHCP server {server} in the neighbour table")

    def dhcp_events(self) -> list[dict[str, str]]:
        return read_dhclient_events(self.dhcp_files["events"])

    def stop_dhclient(self) -> None:
        for dh in self._dhclients:
            dh.stop()

    # -- capture
    def capture(self, bpf: str = "", iface: str | None = None, count: int | None = None) -> Capture:
        """Start tcpdump on ``iface`` (default eth0) inside the namespace; see ``Capture``."""
        cap = Capture(iface or self.iface, bpf, netns=self.name, count=count, directory=self.workdir)
        self._captures.append(cap)
        return cap

    # -- teardown
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for dh in self._dhclients:
            dh.stop()
        for cap in self._captures:
            cap.stop()
        for proc in self._procs:
            _kill_process_group(proc)
        # Remove the port from whatever bridge holds it (sdn plug or attach()), then the veth
        # (deleting one end deletes both; netns deletion alone is asynchronous), then the ns.
        sh(["ovs-vsctl", "--timeout=30", "--if-exists", "del-port", self.port_name], check=False)
        sh(["ip", "link", "del", self.port_name], check=False)
        for port in self.extra_ports:
            sh(["ovs-vsctl", "--timeout=30", "--if-exists", "del-port", port], check=False)
            sh(["ip", "link", "del", port], check=False)
        sh(["ip", "netns", "del", self.name], check=False)


# --------------------------------------------------------------------------- sdn


@dataclass
class SdnEnv:
    """One sdn deployment for a test: config file, SQLite DB, bridge, and an optional controller."""

    workdir: Path
    bridge: Bridge
    port: int
    config_file: Path
    sdn_exe: str
    _controller: subprocess.Popen | None = None
    _ctl_log: object = None
    controller_log_file: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ``sdn --config-file F *args``; with ``check`` a failure raises with stderr shown."""
        argv = [self.sdn_exe, "--config-file", str(self.config_file), *map(str, args)]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self._env())
        if check and p.returncode != 0:
            raise AssertionError(f"{shlex.join(argv)} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
        return p

    def cli_json(self, *args: str, timeout: float = 60):
        """``cli(*args, '--json')`` parsed."""
        return json.loads(self.cli(*args, "--json", timeout=timeout).stdout)

    def _env(self) -> dict[str, str]:
        e = dict(os.environ)
        e.update(self.env)
        return e

    @property
    def controller(self) -> subprocess.Popen | None:
        return self._controller

    def controller_log(self) -> str:
        if self.controller_log_file and self.controller_log_file.exists():
            return self.controller_log_file.read_text(errors="replace")
        return ""

    def start_controller(self, timeout: float = 30, wait_connected: bool = True,
                         global_args: tuple[str, ...] = ()) -> subprocess.Popen:
        """Start ``sdn --config-file F [global_args] controller`` (own process group, log in
        workdir), point the bridge at it once it listens, and wait until it has synced the
        bridge (its table-0 default flow carries a new generation). Fails fast if the process
        exits. ``global_args``: e.g. ``("--debug", "--log-file", path)``."""
        if self._controller is not None and self._controller.poll() is None:
            raise RuntimeError("controller already running")
        before = self.pipeline_cookie()
        self.controller_log_file = self.workdir / "controller.log"
        self._ctl_log = open(self.controller_log_file, "ab")
        argv = [self.sdn_exe, "--config-file", str(self.config_file), *global_args, "controller"]
        self._controller = subprocess.Popen(argv, stdout=self._ctl_log, stderr=subprocess.STDOUT,
                                            start_new_session=True, env=self._env())
        if wait_connected:
            wait_for(lambda: self._alive() and self.listening(), timeout, interval=0.05,
                     what=f"the controller to listen on port {self.port}")
            # A fresh Controller row connects at once; an old one may sit in OVS's reconnect
            # backoff (seen: 4 s, whatever max_backoff says).
            self.bridge.set_controller(self.port)
            wait_for(lambda: self._alive() and self.pipeline_cookie() not in (None, before),
                     timeout, interval=0.05, what=f"the controller to sync bridge {self.bridge.name}")
        return self._controller

    def _alive(self) -> bool:
        if self._controller is not None and self._controller.poll() is not None:
            raise RuntimeError(f"sdn controller exited {self._controller.returncode}; log:\n"
                               f"{self.controller_log()[-4000:]}")
        return True

    def listening(self) -> bool:
        out = sh(["ss", "-tlnH", f"( sport = :{self.port} )"], check=False).stdout
        return bool(out.strip())

    def pipeline_cookie(self) -> str | None:
        """Cookie of the table-0 table-miss flow sdn installs (changes with every full sync)."""
        for line in dump_flows(self.bridge.name, table=0):
            if "priority=0 " in line + " " and "cookie=0x5d" in line:
                return line.split(",")[0].strip()
        return None

    def openflow_connections(self) -> int:
        """Established TCP connections to this env's OpenFlow port (switch side is OVS).

        Immediate, unlike the OVSDB ``is_connected`` column, which ovs-vswitchd refreshes only
        every few seconds after a disconnect.
        """
        out = sh(["ss", "-tnH", "state", "established", f"( sport = :{self.port} )"], check=False).stdout
        return len([line for line in out.splitlines() if line.strip()])

    def wait_connected(self, timeout: float = 30) -> None:
        """Wait until the controller holds the bridge's OpenFlow connection."""
        wait_for(lambda: self._alive() and self.openflow_connections() > 0, timeout, interval=0.05,
                 what=f"bridge {self.bridge.name} connected to the controller")

    def stop_controller(self, kill: bool = False, wait_disconnected: bool = True) -> int | None:
        """SIGTERM (or with ``kill`` SIGKILL) the controller's process group; return its exit code.

        With ``wait_disconnected`` also waits until no OpenFlow connection to the port is left
        (the OVSDB ``is_connected`` column may still say true for ~5 s afterwards).
        """
        proc = self._controller
        if proc is None:
            return None
        if proc.poll() is None:
            if kill:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
            else:
                _kill_process_group(proc, sig_timeout=10)
        if self._ctl_log and not self._ctl_log.closed:
            self._ctl_log.close()
        self._controller = None
        if wait_disconnected:
            wait_for(lambda: self.openflow_connections() == 0, 10, interval=0.05,
                     what=f"OpenFlow connections to port {self.port} to close")
        return proc.returncode

    def close(self) -> None:
        self.stop_controller(wait_disconnected=False)


def write_sdn_conf(path: Path, sections: dict[str, dict[str, object]]) -> Path:
    """Write an oslo.config ini file from {section: {option: value}}; lists become comma lists."""
    lines = []
    for section, opts in sections.items():
        lines.append(f"[{section}]")
        for k, v in opts.items():
            if v is None:
                continue
            if isinstance(v, (list, tuple)):
                v = ",".join(map(str, v))
            elif isinstance(v, bool):
                v = "true" if v else "false"
            lines.append(f"{k} = {v}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def find_sdn_exe(repo_root: Path) -> str:
    """``$SDN_CLI``, else the repo's ``.venv/bin/sdn``, else ``sdn`` on PATH."""
    import shutil
    if os.environ.get("SDN_CLI"):
        return os.environ["SDN_CLI"]
    venv = repo_root / ".venv" / "bin" / "sdn"
    if venv.exists():
        return str(venv)
    found = shutil.which("sdn")
    if found:
        return found
    raise FileNotFoundError("sdn executable not found: set SDN_CLI or run 'make setup'")


def merge_sections(base: dict[str, dict], extra: dict[str, dict] | None) -> dict[str, dict]:
    out = {k: dict(v) for k, v in base.items()}
    for sec, opts in (extra or {}).items():
        out.setdefault(sec, {}).update(opts)
    return out


__all__: Iterable[str] = [
    "sh", "CommandError", "wait_for", "random_suffix", "free_tcp_port", "random_mac", "ovs_available", "start_ovs",
    "link_exists", "netns_list", "dump_flows", "normalize_flow", "flow_table", "dump_flows_text", "add_flow", "trace", "ofport",
    "controller_connected", "Bridge", "create_bridge", "DHCLIENT_SCRIPT", "write_dhclient_files",
    "dhclient_argv", "read_dhclient_events", "Dhclient", "Capture", "NetnsHost", "SdnEnv",
    "write_sdn_conf", "find_sdn_exe", "merge_sections",
]
