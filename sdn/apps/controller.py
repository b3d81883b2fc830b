"""The sdn controller: a thin os-ken shell. Events in, compiled messages out.

- switch events (features, port list, port status, disconnect) and replies go to the switch's
  own sync unit (``sdn.apps.datapath.DatapathSync``), which does all OpenFlow work for it;
- packet-ins go to the feature whose flow punted them (``sdn.apps.packet_in``): DHCP
  (``sdn.apps.dhcp_punt``), IPv6 RS/NS-for-the-gateway and DHCPv6 (``sdn.apps.ipv6``), the
  external gateway's ARP/ND replies and ND for ``public_ip_v6`` (``sdn.apps.gateway``);
- state changes: a reader thread polls the state revision (it never writes) and asks every
  switch for an incremental sync; a maintenance thread does the periodic writes (fixed-IP
  disassociation, lease expiry), the gateway ARP/ND probes and unsolicited router
  advertisements, and tolerates a locked database.

What a switch must hold is decided by ``sdn.flows.compiler.compile_datapath``; the controller
imports no feature module. Dependencies come in through os-ken's ``_CONTEXTS`` (``sdn_deps``),
built by :func:`main` from the configuration.

Threads: os-ken's event thread (handlers below), one receive thread per switch (fastdp; DHCP
packet-ins are answered there), one sync worker per switch, the state reader, the maintenance
thread and the lease committer.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import (CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER,
                                       set_ev_cls)
from os_ken.ofproto import ofproto_v1_3 as ofp

from sdn.apps import fastdp, ofp_tls
from sdn.apps.datapath import FULL, INCREMENTAL, DatapathSync
from sdn.apps.dhcp_punt import DhcpLog, DhcpPunt, LeaseCommitter
from sdn.apps.gateway import GatewayLearner
from sdn.apps.ipv6 import Ipv6Services
from sdn.apps.acl_log import AclLog
from sdn.apps import mastership as roles
from sdn.apps.statefeed import datapath_affected, touched
from sdn.apps.packet_in import PacketInDispatch
from sdn.flows.compiler import Binding, CompileSettings, bind_ports
from sdn.flows.incremental import IncrementalCompiler
from sdn.flows.model import GENERATION_MASK, Desired, Feature, Table
from sdn.metrics import ControllerMetrics, dpid_label
from sdn.nethost import networks_to_claim
from sdn.state import StateSource
from sdn.view import StateView

LOG = logging.getLogger("sdn.controller")


@dataclass
class ControllerDeps:
    """What the controller app needs, built by :func:`main` (os-ken context ``sdn_deps``).

    Intervals in seconds: ``poll_interval`` between state revision reads, ``maintenance_interval``
    between periodic writes (disassociation, lease expiry), ``audit_interval`` between a quiet
    switch's drift audits, ``reply_timeout`` for a switch's reply, ``echo_interval`` between
    OpenFlow echo requests (a switch missing ``echo_misses`` of them in a row is dropped).
    ``metrics`` counts what the controller does (``sdn.metrics``; its registry is what the
    metrics endpoint serves); ``dhcp_log_interval`` is the least time between two INFO lines
    about one DHCP client's outcome.
    """

    state: StateSource | None = None
    settings: CompileSettings = field(default_factory=CompileSettings)
    trunk_names: frozenset[str] = frozenset()
    relay_names: frozenset[str] = frozenset()
    public_name: str | None = None
    ovsdb_connection: str | None = None
    packet_in: PacketInDispatch = field(default_factory=PacketInDispatch)
    poll_interval: float = 0.1
    #: SQLite: seconds between looks at the database file's size and time (``StateSource.
    #: write_marker``, two stat calls); a change reads the revision at once
    watch_interval: float = 0.005
    maintenance_interval: float = 10.0
    audit_interval: float = 1.0
    reply_timeout: float = 15.0
    echo_interval: float = 1.0
    echo_misses: int = 3
    metrics: ControllerMetrics = field(default_factory=ControllerMetrics)
    dhcp_log_interval: float = 10.0
    #: several controllers (``sdn.apps.mastership``): the deployment lease; None: this
    #: controller is alone and always writes (EQUAL role)
    mastership: roles.Mastership | None = None
    #: the deployment lease for the periodic jobs when ``mastership`` is a mastership group's
    #: (``[ovs] mastership_group``); None: ``mastership`` is the deployment lease (or no roles)
    periodic: roles.Mastership | None = None
    #: PostgreSQL URL to LISTEN on for state notifications (``sdn.db.changes.Listener``);
    #: None: poll only (SQLite)
    listen_url: str | None = None


#: a compile that changed at least this many flows leaves them to the permanent generation of
#: the garbage collector (gc.freeze): they live until the next such compile, and at 10k VIFs
#: (~400k flows, millions of objects) every full collection walking them cost seconds of
#: port-up latency (benchmarks/bench_portup.py)
FREEZE_AFTER_FLOWS = 10_000


def _freeze_after_bulk(desired: Desired) -> None:
    changed = getattr(getattr(desired.flows, "flow_index", None), "changed", None)
    if changed is not None and len(changed) >= FREEZE_AFTER_FLOWS:
        gc.collect(1)        # young garbage first: what is frozen is never collected
        gc.freeze()


class SdnController(app_manager.OSKenApp):
    """The os-ken app: wires switch events to sync units and packet-ins to features."""

    OFP_VERSIONS = [ofp.OFP_VERSION]
    _CONTEXTS = {"sdn_deps": ControllerDeps}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        deps: ControllerDeps = kwargs["sdn_deps"]
        self.deps = deps
        self.state: StateSource = deps.state
        self.view: StateView = self.state.load()
        self.units: dict[int, DatapathSync] = {}
        self.bindings: dict[int, Binding] = {}
        self._compilers: dict[int, IncrementalCompiler] = {}
        self._generation = int(time.time() * 1000) & GENERATION_MASK
        self._generation_lock = threading.Lock()
        self._ovs = None
        self._ovs_lock = threading.Lock()
        self.gateway = GatewayLearner(deps.settings.router, self._public_ports,
                                      lambda: self._request_all(INCREMENTAL))
        self.metrics = deps.metrics
        self.committer = LeaseCommitter(self.state.apply_lease_events, self.state.leased(),
                                        metrics=deps.metrics,
                                        log=DhcpLog(deps.dhcp_log_interval))
        self.dhcp = DhcpPunt(lambda: self.view, self._binding, self.committer)
        deps.packet_in.on_fast(Feature.DHCP, self._if_master(self.dhcp.on_packet_in, b""))
        deps.packet_in.on_slow(Feature.ROUTER, self._if_master(self.gateway.on_packet_in))
        self.ipv6 = Ipv6Services(lambda: self.view, self._binding)
        deps.packet_in.on_fast(Feature.ND, self._if_master(self.ipv6.on_nd, b""))
        deps.packet_in.on_fast(Feature.DHCPV6, self._if_master(self.ipv6.on_dhcpv6, b""))
        self.acl_log = AclLog(self._port_owner)
        deps.packet_in.on_slow(Feature.SECURITY_GROUPS, self.acl_log.on_packet_in)
        self._wake = threading.Event()
        self.feed_stats = {"reloads": 0, "requested": 0, "skipped": 0}
        if deps.listen_url:
            from sdn.db.changes import Listener
            Listener(deps.listen_url, lambda _revision: self._wake.set()).start()
        if deps.mastership is not None:
            deps.mastership.on_change = lambda master, term: self._request_all(FULL)
            deps.mastership.start()
        if deps.periodic is not None:
            deps.periodic.start()
        self._claim_due = threading.Event()
        for target in (self._poll_loop, self._maintenance_loop, self._claim_loop):
            threading.Thread(target=target, name=target.__name__, daemon=True).start()

    # ---- compilation, per switch ------------------------------------------------------------

    def _compile(self, dpid: int, ports: dict[str, int], flow_sink=None) -> Desired:
        view = self.view
        binding = bind_ports(view, ports, self.deps.trunk_names, self.deps.public_name,
                             self.deps.relay_names)
        self.bindings[dpid] = binding
        settings = dataclasses.replace(self.deps.settings, router=self.gateway.settings())
        # one incremental compiler per switch (sdn.flows.incremental: equal to
        # compile_datapath, recompiling only the VIFs and networks whose views changed);
        # what it recompiles streams into the sync's open bundle (``flow_sink``)
        compiler = self._compilers.setdefault(dpid, IncrementalCompiler())
        desired = compiler.compile(view, binding, settings, flow_sink)
        _freeze_after_bulk(desired)
        return desired

    def _next_generation(self) -> int:
        with self._generation_lock:
            self._generation = (self._generation + 1) & GENERATION_MASK
            if self.deps.mastership is not None:   # the term above the sync count
                return roles.generation(self.deps.mastership.term, self._generation)
            return self._generation

    # ---- several controllers (sdn.apps.mastership) ---------------------------------------------

    def _master(self) -> bool:
        """MASTER on the switches (or alone): answers packet-ins."""
        return self.deps.mastership is None or self.deps.mastership.switch_master

    def _periodic_runner(self) -> bool:
        """Holds a valid deployment lease (or alone): runs the periodic jobs."""
        lease = self.deps.periodic or self.deps.mastership
        return lease is None or lease.is_master()

    def _if_master(self, handler, otherwise=None):
        """``handler`` for the master only: a slave answers no packet-in (a switch sends
        slaves none, but a connection is EQUAL until its role request)."""
        return lambda *args: handler(*args) if self._master() else otherwise

    def _foreign_generation(self, gen: int) -> bool:
        m = self.deps.mastership
        return m is not None and roles.newer_term(gen, m.term)

    def _binding(self, dpid: int) -> Binding | None:
        """This switch's binding; a slave never compiled, so it binds on first use (the first
        DHCP packet-in after a takeover may come before the full sync's compile)."""
        binding = self.bindings.get(dpid)
        unit = self.units.get(dpid)
        if binding is None and unit is not None and unit.ports_known:
            binding = bind_ports(self.view, dict(unit.ports), self.deps.trunk_names,
                                 self.deps.public_name, self.deps.relay_names)
        return binding

    def _port_owner(self, dp, port: int | None) -> str | None:
        """The instance whose VIF is ``port`` of ``dp`` (None for a trunk, unknown port)."""
        binding = self.bindings.get(getattr(dp, "id", None))
        vif = binding.vifs.get(port) if binding and port is not None else None
        return vif.instance if vif else None

    def _public_ports(self):
        return [(unit.dp, self.bindings[dpid].public_port) for dpid, unit in list(self.units.items())
                if dpid in self.bindings and self.bindings[dpid].public_port]

    def _request_all(self, kind: str) -> None:
        for unit in list(self.units.values()):
            unit.request(kind)

    def _name_tables(self, dpid: int) -> None:
        """Give the pipeline's tables their names in OVSDB (``dump-flows --names`` shows
        ``table=port_security``). Only possible for bridges on this host; best effort."""
        if not self.deps.ovsdb_connection:
            return
        try:
            from sdn.ovs import Ovs
            with self._ovs_lock:    # sync workers of several switches may get here at once
                self._ovs = self._ovs or Ovs(self.deps.ovsdb_connection, tables=Ovs.BRIDGE_TABLES)
            bridge = self._ovs.bridge_by_datapath_id(dpid)
            if bridge:
                self._ovs.name_tables(bridge, {int(t): t.label for t in Table})
        except Exception as err:  # a remote switch or no OVSDB access: flows work without names
            LOG.info("could not name tables of datapath %016x: %s", dpid, err)

    # ---- switch lifecycle -------------------------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _on_features(self, ev):
        dp = ev.msg.datapath
        if dp.id is None:    # os-ken's ofp_handler sets it on its own app thread: maybe not yet
            dp.id = ev.msg.datapath_id
        LOG.info("datapath %016x connected", dp.id)
        old = self.units.get(dp.id)
        if old is not None:      # a new connection of the same datapath replaces the old one
            old.close()
        self.units[dp.id] = DatapathSync(
            dp, lambda ports, flow_sink=None, dpid=dp.id: self._compile(dpid, ports, flow_sink),
            self._next_generation, streaming=True,
            name_tables=self._name_tables, reply_timeout=self.deps.reply_timeout,
            audit_interval=self.deps.audit_interval, metrics=self.metrics,
            role=self.deps.mastership.role if self.deps.mastership is not None else None,
            foreign_generation=self._foreign_generation)
        self.metrics.connections.labels(dpid_label(dp.id)).inc()
        self.metrics.datapaths.set(len(self.units))
        dp.send_msg(dp.ofproto_parser.OFPPortDescStatsRequest(dp, 0))

    def _unit(self, msg) -> DatapathSync | None:
        unit = self.units.get(msg.datapath.id)
        return unit if unit is not None and unit.dp is msg.datapath else None

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    def _on_port_desc(self, ev):
        unit = self._unit(ev.msg)
        if unit is None:
            return
        unit.ports.update({p.name.decode(): p.port_no for p in ev.msg.body
                           if p.port_no < ofp.OFPP_MAX})
        if not ev.msg.flags & ofp.OFPMPF_REPLY_MORE:
            unit.set_ports(unit.ports)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _on_port_status(self, ev):
        unit = self._unit(ev.msg)
        if unit is None:
            return
        desc, name = ev.msg.desc, ev.msg.desc.name.decode()
        deleted = ev.msg.reason == ofp.OFPPR_DELETE
        LOG.info("datapath %016x port %s %s", unit.dpid, name,
                 {ofp.OFPPR_ADD: "added", ofp.OFPPR_DELETE: "deleted"}.get(ev.msg.reason,
                                                                         "modified"))
        if deleted or desc.port_no < ofp.OFPP_MAX:
            unit.port_changed(name, None if deleted else desc.port_no)

    @set_ev_cls(ofp_event.EventOFPStateChange, DEAD_DISPATCHER)
    def _on_dead(self, ev):
        dp = ev.datapath
        unit = self.units.get(dp.id) if dp.id is not None else None
        if unit is not None and unit.dp is dp:
            LOG.info("datapath %016x disconnected; its flows stay (fail_mode secure)", dp.id)
            del self.units[dp.id]
            self.bindings.pop(dp.id, None)
            unit.close()
            self.metrics.datapaths.set(len(self.units))
            self.metrics.forget_datapath(dp.id)

    # ---- replies: to the switch's own unit ----------------------------------------------------

    @set_ev_cls([ofp_event.EventOFPFlowStatsReply, ofp_event.EventOFPMeterConfigStatsReply,
                 ofp_event.EventOFPGroupDescStatsReply, ofp_event.EventOFPAggregateStatsReply],
                MAIN_DISPATCHER)
    def _on_multipart(self, ev):
        unit = self._unit(ev.msg)
        if unit is not None:
            unit.on_reply(ev.msg.xid, ev.msg.body, bool(ev.msg.flags & ofp.OFPMPF_REPLY_MORE))

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _on_barrier(self, ev):
        unit = self._unit(ev.msg)
        if unit is not None:
            unit.on_barrier(ev.msg.xid)

    @set_ev_cls(ofp_event.EventOFPRoleReply, MAIN_DISPATCHER)
    def _on_role_reply(self, ev):
        unit = self._unit(ev.msg)
        if unit is not None:
            unit.on_role_reply(ev.msg.xid)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _on_error(self, ev):
        msg = ev.msg
        unit = self._unit(msg)
        if unit is not None:   # experimenter errors (e.g. ONF bundle failures) carry exp_type
            code = msg.code if msg.code is not None else getattr(msg, "exp_type", None)
            unit.on_error(msg.xid, msg.type, code)

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _on_packet_in(self, ev):
        msg = ev.msg
        if not self._master():
            return
        self.deps.packet_in.slow(msg.datapath, msg.cookie, msg.match.get("in_port"), msg.data)

    # ---- state: read often, write rarely -------------------------------------------------------

    def _poll_loop(self):
        """Reads only: the revision, and the view when it changed; switches whose state did
        not change (the change feed says so) are not recompiled. A PostgreSQL notification
        wakes it at once; polling stays as the safety net."""
        revision = self.view.revision
        failing = False
        wait = self.deps.poll_interval if not self.deps.listen_url else max(
            1.0, self.deps.poll_interval)
        marker = self.state.write_marker
        mark, read_at = marker(), time.monotonic()
        while True:
            if mark is None:
                self._wake.wait(wait)
            else:   # SQLite: a commit changes the file or its log; read when it did (or every wait)
                while not self._wake.wait(self.deps.watch_interval):
                    now, previous = marker(), mark
                    mark = now
                    if now != previous or time.monotonic() - read_at >= wait:
                        break
                read_at = time.monotonic()
            self._wake.clear()
            try:
                current = self.state.revision()
                if current != revision:
                    view, feed = self.state.refresh(self.view)
                    self.view, revision = view, view.revision
                    # an empty feed for a new revision: a change the recorder did not see (every switch)
                    self._request_changed(None if not feed else touched(feed))
                    self._claim_due.set()
                if failing:
                    LOG.warning("state readable again")
                failing = False
            except Exception as err:  # a database hiccup must not kill the reader
                self.metrics.database_errors.labels("state_read").inc()
                if not failing:
                    LOG.warning("state read failed (retrying every %.1fs): %s",
                                self.deps.poll_interval, err)
                failing = True

    # ---- network hosts: claim networks as nova's set_network_host did -------------------------

    def _unclaimed(self) -> list[int]:
        """Networks with a VIF and no network host, when this controller is a network host
        (router settings with a host, and a connected switch with the public port)."""
        router = self.deps.settings.router
        if router is None or not self._public_ports():
            return []
        return networks_to_claim(self.view, router.host)

    def _claim_loop(self):
        """Claims every network that has a VIF and no host for this network host (woken by
        the reader when such a network appears, else checked every second). A network another
        network host claimed first stays its (``claim_networks`` is atomic)."""
        while True:
            self._claim_due.wait(1.0)
            self._claim_due.clear()
            if not self._unclaimed():
                continue
            try:
                for net in self.state.manager.claim_networks(self.deps.settings.router.host):
                    LOG.info("network %s (%s) claimed: this is its network host %s", net["label"],
                             net["cidr"], net["host"])
            except Exception as err:   # locked or unreachable database: next round
                LOG.warning("claiming networks postponed: %s", err)

    def _request_changed(self, networks: set[int] | None) -> None:
        """Incremental syncs for the switches the changes concern (``sdn.apps.statefeed``)."""
        self.feed_stats["reloads"] += 1
        remote_groups = any(rule.remote_group is not None
                            for group in self.view.security_groups.values()
                            for rule in group.rules)
        concerned = 0
        units = list(self.units.items())
        for dpid, unit in units:
            if datapath_affected(self.bindings.get(dpid), unit.ports, networks,
                                 remote_groups=remote_groups):
                concerned += 1
                unit.request(INCREMENTAL)
        self.feed_stats["requested"] += concerned
        self.feed_stats["skipped"] += len(units) - concerned
        if concerned < len(units):
            LOG.info("revision %d: changes confined to networks %s concern %d of %d switches",
                     self.view.revision, sorted(networks or ()), concerned, len(units))

    def _switch_maintenance(self, now: float) -> None:
        """What only the switches' master sends: gateway ARP/ND probes, router advertisements."""
        try:
            self.gateway.probe(now)
        except Exception as err:
            LOG.warning("external gateway probe failed: %s", err)
        try:
            self.ipv6.advertise([(unit.dp, self.bindings.get(dpid))
                                 for dpid, unit in list(self.units.items())],
                                time.monotonic())
        except Exception as err:
            LOG.warning("router advertisements failed: %s", err)

    def _maintenance_loop(self):
        """Periodic writes on their own thread, so a locked database delays only them; with
        several controllers only the master's (one per deployment)."""
        last_write = float("-inf")
        runner = False
        while True:
            time.sleep(1.0)
            lease = self.deps.periodic or self.deps.mastership
            if self._periodic_runner() != runner and lease is not None:
                runner = not runner
                LOG.info("periodic jobs (disassociation, lease expiry) %s (term %d)",
                         "run here from now on" if runner else "stopped here", lease.term)
            now = time.time()
            if self._master():
                self._switch_maintenance(now)
            if now - last_write < self.deps.maintenance_interval or not self._periodic_runner():
                continue
            last_write = now
            try:
                self.state.timeout_fixed_ips(now)
                self.state.prune_changes()
                expired = self.state.expire_leases(now, self.committer.pending_addresses())
                if expired:
                    LOG.info("leases expired without renewal: %s", ", ".join(expired))
                    self.committer.forget(expired)
            except Exception as err:   # locked or unreachable database: next round
                self.metrics.database_errors.labels("periodic_write").inc()
                LOG.warning("periodic state writes postponed: %s", err)


