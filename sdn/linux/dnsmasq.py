"""dnsmasq per network, as nova's ``linux_net.update_dhcp`` ran it.

Files per bridge in ``networks_path``: ``sdn-<bridge>.conf`` (hosts: ``mac,hostname.domain,ip``),
``sdn-<bridge>.opts`` (DHCP options), ``sdn-<bridge>.pid``. dnsmasq is started with nova's flags
on the network's gateway address; a changed hosts/opts file is reloaded with SIGHUP; a dnsmasq
that died, or runs with other flags, is (re)started. Its ``--dhcp-script`` is a small wrapper
running ``sdn dhcp-bridge`` with this agent's config file, which turns dnsmasq's
``add|old|del|init`` calls into lease_fixed_ip / release_fixed_ip.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from sdn.linux.desired import DnsmasqSpec

LOG = logging.getLogger("sdn.linux.dnsmasq")


def paths(networks_path: str, bridge: str) -> dict[str, str]:
    base = os.path.join(networks_path, f"sdn-{bridge}")
    return {"conf": base + ".conf", "opts": base + ".opts", "pid": base + ".pid", "log": base + ".log"}


def argv(spec: DnsmasqSpec, networks_path: str, dhcp_script: str, config_file: str = "",
         user: str = "", log: bool = False) -> list[str]:
    """nova's command line (Essex linux_net._dnsmasq_cmd) plus ``--dhcp-optsfile``, ``--user``
    when configured, and ``--interface``: with one interface dnsmasq binds its DHCP socket to
    the bridge (SO_BINDTODEVICE); without it, every network's dnsmasq listens on 0.0.0.0:67
    and a unicast RELEASE/renewal could land in another network's instance and be dropped."""
    p = paths(networks_path, spec.bridge)
    return ["dnsmasq", "--strict-order", "--bind-interfaces", f"--conf-file={config_file}",
            f"--domain={spec.domain}", f"--pid-file={p['pid']}", f"--listen-address={spec.listen_address}",
            "--except-interface=lo", f"--interface={spec.bridge}",
            f"--dhcp-range={spec.dhcp_start},static,{spec.netmask},{spec.lease_time}s",
            f"--dhcp-lease-max={spec.lease_max}", f"--dhcp-hostsfile={p['conf']}",
            f"--dhcp-optsfile={p['opts']}", f"--dhcp-script={dhcp_script}", "--leasefile-ro"] + ([f"--user={user}"] if user else []) + (
                [f"--log-facility={p['log']}", "--log-dhcp"] if log else [])


def write_dhcp_script(networks_path: str, config_files: list[str]) -> str:
    """The executable dnsmasq calls (it passes no arguments of ours): runs ``sdn dhcp-bridge``
    with this agent's config, like nova's dhcpbridge with its flagfile."""
    path = os.path.join(networks_path, "sdn-dhcpbridge")
    cfg = " ".join(f"--config-file '{c}'" for c in config_files)
    text = f'#!/bin/sh\nexec "{sys.executable}" -m sdn.cli {cfg} dhcp-bridge "$@"\n'
    _write_if_changed(path, text, mode=0o755)
    return path


def _write_if_changed(path: str, text: str, mode: int = 0o644) -> bool:
    try:
        with open(path) as fh:
            if fh.read() == text:
                return False
    except FileNotFoundError:
        pass
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True


def running_pid(pid_file: str, hosts_file: str) -> int | None:
    """The pid in ``pid_file`` if that process is a dnsmasq serving ``hosts_file`` (nova's check
    that the pid was not reused)."""
    try:
        with open(pid_file) as fh:
            pid = int(fh.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read().split(b"\0")
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
    if not any(hosts_file.encode() in a for a in cmdline):
        return None
    return pid


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode() for a in fh.read().split(b"\0") if a]
    except FileNotFoundError:
        return []


def ensure(spec: DnsmasqSpec, networks_path: str, dhcp_script: str, env: dict[str, str],
           user: str = "", log: bool = False) -> list[str]:
    """Make dnsmasq for ``spec`` run with current files; returns what was done."""
    os.makedirs(networks_path, exist_ok=True)
    p = paths(networks_path, spec.bridge)
    hosts_changed = _write_if_changed(p["conf"], spec.hosts)
    opts_changed = _write_if_changed(p["opts"], spec.opts)
    want = argv(spec, networks_path, dhcp_script, user=user, log=log)
    pid = running_pid(p["pid"], p["conf"])
    if pid is not None and _cmdline(pid)[1:] == want[1:]:
        if hosts_changed or opts_changed:
            os.kill(pid, signal.SIGHUP)
            return [f"dnsmasq {spec.bridge} (pid {pid}) reloaded"]
        return []
    done = []
    if pid is not None:
        stop_pid(pid)
        done.append(f"dnsmasq {spec.bridge} (pid {pid}) stopped: flags changed")
    # dnsmasq daemonises; run() waits for the parent, the daemon is reparented (as nova's was)
    proc = subprocess.run(want, env={**os.environ, **env, "NETWORK_ID": str(spec.network_id)},
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"dnsmasq for {spec.bridge} failed to start ({proc.returncode}): "
                           f"{proc.stderr.strip()}")
    done.append(f"dnsmasq {spec.bridge} started")
    return done


def stop_pid(pid: int, timeout: float = 5) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}") or _is_zombie(pid):
            return
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def stop_others(networks_path: str, keep_bridges: set[str]) -> list[str]:
    """Stop dnsmasq of bridges no longer served (network deleted) and remove its files."""
    done = []
    if not os.path.isdir(networks_path):
        return done
    for name in sorted(os.listdir(networks_path)):
        if not (name.startswith("sdn-") and name.endswith(".conf")):
            continue
        bridge = name[4:-5]
        if bridge in keep_bridges:
            continue
        p = paths(networks_path, bridge)
        pid = running_pid(p["pid"], p["conf"])
        if pid is not None:
            stop_pid(pid)
        for f in p.values():
            try:
                os.unlink(f)
            except FileNotFoundError:
                pass
        done.append(f"dnsmasq {bridge} removed")
    return done
