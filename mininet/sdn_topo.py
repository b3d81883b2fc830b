"""Mininet topology for sdn, read from a TOML file (see topology/demo.toml).

Each ``[[switches]]`` entry is a hypervisor (an OpenFlow 1.3 userspace OVS bridge), each
``[[trunks]]`` entry a link between two of them, and each ``[[instances]]`` entry a host
"launched" through the sdn CLI (``sdn instance launch NAME --project P --host SWITCH --json``,
idempotent): the host gets the MAC sdn allocated and no IP (DHCP gives it one); the switch-side
interface is named after the VIF port (``tap`` + VIF uuid[:11]), which is how the controller
binds a datapath port to the VIF.

Usable from ``mininet/run_demo.py`` and directly with Mininet (which runs under
/usr/bin/python3, so this module uses the standard library and Mininet only and calls the sdn
CLI as a program)::

    SDN_CONFIG=var/demo/sdn.conf mn --custom mininet/sdn_topo.py --topo sdn,topology/demo.toml \\
        --controller remote,port=6653 --switch ovs,datapath=user,protocols=OpenFlow13

The database must exist and hold the networks first (``mininet/run_demo.py --prepare`` does
that, then prints this command). The sdn executable is ``$SDN_CLI``, else the repository's
``.venv/bin/sdn``, else ``sdn`` on PATH; the config file is ``$SDN_CONFIG``, else
``var/demo/sdn.conf`` in the repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from mininet.topo import Topo

# `mn --custom` execs this file without __file__; the code object still knows its file name.
_THIS_FILE = Path(globals().get("__file__") or sys._getframe().f_code.co_filename).resolve()
REPO_ROOT = _THIS_FILE.parent.parent
DEFAULT_CONFIG = REPO_ROOT / "var" / "demo" / "sdn.conf"


def load_topology(path: str | os.PathLike) -> dict:
    """Parse and sanity-check a topology TOML file; errors name the file and the problem."""
    path = Path(path)
    if not path.is_absolute() and not path.exists():
        path = REPO_ROOT / path
    with open(path, "rb") as f:
        topo = tomllib.load(f)
    switches = {s["name"] for s in topo.get("switches", [])}
    if not switches:
        raise ValueError(f"{path}: no [[switches]] defined")
    for s in switches:
        if len(s) > 15:
            raise ValueError(f"{path}: switch name {s!r} is longer than 15 characters")
    for t in topo.get("trunks", []):
        for end in (t["a"], t["b"]):
            if end not in switches:
                raise ValueError(f"{path}: trunk end {end!r} is not a switch (switches: {sorted(switches)})")
    names = set()
    for inst in topo.get("instances", []):
        if inst["host"] not in switches:
            raise ValueError(f"{path}: instance {inst['name']!r} host {inst['host']!r} is not a switch "
                             f"(switches: {sorted(switches)})")
        if inst["name"] in names:
            raise ValueError(f"{path}: instance {inst['name']!r} defined twice")
        names.add(inst["name"])
    for kind in ("reachable", "isolated"):
        for pair in topo.get("expect", {}).get(kind, []):
            for n in pair:
                if n not in names:
                    raise ValueError(f"{path}: expect.{kind} names unknown instance {n!r}")
    topo["_path"] = str(path.resolve())
    return topo


def sdn_executable() -> str:
    """``$SDN_CLI``, else the repository's ``.venv/bin/sdn``, else ``sdn`` on PATH."""
    if os.environ.get("SDN_CLI"):
        return os.environ["SDN_CLI"]
    venv = REPO_ROOT / ".venv" / "bin" / "sdn"
    if venv.exists():
        return str(venv)
    found = shutil.which("sdn")
    if found:
        return found
    raise FileNotFoundError("sdn executable not found: set SDN_CLI, or run 'make setup' to create .venv")


def config_file() -> str:
    return os.environ.get("SDN_CONFIG") or str(DEFAULT_CONFIG)


def sdn(*args: str, config: str | None = None) -> str:
    """Run the sdn CLI; return stdout, raise RuntimeError with its stderr on failure."""
    argv = [sdn_executable(), "--config-file", config or config_file(), *map(str, args)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


def launch_instance(name: str, project: str, host: str, config: str | None = None) -> dict:
    """``sdn instance launch NAME --project P --host H --json`` (idempotent) parsed: has at least
    ``mac``, ``port_name``, ``address``, ``vlan``, ``cidr``, ``gateway``."""
    alloc = json.loads(sdn("instance", "launch", name, "--project", project, "--host", host, "--json",
                           config=config))
    for key in ("mac", "port_name", "address"):
        if key not in alloc:
            raise RuntimeError(f"sdn instance launch {name} --json: no {key!r} in {alloc}")
    return alloc


class SdnTopo(Topo):
    """Switches, trunks and sdn-launched hosts from a topology TOML file.

    After construction ``self.allocations`` maps instance name to its ``instance launch`` JSON,
    and ``self.spec`` holds the parsed TOML.
    """

    def build(self, topology="topology/demo.toml", config: str | None = None):
        """``topology``: path of a TOML file, or an already loaded ``load_topology`` dict."""
        self.spec = topology if isinstance(topology, dict) else load_topology(topology)
        self.allocations: dict[str, dict] = {}
        for sw in self.spec["switches"]:
            # Mininet's default dpid is the digits of the name ("d77c1" and "d77c2" both give 77),
            # and the controller tells switches apart by dpid: derive a unique one if not given.
            dpid = sw.get("dpid") or hashlib.sha1(sw["name"].encode()).hexdigest()[:16]
            opts = {"protocols": "OpenFlow13", "failMode": "secure", "datapath": "user", "dpid": dpid}
            self.addSwitch(sw["name"], **opts)
        for t in self.spec.get("trunks", []):
            self.addLink(t["a"], t["b"], intfName1=t.get("a_intf", f"{t['a']}-trunk"),
                         intfName2=t.get("b_intf", f"{t['b']}-trunk"))
        for inst in self.spec.get("instances", []):
            alloc = launch_instance(inst["name"], inst["project"], inst["host"], config=config)
            self.allocations[inst["name"]] = alloc
            # ip=None: no static address, DHCP configures it
            self.addHost(inst["name"], ip=None, mac=alloc["mac"])
            self.addLink(inst["name"], inst["host"], intfName1=f"{inst['name']}-eth0",
                         intfName2=alloc["port_name"])
        outside = self.spec.get("outside")
        if outside:  # the public network: the external gateway / internet, on a public port
            self.addHost(outside["name"], ip=None)
            self.addLink(outside["name"], outside["switch"], intfName1=f"{outside['name']}-eth0",
                         intfName2=outside["interface"])


topos = {"sdn": SdnTopo}
