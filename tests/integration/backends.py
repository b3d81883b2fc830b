"""The two data planes behind one test interface, so behavioural tests run for both.

``OvsBackend``: the existing set-up -- VIF ports plugged into the env's userspace OVS bridge with
``sdn instance plug``, ``sdn controller`` programming it.

``LinuxBackend`` (``network_driver = linux``): a *hypervisor* namespace the test creates holds
the Linux bridges, dnsmasq (or the raw-socket responder) and the iptables/ebtables rules;
``sdn agent`` runs inside it (``ip netns exec HV sdn agent``), so iptables-save/restore there
sees only that namespace's rules and nothing touches the machine's own network. An instance's
veth end (``tap<uuid[:11]>``) is moved into the hypervisor namespace, where the agent puts it on
its network's bridge (what nova-compute's plug did). Teardown kills the agent and every process
left in the hypervisor namespace (dnsmasq), by pid, and deletes the namespace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.integration import netlab
from tests.integration.netlab import random_suffix, sh, wait_for


class OvsBackend:
    name = "ovs"
    dhcp_driver = None

    def __init__(self, make_sdn_env, netns_host):
        self.make_sdn_env = make_sdn_env
        self.netns_host = netns_host

    def env(self, config: dict | None = None, trunk_interfaces=()):
        return self.make_sdn_env(trunk_interfaces=trunk_interfaces, config=config)

    def flat_bridge(self, env) -> str:
        return env.bridge.name

    def launch(self, env, name, project):
        return self.plug(env, env.cli_json("instance", "launch", name, "--project", project))

    def plug(self, env, alloc):
        host = self.netns_host(port_name=alloc["port_name"], mac=alloc["mac"])
        env.cli("instance", "plug", alloc["instance"], "--bridge", env.bridge.name)
        return alloc, host

    def plug_all(self, env, alloc):
        """An instance with several VIFs: one namespace, ``eth<i>`` per VIF (its MAC), every
        port plugged by one ``sdn instance plug``."""
        vifs = alloc["vifs"]
        host = self.netns_host(port_name=vifs[0]["port_name"], mac=vifs[0]["mac"])
        for i, vif in enumerate(vifs[1:], 1):
            host.add_interface(vif["port_name"], vif["mac"], f"eth{i}")
        env.cli("instance", "plug", alloc["instance"], "--bridge", env.bridge.name)
        return alloc, host

    def unplug_port(self, env, port_name):
        """What nova-compute's unplug does for one VIF's port (here: off the bridge)."""
        netlab.sh(["ovs-vsctl", "--timeout=30", "--if-exists", "del-port", env.bridge.name, port_name])

    def attach_uplink(self, env, host, alloc=None):
        """Put a plain (non-VIF) host on the segment: the OVS trunk port."""
        host.attach(env.bridge.name)

    def attach_public(self, env, host, addresses=()):
        """The outside world on the public side: a port on the integration bridge (sdn's router
        answers for routing_source_ip and the floating IPs itself)."""
        host.attach(env.bridge.name)

    def start(self, env):
        env.start_controller()

    # -- waiting for the data plane after a CLI change (additive; the Linux backend's
    #    wait_synced has the same signature)

    @staticmethod
    def sync_count(env) -> int:
        """Syncs the controller logged so far ("datapath ... full|incremental sync: ...")."""
        return sum(1 for line in env.controller_log().splitlines()
                   if "datapath" in line and (" full sync: " in line or " incremental sync: " in line))

    def wait_synced(self, env, timeout: float = 20, settle: float = 0.5) -> None:
        """Wait until the controller has programmed the bridge for the state as it is now.

        The controller polls the state revision (every 0.1 s) and runs an incremental sync when
        it changed; it logs no revision. So: when the revision moved since the last call, wait
        for a sync logged after that call, then for the bridge's flows (counters and cookies
        aside) to stay the same for ``settle`` seconds (a sync requested for a later revision
        would change them within that time). Fails fast if the controller died.
        """
        seen = self.__dict__.setdefault("_synced", {})
        rev = LinuxBackend.revision(env)
        last_rev, last_count = seen.get(id(env), (None, 0))
        if rev != last_rev:
            try:
                wait_for(lambda: env._alive() and self.sync_count(env) > last_count, timeout,
                         what=f"the controller to sync bridge {env.bridge.name} to revision {rev}")
            except TimeoutError as err:
                errors = [line for line in env.controller_log().splitlines()
                          if " ERROR " in line or " WARNING " in line]
                raise TimeoutError(f"{err}; controller errors/warnings (last 5):\n"
                                   + "\n".join(errors[-5:])) from None
        deadline = time.monotonic() + timeout
        prev = netlab.flow_table(env.bridge.name)
        stable_since = time.monotonic()
        while True:
            time.sleep(0.1)
            env._alive()
            cur = netlab.flow_table(env.bridge.name)
            now = time.monotonic()
            if cur != prev:
                prev, stable_since = cur, now
            elif now - stable_since >= settle:
                break
            if now > deadline:
                raise TimeoutError(f"flows of {env.bridge.name} kept changing for {timeout}s")
        seen[id(env)] = (rev, self.sync_count(env))

    def close(self):
        pass


class Hypervisor:
    """A network namespace standing for one stock hypervisor/network host."""

    def __init__(self, workdir: Path):
        self.name = f"sdnhv-{random_suffix(6)}"
        self.workdir = workdir
        sh(["ip", "netns", "add", self.name])
        sh(["ip", "-n", self.name, "link", "set", "lo", "up"])
        self.agent: subprocess.Popen | None = None
        self.agent_log = workdir / "agent.log"

    def run(self, cmd, check=True):
        return sh(["ip", "netns", "exec", self.name, *map(str, cmd)], check=check)

    def iptables_save(self) -> str:
        return self.run(["iptables-save"]).stdout

    def ebtables_save(self) -> str:
        return self.run(["ebtables-save"]).stdout

    def master_of(self, port: str) -> str | None:
        import json
        p = sh(["ip", "-n", self.name, "-j", "link", "show", "dev", port], check=False)
        if p.returncode != 0:
            return None
        return json.loads(p.stdout)[0].get("master")

    def start_agent(self, sdn_exe: str, config_file: Path, env: dict | None = None) -> subprocess.Popen:
        log = open(self.agent_log, "ab")
        self.agent = subprocess.Popen(
            ["ip", "netns", "exec", self.name, sdn_exe, "--config-file", str(config_file), "agent"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})})
        log.close()
        return self.agent

    def log(self) -> str:
        return self.agent_log.read_text(errors="replace") if self.agent_log.exists() else ""

    def reconciles(self) -> list[str]:
        return [line for line in self.log().splitlines() if "reconciled revision" in line]

    def stop_agent(self, kill: bool = False) -> None:
        proc = self.agent
        if proc is None or proc.poll() is not None:
            self.agent = None
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        self.agent = None

    def close(self) -> None:
        self.stop_agent()
        pids = sh(["ip", "netns", "pids", self.name], check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        sh(["ip", "netns", "del", self.name], check=False)


class LinuxBackend:
    name = "linux"

    def __init__(self, make_sdn_env, netns_host, tmp_path: Path, dhcp_driver: str = "dnsmasq"):
        self.make_sdn_env = make_sdn_env
        self.netns_host = netns_host
        self.tmp_path = tmp_path
        self.dhcp_driver = dhcp_driver
        self.hypervisors: dict[int, Hypervisor] = {}
        self.ports: dict[int, list[str]] = {}
        self.flat_bridges: dict[int, str] = {}

    def env(self, config: dict | None = None, trunk_interfaces=()):
        env = self.make_sdn_env(config=netlab.merge_sections(
            {"DEFAULT": {"network_driver": "linux", "dhcp_driver": self.dhcp_driver,
                         "agent_poll_interval": 0.1,
                         # pytest's tmp dirs are 0700: dnsmasq as nobody could not read its hosts file
                         "dnsmasq_user": "root", "dnsmasq_log": True}}, config))
        hv = Hypervisor(env.workdir)
        self.hypervisors[id(env)] = hv
        self.ports[id(env)] = []
        env.hv = hv
        return env

    def hv(self, env) -> Hypervisor:
        return self.hypervisors[id(env)]

    def flat_bridge(self, env) -> str:
        self.flat_bridges[id(env)] = "brf" + random_suffix(6)
        return self.flat_bridges[id(env)]

    def launch(self, env, name, project):
        return self.plug(env, env.cli_json("instance", "launch", name, "--project", project))

    def plug(self, env, alloc):
        """A namespace with the VIF's MAC whose veth end goes into the hypervisor namespace."""
        return self.plug_host(env, alloc, self.netns_host(port_name=alloc["port_name"],
                                                          mac=alloc["mac"]))

    def plug_host(self, env, alloc, host):
        """``plug`` for a namespace the test made (and prepared) itself: its veth's outer end
        goes into the hypervisor namespace, where the agent puts it on its bridge."""
        sh(["ip", "link", "set", alloc["port_name"], "netns", self.hv(env).name])
        self.ports[id(env)].append(alloc["port_name"])
        if self.hv(env).agent is not None:
            self.wait_ports(env)
        return alloc, host

    def plug_all(self, env, alloc):
        """An instance with several VIFs: one namespace, ``eth<i>`` per VIF (its MAC), every
        veth's outer end (``tap<uuid[:11]>``) moved into the hypervisor namespace."""
        vifs = alloc["vifs"]
        host = self.netns_host(port_name=vifs[0]["port_name"], mac=vifs[0]["mac"])
        for i, vif in enumerate(vifs[1:], 1):
            host.add_interface(vif["port_name"], vif["mac"], f"eth{i}")
        for vif in vifs:
            sh(["ip", "link", "set", vif["port_name"], "netns", self.hv(env).name])
            self.ports[id(env)].append(vif["port_name"])
        if self.hv(env).agent is not None:
            self.wait_ports(env)
        return alloc, host

    def unplug_port(self, env, port_name):
        """What nova-compute's unplug does for one VIF's port: the tap goes away."""
        self.ports[id(env)].remove(port_name)
        self.hv(env).run(["ip", "link", "del", port_name], check=False)

    def attach_uplink(self, env, host, alloc):
        """Put a plain (non-VIF) host on ``alloc``'s network bridge (an untagged uplink)."""
        hv = self.hv(env)
        bridge = f"br{alloc['vlan']}" if alloc["vlan"] else self.flat_bridges[id(env)]
        sh(["ip", "link", "set", host.port_name, "netns", hv.name])
        wait_for(lambda: hv.run(["ip", "link", "show", bridge], check=False).returncode == 0,
                 timeout=10, what=f"bridge {bridge} in {hv.name}")
        hv.run(["ip", "link", "set", host.port_name, "master", bridge, "up"])

    def attach_public(self, env, host, addresses=()):
        """The outside world on the hypervisor's public_interface (the host's veth end moves into
        the hypervisor namespace under its name, with the host's own public ``addresses``, as an
        operator configures them; the agent adds floating IPs)."""
        hv = self.hv(env)
        sh(["ip", "link", "set", host.port_name, "netns", hv.name])
        for cidr in addresses:
            hv.run(["ip", "addr", "add", cidr, "dev", host.port_name])
        hv.run(["ip", "link", "set", host.port_name, "up"])

    def wait_ports(self, env, timeout: float = 15) -> None:
        hv = self.hv(env)

        def ready():
            if hv.agent is not None and hv.agent.poll() is not None:
                raise RuntimeError(f"sdn agent exited {hv.agent.returncode}; log:\n{hv.log()[-4000:]}")
            return all(hv.master_of(p) for p in self.ports[id(env)])
        try:
            wait_for(ready, timeout, what="the agent to put every VIF port on its bridge")
        except TimeoutError as err:
            missing = [p for p in self.ports[id(env)] if not hv.master_of(p)]
            raise TimeoutError(f"{err}; not on a bridge: {missing}; agent log:\n"
                               f"{hv.log()[-3000:]}") from None

    def start(self, env):
        hv = self.hv(env)
        hv.start_agent(env.sdn_exe, env.config_file)
        self.wait_synced(env)

    def wait_synced(self, env, timeout: float = 20) -> None:
        """Wait until the agent reconciled the current revision (and every VIF port is plugged)."""
        hv = self.hv(env)
        rev = self.revision(env)

        def synced():
            if hv.agent is not None and hv.agent.poll() is not None:
                raise RuntimeError(f"sdn agent exited {hv.agent.returncode}; log:\n{hv.log()[-4000:]}")
            return any(f"reconciled revision {rev}:" in line for line in hv.reconciles())
        wait_for(synced, timeout, what=f"the agent to reconcile revision {rev}")
        self.wait_ports(env, timeout)

    @staticmethod
    def revision(env) -> int:
        import sqlite3
        db = env.workdir / "sdn.sqlite"
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT value FROM state_revision WHERE id = 1").fetchone()[0]

    def close(self):
        for hv in self.hypervisors.values():
            hv.close()


def make_backend(kind: str, make_sdn_env, netns_host, tmp_path):
    if kind == "ovs":
        return OvsBackend(make_sdn_env, netns_host)
    if kind == "linux":
        return LinuxBackend(make_sdn_env, netns_host, tmp_path)
    if kind == "linux-scapy":
        return LinuxBackend(make_sdn_env, netns_host, tmp_path, dhcp_driver="scapy")
    raise ValueError(kind)