def main(conf) -> int:
    """Run the controller in-process (os-ken no longer ships osken-manager).

    ``conf`` is sdn's oslo.config ConfigOpts. Returns only on SIGTERM/SIGINT; the switches
    keep their flows (fail_mode secure) and a restarted controller resyncs without a wipe.
    """
    from os_ken import cfg as osken_cfg

    from sdn.flows.context import RouterSettings

    # logging: sdn.log.setup (oslo.log), done by ``sdn`` for its services
    router = None
    if conf.routing_source_ip:
        router = RouterSettings(
            routing_source_ip=conf.routing_source_ip, external_gateway=conf.external_gateway,
            external_gateway_mac=conf.external_gateway_mac, public_vlan=conf.public_vlan,
            metadata_host=conf.metadata_host, metadata_port=conf.metadata_port,
            dmz_cidrs=tuple(conf.dmz_cidr), public_ip_v6=conf.public_ip_v6,
            external_gateway_v6=conf.external_gateway_v6,
            external_gateway_v6_mac=conf.external_gateway_v6_mac, host=conf.host)
    metrics = ControllerMetrics()
    state = StateSource.from_conf(conf)
    deps = ControllerDeps(
        metrics=metrics, packet_in=PacketInDispatch(metrics),
        state=state, mastership=mastership_from_conf(conf, state.engine),
        periodic=mastership_from_conf(conf, state.engine, periodic=True),
        listen_url=_listen_url(conf.database.connection),
        settings=CompileSettings(dhcp_rate_pps=conf.ovs.dhcp_rate_limit or None,
                                 relay_rate_pps=conf.ovs.dhcp_relay_rate_limit or None,
                                 router=router,
                                 acl_log_rate_pps=conf.ovs.acl_log_rate_limit or None),
        trunk_names=frozenset(conf.ovs.trunk_interfaces),
        relay_names=frozenset(conf.ovs.dhcp_relay_interfaces),
        public_name=conf.public_interface, ovsdb_connection=conf.ovs.ovsdb_connection,
        echo_misses=conf.ovs.echo_misses)
    osken_cfg.CONF(args=ofp_tls.osken_listen_args(conf.ovs), project="os_ken")
    # os-ken sends no echo requests by default (0 misses allowed = off): a switch that stops
    # answering would stay registered until TCP gives up
    osken_cfg.CONF.set_override("echo_request_interval", deps.echo_interval)
    osken_cfg.CONF.set_override("maximum_unreplied_echo_requests", deps.echo_misses)

    def _stop(signum, _frame):
        LOG.info("signal %d: controller exiting, flows stay on the switches", signum)
        for lease in (deps.mastership, deps.periodic):    # a peer takes over at its next round
            if lease is not None:
                lease.stop(release=True)
        logging.shutdown()
        os._exit(0)  # os-ken's native-thread apps are non-daemon; do not wait for them

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    LOG.info("listening for OpenFlow 1.3 on %s:%d%s", conf.ovs.ofp_listen_host,
             conf.ovs.ofp_tcp_listen_port, " (TLS)" if ofp_tls.tls_enabled(conf.ovs) else "")
    fastdp.install(deps.packet_in.fast)
    if ofp_tls.tls_enabled(conf.ovs):
        ofp_tls.install()
    from sdn import metrics as sdn_metrics

    sdn_metrics.serve(metrics, conf.metrics.listen, conf.metrics.controller_port, "controller")
    run(deps)
    return 0


