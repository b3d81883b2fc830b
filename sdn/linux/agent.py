"""``sdn agent``: the Linux backend's host agent.

On start and whenever the state revision changes (or a VIF port appears/disappears, or a
dnsmasq or raw-socket DHCP server died) it reconciles this host -- in the network namespace it runs in -- with the
shared state: bridges (+ VLAN interfaces), gateway addresses, iptables (nova's rules through
the IptablesManager), ebtables anti-spoof chains per VIF, security groups (per-VIF iptables and
ip6tables chains, remote-group ipsets, conntrack zones; connections a rule no longer admits are
deleted after the apply: ``sdn.linux.iptables_firewall``), floating addresses on
public_interface, and DHCP (dnsmasq per network, or with ``dhcp_driver = scapy`` sdn's
responder per bridge, on a raw socket per VIF tap port: see ``sdn.dhcp.rawsocket``; a server
that stopped is restarted at the next poll). IPv6 (networks with a /64): gateway_v6 and the
gateway's link-local address on the bridge, forwarding, public_ip_v6 and the default route via
external_gateway_v6 on public_interface, ebtables/ip6tables anti-spoof, and router
advertisements + DHCPv6 from sdn's codec on a raw socket per VIF tap (``sdn.linux.ipv6_router``,
whatever the dhcp_driver). Each step is idempotent: a reconcile that finds the host
right changes nothing (the log says ``no changes``), so restarting the agent is a no-op.

Several network hosts (nova's set_network_host, ``sdn.nethost``): an agent with a ``host``
name claims the networks with a VIF and no host, as the controller does, and routes (gateway,
dnsmasq, NAT, metadata, floating IPs, IPv6 public side) only the networks whose host it is;
the others it bridges onto their uplink for its own VIFs. ``host =`` (empty): a compute host.

What it does is counted (``sdn.metrics.AgentMetrics``: reconcile durations and outcomes, rules
held, tables restored, raw-socket DHCP lease events, database errors) and served on
``[metrics] listen:agent_port``.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import signal
import subprocess
import threading
import time

from pyroute2 import IPRoute
from sqlalchemy import select

from sdn.db import api as db
from sdn.db import models
from sdn import nethost
from sdn.linux import desired, dnsmasq, interface, ipset, iptables_firewall, tc
from sdn.linux.iptables import IptablesManager
from sdn.metrics import AgentMetrics

LOG = logging.getLogger("sdn.linux.agent")


def run_conntrack_cut(cut: iptables_firewall.ConntrackCut) -> int:
    """Run one ``conntrack -D`` filter; returns how many entries it deleted (0 on failure,
    which is logged: conntrack also exits 1 when nothing matched)."""
    try:
        proc = subprocess.run(cut.argv(), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        LOG.warning("conntrack cut not run (%s): %s", cut.why, err)
        return 0
    found = re.search(r"(\d+) flow entries have been deleted", proc.stderr)
    if found is None:
        LOG.warning("conntrack cut failed (%s): %s", cut.why, proc.stderr.strip())
        return 0
    return int(found.group(1))


def load_extras(engine) -> dict[int, desired.NetworkExtras]:
    """bridge / bridge_interface / dhcp_start of every network (set at creation, never changed)."""
    with db.read_transaction(engine) as session:
        return {nid: desired.NetworkExtras(bridge=br, bridge_interface=bi, dhcp_start=ds)
                for nid, br, bi, ds in session.execute(
                    select(models.Network.id, models.Network.bridge, models.Network.bridge_interface,
                           models.Network.dhcp_start))}


class ServerThread:
    """A packet server (``serve_forever(should_stop)``, ``close()``, optional ``alive()``) on
    a daemon thread of its own; the agent's poll restarts it when it has stopped."""

    def __init__(self, name: str, server):
        self.name = name
        self.server = server
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.server.serve_forever(self.stop.is_set)
        except Exception:  # the thread ends; the agent's next poll sees it and restarts it
            LOG.exception("%s stopped", self.name)

    def alive(self) -> bool:
        """Serving: its thread (and the server's own threads) are running."""
        return self.thread.is_alive() and getattr(self.server, "alive", lambda: True)()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2)
        self.server.close()