def mastership_from_conf(conf, engine, periodic: bool = False) -> roles.Mastership | None:
    """This controller's lease (``[ovs] mastership_lease`` seconds, 0: roles off), named
    ``[ovs] controller_id`` (default ``<hostname>:<OpenFlow port>``).

    Without ``[ovs] mastership_group`` one lease, the deployment's, makes its holder MASTER of
    every switch and the runner of the periodic jobs. With a group (the controllers of one
    network host that serve only that host's switches), the switch roles come from the group's
    lease and the periodic jobs from the deployment lease (``periodic=True``; None without a
    group: the switch lease is the deployment lease)."""
    import socket

    from sdn.db import leader

    length = conf.ovs.mastership_lease
    group = conf.ovs.mastership_group
    if not length or (periodic and not group):
        return None
    name = roles.DEPLOYMENT if periodic or not group else roles.group_lease(group)
    me = conf.ovs.controller_id or f"{socket.gethostname()}:{conf.ovs.ofp_tcp_listen_port}"
    return roles.Mastership(
        lambda name, decide: leader.lease_round(engine, name, decide, lock_wait=length / 3),
        lambda name, holder, incarnation: leader.release(engine, name, holder, incarnation),
        me, length=length, name=name, holder_lock=leader.holder_lock(engine, name))


def _listen_url(url: str) -> str | None:
    """``url`` if it is PostgreSQL and psycopg is installed (LISTEN/NOTIFY), else None."""
    from sqlalchemy.engine import make_url
    if make_url(url).get_backend_name() != "postgresql":
        return None
    try:
        import psycopg  # noqa: F401
    except ImportError:
        LOG.warning("psycopg is not installed: state changes are polled, not notified")
        return None
    return url


def run(deps: ControllerDeps) -> None:
    """os-ken's ``AppManager.run_apps`` with ``deps`` as the ``sdn_deps`` context."""
    from os_ken.lib import hub

    manager = app_manager.AppManager.get_instance()
    manager.load_apps(["sdn.apps.controller"])
    contexts = manager.create_contexts()
    contexts["sdn_deps"] = deps
    services = manager.instantiate_apps(**contexts)
    try:
        hub.joinall(services)
    finally:
        manager.close()