class RawDhcp(ServerThread):
    """sdn's DHCP responder (``dhcp_driver = scapy``) for one bridge's network, in a thread:
    one raw socket per VIF tap port on the bridge (``sdn.dhcp.rawsocket``: bound by chaddr and
    ingress port). ``interfaces`` is ``{tap name: {6-byte MAC: DhcpBinding}}``."""

    def __init__(self, bridge: str, interfaces, record):
        from sdn.dhcp.rawsocket import RawSocketServer

        self.bridge = bridge
        super().__init__(f"dhcp-{bridge}", RawSocketServer(interfaces, record))


class Agent:
    def __init__(self, conf, config_files: list[str], metrics: AgentMetrics | None = None):
        from sdn.state import StateSource

        self.conf = conf
        self.metrics = metrics if metrics is not None else AgentMetrics()
        self.config_files = [os.path.abspath(f) for f in config_files]
        self.state = StateSource.from_conf(conf)
        self.engine = self.state.engine
        self.networks_path = conf.networks_path
        os.makedirs(self.networks_path, exist_ok=True)
        # ip6tables always: security group rules of ethertype IPv6 (allowed address pairs,
        # link-local traffic) are enforced whether or not instances get IPv6 fixed addresses
        self.iptables = IptablesManager(conf.iptables_binary_name, use_ipv6=True, ebtables=True,
                                        lock_file=os.path.join(conf.lock_path, "sdn-iptables.lock"))
        self.ipset_prefix = iptables_firewall.ipset_prefix(conf.iptables_binary_name)
        #: the plan of the last successful reconcile (None until then): what conntrack cuts
        #: compare against
        self.last_plan: desired.HostPlan | None = None
        self.ipr = IPRoute()
        self.raw: dict[str, RawDhcp] = {}
        #: router advertisements and DHCPv6 (sdn.linux.ipv6_router), while a /64 has VIFs here
        self.ipv6_router: ServerThread | None = None
        self.vlan_error: str | None = None
        mode = conf.network_manager
        self.dhcp = mode != "flat"
        self.vlan_mode = mode == "vlan"
        #: this agent's network host name (config ``host``, as the controller's); empty: a
        #: compute host only (bridges, anti-spoofing, security groups for its VIFs)
        self.host = (conf.host or "").strip() or None
        #: a claim the database refused: the next poll reconciles (and claims) again
        self.claim_failed = False

    # -- one reconcile ------------------------------------------------------------------------

    def reconcile(self) -> list[str]:
        """Bring the host in line with state; returns the list of changes made."""
        view = self._claim(self.state.load())
        extras = load_extras(self.engine)
        present = interface.link_names(self.ipr)
        hosted = nethost.hosted_networks(view, self.host)
        plan = desired.plan(view, extras, self.conf, present_ports=present, dhcp=self.dhcp,
                            vlan_mode=self.vlan_mode, hosted=hosted)
        changes = interface.set_ip_forward() if hosted else []
        if plan.ipv6 is not None:       # before the bridges get their IPv6 addresses
            changes += interface.set_ipv6_forward()
        for b in plan.bridges:
            kw = dict(gateway_cidr=b.gateway_cidr, broadcast=b.broadcast, mac=b.mac,
                      gateway_v6=b.gateway_v6, released=b.released, foreign_mac=b.foreign_mac)
            if b.vlan:
                try:
                    changes += interface.ensure_vlan_bridge(self.ipr, b.vlan, b.name, b.vlan_parent, **kw)
                    continue
                except interface.VlanUnsupported as err:
                    if self.vlan_error != str(err):
                        LOG.error("%s; bridge %s is set up without its VLAN uplink", err, b.name)
                    self.vlan_error = str(err)
                    changes += interface.ensure_bridge(self.ipr, b.name, None, **kw)
                    continue
            changes += interface.ensure_bridge(self.ipr, b.name, b.interface, **kw)
        # nova's remove_floating_ip order: unbind the address, drop the NAT rules, then forget
        # the connections; binding goes the other way (rules first, then the address).
        floating = plan.floating or self.conf.public_interface in present
        unbound = self._floating_addresses(plan, add=False) if floating else []
        if plan.firewall.vifs:
            changes += interface.set_bridge_nf_call()
        # sets before the rules that match them; unused sets after the rules are gone
        changes += ipset.ensure(plan.firewall.ipsets, self.ipset_prefix)
        desired.fill_manager(self.iptables, plan)
        restored = self.iptables.apply()
        for table in restored:
            self.metrics.table_restores.labels(table).inc()
        changes += unbound + [f"restored {t}" for t in restored]
        changes += ipset.destroy_stale(plan.firewall.ipsets, self.ipset_prefix)
        # a VIF joins its bridge only once its security group chains are in place
        for port, bridge in sorted(plan.ports.items()):
            changes += interface.enslave(self.ipr, port, bridge)
        changes += tc.apply(tc.plan(view, present), present)   # bandwidth limits per VIF
        changes += self._cut_connections(plan, unbound)
        if floating:
            changes += self._floating_addresses(plan, remove=False)
        if plan.ipv6 is not None:
            v6 = plan.ipv6
            changes += interface.ensure_v6_public(self.ipr, v6.public_interface, v6.public_ip,
                                                  v6.gateway, v6.gateway_mac)
        changes += self._ipv6_router(plan)
        if self.dhcp:
            changes += self._dhcp(view, plan)
        self.last_plan = plan
        rules = collections.Counter(rule.family for rule in plan.rules)
        for family in ("ipv4", "ipv6", "eb"):
            self.metrics.rules.labels(family).set(rules.get(family, 0))
        return changes

    def _claim(self, view):
        """As the controller's claim thread: claim every network with a VIF and no network
        host for this one (nova's set_network_host; ``claim_networks`` is atomic, so of two
        racing network hosts one wins) and return the view as it is after the claim. A
        database that refuses the write postpones the claim to the next reconcile."""
        self.claim_failed = False
        if not nethost.networks_to_claim(view, self.host):
            return view
        try:
            claimed = self.state.manager.claim_networks(self.host)
        except Exception as err:  # noqa: BLE001 - locked or unreachable database: next poll
            self.metrics.database_errors.labels("claim").inc()
            LOG.warning("claiming networks postponed: %s", err)
            self.claim_failed = True
            return view
        for net in claimed:
            LOG.info("network %s (%s) claimed: this is its network host %s", net["label"],
                     net["cidr"], net["host"])
        return self.state.load() if claimed else view

    def _ipv6_router(self, plan) -> list[str]:
        """Start, update, restart (when dead) or stop the RA/DHCPv6 server of this host."""
        from sdn.linux.ipv6_router import Ipv6RouterServer

        ports = plan.ipv6.ports if plan.ipv6 is not None else {}
        current = self.ipv6_router
        if not ports:
            if current is None:
                return []
            current.close()
            self.ipv6_router = None
            return ["IPv6 router advertisements stopped"]
        if current is not None and current.alive():
            current.server.set_ports(ports)
            return []
        if current is not None:
            LOG.error("IPv6 router advertisement server had stopped; restarting it")
            current.close()
        self.ipv6_router = ServerThread("ipv6-router", Ipv6RouterServer(ports))
        return ["IPv6 router advertisements " + ("restarted" if current else "started")
                + f" on {len(ports)} ports"]

    def _cut_connections(self, plan, unbound: list[str]) -> list[str]:
        """After the iptables apply: delete the conntrack entries of what is no longer
        admitted (``iptables_firewall.conntrack_cuts``) and of floating IPs unbound from the
        public interface (also after an agent restart, when there is no previous plan)."""
        last = self.last_plan
        cuts = iptables_firewall.conntrack_cuts(
            last.firewall.vifs if last else None, plan.firewall.vifs, set(plan.ports),
            last.floating_map if last else None, plan.floating_map)
        for change in unbound:
            cuts += iptables_firewall.floating_cuts(change.split(" - ", 1)[1].split("/")[0])
        changes = []
        for cut in dict.fromkeys(cuts):
            deleted = run_conntrack_cut(cut)
            if deleted:
                changes.append(f"conntrack -D {' '.join(cut.args)}: {deleted} deleted ({cut.why})")
        return changes

    def _floating_addresses(self, plan, **direction) -> list[str]:
        bound = frozenset(self.last_plan.floating if self.last_plan else ())
        return interface.ensure_addresses(self.ipr, self.conf.public_interface, set(plan.floating),
                                          self.conf.floating_range, bound=bound, **direction)

    def _dhcp(self, view, plan) -> list[str]:
        changes = []
        if self.conf.dhcp_driver == "dnsmasq":
            script = dnsmasq.write_dhcp_script(self.networks_path, self.config_files)
            env = {"SDN_CONFIG_FILE": ",".join(self.config_files)}
            for spec in plan.dnsmasq:
                changes += dnsmasq.ensure(spec, self.networks_path, script, env, self.conf.dnsmasq_user,
                                          self.conf.dnsmasq_log)
            changes += dnsmasq.stop_others(self.networks_path, {s.bridge for s in plan.dnsmasq})
            return changes
        from sdn.dhcp.rawsocket import bindings_by_port

        # per VIF port, as the OpenFlow controller answers the ports of its switch: the VIFs
        # here are answered here, whichever network host routes their network (dnsmasq, on the
        # gateway address, runs on the network host only and reaches them over the uplink)
        wanted = {bridge: vif.network_id for vif in view.vifs
                  if (bridge := plan.ports.get(vif.port_name)) is not None}
        for bridge in list(self.raw):
            if bridge not in wanted:
                self.raw.pop(bridge).close()
                changes.append(f"raw DHCP on {bridge} stopped")
        for bridge, net_id in wanted.items():
            # the VIF ports present on this bridge, each answering only its own VIF
            interfaces = {port: bindings for port, bindings in bindings_by_port(view, [net_id]).items()
                          if plan.ports.get(port) == bridge}
            raw = self.raw.get(bridge)
            if raw is not None and not raw.alive():   # supervision: a dead server is replaced
                LOG.error("raw DHCP server on %s had stopped; restarting it", bridge)
                raw.close()
                self.raw[bridge] = RawDhcp(bridge, interfaces, self._record)
                changes.append(f"raw DHCP on {bridge} restarted")
            elif raw is not None:
                raw.server.set_interfaces(interfaces)
            else:
                self.raw[bridge] = RawDhcp(bridge, interfaces, self._record)
                changes.append(f"raw DHCP on {bridge} started")
        return changes

    def raw_dhcp_alive(self) -> bool:
        """Every raw DHCP server (``dhcp_driver = scapy``) is serving."""
        return all(raw.alive() for raw in self.raw.values())

    def ipv6_router_alive(self) -> bool:
        return self.ipv6_router is None or self.ipv6_router.alive()

    def _record(self, events) -> list:
        """Record lease events (one transaction); an error or None per event: the raw-socket
        server sends no ACK for a refused lease."""
        try:
            results = self.state.apply_lease_events(events)
        except Exception:
            self.metrics.database_errors.labels("lease_commit").inc()
            raise
        for event, err in zip(events, results):
            self.metrics.lease_events.labels(event.kind,
                                             "refused" if err is not None else "recorded").inc()
            if err is not None:
                LOG.warning("lease event %s %s %s not recorded: %s", event.kind, event.address,
                            event.mac, err)
        return results

    def dnsmasq_alive(self, plan_bridges: list[str]) -> bool:
        for bridge in plan_bridges:
            p = dnsmasq.paths(self.networks_path, bridge)
            if dnsmasq.running_pid(p["pid"], p["conf"]) is None:
                return False
        return True

    # -- the loop -----------------------------------------------------------------------------

    def run(self, once: bool = False) -> int:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        last_rev, last_links, last_timeout = None, None, 0.0
        interval = self.conf.agent_poll_interval
        while True:
            try:
                rev = self.state.revision()
                links = interface.link_names(self.ipr)
            except Exception as err:  # noqa: BLE001 - a database or netlink hiccup: next poll
                self.metrics.database_errors.labels("state_read").inc()
                LOG.warning("could not read state or links (retrying): %s", err)
                if once or stop.wait(interval):
                    return 1 if once else 0
                continue
            dhcp_ok = (not self.dhcp or (self.raw_dhcp_alive() if self.conf.dhcp_driver != "dnsmasq"
                                         else self.dnsmasq_alive(self._dnsmasq_bridges())))
            dhcp_ok = dhcp_ok and self.ipv6_router_alive()
            if rev != last_rev or links != last_links or not dhcp_ok or self.claim_failed:
                started = time.monotonic()
                try:
                    changes = self.reconcile()
                except RuntimeError as err:   # a command refused (iptables-restore, ipset, sysctl)
                    self._count_reconcile(started, "failed")
                    LOG.error("reconcile of revision %s failed (retrying at the next poll): %s", rev, err)
                    if once:
                        return 1
                    stop.wait(interval)
                    continue
                except Exception:  # noqa: BLE001 - log, retry at the next poll
                    self._count_reconcile(started, "failed")
                    LOG.exception("reconcile of revision %s failed; retrying", rev)
                    if once:
                        return 1
                    stop.wait(interval)
                    continue
                self._count_reconcile(started, "changed" if changes else "unchanged")
                LOG.info("reconciled revision %s: %s", rev, "; ".join(changes) if changes else "no changes")
                # the links seen *before* this reconcile: a port that appeared while it ran is
                # not in its plan, and must count as a change at the next poll
                last_rev, last_links = rev, links
            if once:
                return 0
            now = time.monotonic()
            if self.dhcp and now - last_timeout > 60:
                last_timeout = now
                try:
                    self.state.timeout_fixed_ips(time.time())
                    if self.conf.dhcp_driver != "dnsmasq":   # dnsmasq's own `del` does this
                        expired = self.state.expire_leases(time.time())
                        if expired:
                            LOG.info("leases expired without renewal: %s", ", ".join(expired))
                except Exception as err:  # noqa: BLE001 - locked database: next round
                    self.metrics.database_errors.labels("periodic_write").inc()
                    LOG.warning("periodic state writes postponed: %s", err)
            if stop.wait(interval):
                break
        for raw in self.raw.values():
            raw.close()
        if self.ipv6_router is not None:
            self.ipv6_router.close()
        LOG.info("agent stopped; the data plane stays as it is")
        return 0

    def _count_reconcile(self, started: float, outcome: str) -> None:
        self.metrics.reconcile_seconds.observe(time.monotonic() - started)
        self.metrics.reconciles.labels(outcome).inc()

    def _dnsmasq_bridges(self) -> list[str]:
        if not os.path.isdir(self.networks_path):
            return []
        return [n[4:-5] for n in os.listdir(self.networks_path) if n.startswith("sdn-") and n.endswith(".conf")]


def main(conf, config_files: list[str], once: bool = False) -> int:
    """``sdn agent`` (logging set up by ``sdn``: sdn.log). Metrics are served unless ``once``."""
    from sdn import metrics as sdn_metrics

    metrics = AgentMetrics()
    if not once:
        sdn_metrics.serve(metrics, conf.metrics.listen, conf.metrics.agent_port, "agent")
    return Agent(conf, config_files, metrics).run(once=once)

