"""The sdn controller: a thin os-ken shell around pure compilation and DHCP decisions.

Events in (switch connect, port changes, packet-in, state revision changes), OpenFlow messages
out. All decisions live elsewhere: flows in ``sdn.flows`` (compile + reconcile plan), DHCP in
``sdn.dhcp.server``, state in ``sdn.db``. Syncs run on one worker thread because they wait for
switch replies, which the os-ken event loop delivers.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import (CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER,
                                       set_ev_cls)
from os_ken.ofproto import ofproto_v1_3 as ofp

from sdn.apps import fastdp, ofmsgs
from sdn.state import StateSource
from sdn.dhcp.relay import RelayBindings, request_fields, with_tag
from sdn.dhcp.server import DhcpBinding, DhcpResponder
from sdn.flows import dhcp as dhcp_flows
from sdn.flows import reconcile, router
from sdn.flows.compiler import Binding, bind_ports, compile_datapath
from sdn.flows.model import COOKIE_APP, GENERATION_MASK, Feature, Flow, Table
from sdn.view import StateView

LOG = logging.getLogger("sdn.controller")

#: Settings handed from main() to the app instance os-ken creates (os-ken builds apps itself).
_SETTINGS: dict = {}

REPLY_TIMEOUT = 15.0      # seconds to wait for a flow-stats or barrier reply
POLL_INTERVAL = 0.1       # seconds between state revision checks (one-row read)
DISASSOCIATE_INTERVAL = 10.0
ARP_RETRY = 2.0           # seconds between ARPs for the external gateway until it answers
ARP_REFRESH = 60.0        # ... and between refreshes once known


@dataclass
class Switch:
    """What the controller knows about one connected datapath."""

    dp: object
    ports: dict[str, int] = field(default_factory=dict)     # port name -> ofport
    ports_known: bool = False
    generation: int = 0
    installed: dict[tuple, Flow] = field(default_factory=dict)
    meters: dict[int, int | None] = field(default_factory=dict)   # sdn meter id -> pps
    binding: Binding = field(default_factory=lambda: Binding({}, ()))
    synced: bool = False


class _Waiter:
    """Collects replies for one xid and wakes the waiting worker thread."""

    def __init__(self):
        self.event = threading.Event()
        self.body: list = []              # multipart reply entries, all parts
        self.errors: list[str] = []


class SdnController(app_manager.OSKenApp):
    OFP_VERSIONS = [ofp.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.state: StateSource = _SETTINGS["state"]
        _SETTINGS["app"] = self
        self.trunk_names = frozenset(_SETTINGS.get("trunk_names", ()))
        self.dhcp_rate_pps = _SETTINGS.get("dhcp_rate_pps")
        self.relay_names = frozenset(_SETTINGS.get("relay_names", ()))
        self.relay_rate_pps = _SETTINGS.get("relay_rate_pps")
        self.public_name = _SETTINGS.get("public_interface")
        self.router_base: router.RouterSettings | None = _SETTINGS.get("router")
        self.learned_gateway_mac: str | None = None
        self._last_arp = 0.0
        self.switches: dict[int, Switch] = {}
        self.view: StateView = self.state.load()
        self._relay_bindings: tuple[StateView, RelayBindings] | None = None
        self.responder = DhcpResponder()
        self._work: queue.Queue = queue.Queue()
        self._waiters: dict[int, _Waiter] = {}
        self._lock = threading.Lock()
        self._bundle_ids = itertools.count(1)
        # A fresh generation per controller start: any flow from an earlier run is stale
        # after this run's first full sync.
        self._generation = int(time.time() * 1000) & GENERATION_MASK
        self._lease_events: queue.Queue = queue.Queue()
        self._ovsdb_connection = _SETTINGS.get("ovsdb_connection")
        self._ovs = None
        for target in (self._sync_loop, self._poll_loop, self._lease_loop):
            threading.Thread(target=target, name=target.__name__, daemon=True).start()

    # ---- switch lifecycle ---------------------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _on_features(self, ev):
        dp = ev.msg.datapath
        LOG.info("datapath %016x connected", dp.id)
        with self._lock:
            self.switches[dp.id] = Switch(dp)
        dp.send_msg(dp.ofproto_parser.OFPPortDescStatsRequest(dp, 0))

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    def _on_port_desc(self, ev):
        sw = self.switches.get(ev.msg.datapath.id)
        if sw is None:
            return
        for port in ev.msg.body:
            if port.port_no < ofp.OFPP_MAX:
                sw.ports[port.name.decode()] = port.port_no
        if not ev.msg.flags & ofp.OFPMPF_REPLY_MORE:
            sw.ports_known = True
            self._work.put((sw.dp.id, "full"))

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _on_port_status(self, ev):
        sw = self.switches.get(ev.msg.datapath.id)
        if sw is None:
            return
        desc, name = ev.msg.desc, ev.msg.desc.name.decode()
        if ev.msg.reason == ofp.OFPPR_DELETE:
            sw.ports.pop(name, None)
        elif desc.port_no < ofp.OFPP_MAX:
            sw.ports[name] = desc.port_no
        LOG.info("datapath %016x port %s %s", sw.dp.id, name,
                 {ofp.OFPPR_ADD: "added", ofp.OFPPR_DELETE: "deleted"}.get(ev.msg.reason,
                                                                         "modified"))
        self._work.put((sw.dp.id, "incremental"))

    @set_ev_cls(ofp_event.EventOFPStateChange, DEAD_DISPATCHER)
    def _on_dead(self, ev):
        dp = ev.datapath
        if dp.id is not None and self.switches.get(dp.id, Switch(None)).dp is dp:
            LOG.info("datapath %016x disconnected; its flows stay (fail_mode secure)", dp.id)
            with self._lock:
                self.switches.pop(dp.id, None)

    # ---- replies ------------------------------------------------------------------------

    @set_ev_cls([ofp_event.EventOFPFlowStatsReply, ofp_event.EventOFPMeterConfigStatsReply],
                MAIN_DISPATCHER)
    def _on_multipart(self, ev):
        waiter = self._waiters.get(ev.msg.xid)
        if waiter:
            waiter.body += ev.msg.body
            if not ev.msg.flags & ofp.OFPMPF_REPLY_MORE:
                waiter.event.set()

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _on_barrier(self, ev):
        waiter = self._waiters.get(ev.msg.xid)
        if waiter:
            waiter.event.set()

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _on_error(self, ev):
        msg = ev.msg
        LOG.error("datapath %016x rejected xid %s: type %s code %s", msg.datapath.id, msg.xid,
                  msg.type, msg.code)
        for waiter in self._waiters.values():
            waiter.errors.append(f"type {msg.type} code {msg.code}")

    def _request(self, dp, msg) -> _Waiter:
        """Send ``msg`` and wait for its reply (flow stats or barrier) on the worker thread."""
        waiter = _Waiter()
        dp.set_xid(msg)
        self._waiters[msg.xid] = waiter
        try:
            dp.send_msg(msg)
            if not waiter.event.wait(REPLY_TIMEOUT):
                raise TimeoutError(f"datapath {dp.id:016x} did not answer xid {msg.xid}")
        finally:
            self._waiters.pop(msg.xid, None)
        return waiter

    # ---- flow programming ---------------------------------------------------------------

    def _sync_loop(self):
        while True:
            dpid, kind = self._work.get()
            pending = {(dpid, kind)}
            while not self._work.empty():      # coalesce bursts of changes
                pending.add(self._work.get_nowait())
            for dpid, kind in sorted(pending, key=lambda p: p[1] != "full"):
                if kind == "incremental" and (dpid, "full") in pending:
                    continue
                try:
                    self._sync(dpid, full=(kind == "full"))
                except Exception:  # one datapath's failure must not stop the others
                    LOG.exception("sync of datapath %016x failed", dpid)

    def _sync(self, dpid: int, full: bool):
        sw = self.switches.get(dpid)
        if sw is None or not sw.ports_known:
            return
        if not full and not sw.synced:
            full = True
        dp = sw.dp
        sw.binding = bind_ports(self.view, dict(sw.ports), self.trunk_names, self.public_name,
                                self.relay_names)
        desired = reconcile.index(compile_datapath(self.view, sw.binding, self.dhcp_rate_pps,
                                                   self.router_settings(), self.relay_rate_pps))
        meters = {**dhcp_flows.compile_meters(sw.binding.vifs, self.dhcp_rate_pps),
                  **dhcp_flows.compile_meters(sw.binding.relays, self.relay_rate_pps)}
        started = time.monotonic()
        if full:
            self._name_tables(dpid)
            self._generation = (self._generation + 1) & GENERATION_MASK
            sw.generation = self._generation
            stats = self._request(dp, ofmsgs.sdn_flow_stats_request(dp)).body
            plan = reconcile.plan_full(desired, [s.cookie for s in stats], sw.generation)
            sw.meters = {c.meter_id: c.bands[0].rate if c.bands else None
                         for c in self._request(dp, ofmsgs.meter_config_request(dp)).body
                         if dhcp_flows.is_sdn_meter(c.meter_id)}
        else:
            plan = reconcile.plan_incremental(sw.installed, desired)
        meter_plan = reconcile.plan_meters(sw.meters, meters)
        self._send_meters(dp, meter_plan.add, ofp.OFPMC_ADD)
        self._send_meters(dp, meter_plan.modify, ofp.OFPMC_MODIFY)
        if plan:
            self._send_plan(dp, plan, sw.generation)
        sw.installed = desired
        self._send_meters(dp, dict.fromkeys(meter_plan.delete, 0), ofp.OFPMC_DELETE)
        sw.meters = dict(meters)
        sw.synced = True
        LOG.info("datapath %016x %s sync: %d added, %d deleted, %d stale cookies, gen %d, "
                 "%d flows, %.3fs", dpid, "full" if full else "incremental", len(plan.adds),
                 len(plan.deletes), len(plan.stale_cookies), sw.generation, len(desired),
                 time.monotonic() - started)

    def _name_tables(self, dpid: int) -> None:
        """Give the pipeline's tables their names in OVSDB (``dump-flows --names`` shows
        ``table=port-security``). Only possible for bridges on this host; best effort."""
        if not self._ovsdb_connection:
            return
        try:
            from sdn.ovs import Ovs
            self._ovs = self._ovs or Ovs(self._ovsdb_connection, tables=Ovs.BRIDGE_TABLES)
            bridge = self._ovs.bridge_by_datapath_id(dpid)
            if bridge:
                self._ovs.name_tables(bridge, {int(t): t.label for t in Table})
        except Exception as err:  # a remote switch or no OVSDB access: flows work without names
            LOG.info("could not name tables of datapath %016x: %s", dpid, err)

    def _send_meters(self, dp, meters: dict[int, int], command: int):
        """Meter mods (not bundleable in OVS), confirmed by a barrier before flows use them."""
        if not meters:
            return
        for meter_id, rate in sorted(meters.items()):
            dp.send_msg(ofmsgs.meter_mod(dp, meter_id, rate, command))
        waiter = self._request(dp, dp.ofproto_parser.OFPBarrierRequest(dp))
        if waiter.errors:
            raise RuntimeError(f"datapath {dp.id:016x} rejected meter mods: {waiter.errors[:3]}")

    def _send_plan(self, dp, plan: reconcile.Plan, generation: int):
        """Apply ``plan`` atomically in one bundle, then wait for a barrier."""
        bundle_id = next(self._bundle_ids) & 0xFFFFFFFF
        # struct-packed bundle-adds (byte-equal to os-ken's, see sdn/apps/ofwire.py), each
        # with its own xid from dp's counter, shared by inner and outer message (ext 230 §3.3);
        # encoded chunk by chunk, so the switch parses one while the next is packed
        chunks = ofmsgs.plan_bundle_adds(dp, bundle_id, plan.deletes, plan.adds, generation,
                                         plan.stale_cookies)
        dp.send_msg(ofmsgs.bundle_ctrl(dp, bundle_id, ofp.ONF_BCT_OPEN_REQUEST))
        try:
            for chunk in chunks:
                dp.send(chunk)
        except Exception:   # a flow that cannot be encoded: nothing of the plan may apply
            dp.send_msg(ofmsgs.bundle_ctrl(dp, bundle_id, ofp.ONF_BCT_DISCARD_REQUEST))
            raise
        dp.send_msg(ofmsgs.bundle_ctrl(dp, bundle_id, ofp.ONF_BCT_COMMIT_REQUEST))
        waiter = self._request(dp, dp.ofproto_parser.OFPBarrierRequest(dp))
        if waiter.errors:
            raise RuntimeError(f"datapath {dp.id:016x} rejected bundle {bundle_id}: "
                               f"{waiter.errors[:3]}")

    # ---- the router's external side -----------------------------------------------------

    def router_settings(self) -> router.RouterSettings | None:
        """Router settings with the external gateway MAC (configured, else learned)."""
        base = self.router_base
        if base is None or base.external_gateway_mac or not self.learned_gateway_mac:
            return base
        return dataclasses.replace(base, external_gateway_mac=self.learned_gateway_mac)

    def _probe_gateway(self, now: float) -> None:
        """ARP for the external gateway from every public port, until it answers, then now
        and then (its MAC may change)."""
        base = self.router_base
        if base is None or not base.external_gateway or base.external_gateway_mac:
            return
        if now - self._last_arp < (ARP_REFRESH if self.learned_gateway_mac else ARP_RETRY):
            return
        self._last_arp = now
        frame = router.arp_request(base.mac, base.routing_source_ip, base.external_gateway)
        for sw in list(self.switches.values()):
            if sw.binding.public_port:
                sw.dp.send_msg(ofmsgs.packet_out(sw.dp, sw.binding.public_port, frame))

    def _learn_gateway(self, frame: bytes) -> None:
        reply = router.parse_arp_reply(frame)
        base = self.router_base
        if not reply or base is None or reply[1] != base.external_gateway:
            return
        if reply[0] != self.learned_gateway_mac:
            LOG.info("external gateway %s is at %s", reply[1], reply[0])
            self.learned_gateway_mac = reply[0]
            for dpid in list(self.switches):
                self._work.put((dpid, "incremental"))

    # ---- state changes ------------------------------------------------------------------

    def _poll_loop(self):
        revision = self.view.revision
        last_timeout = 0.0
        while True:
            time.sleep(POLL_INTERVAL)
            try:
                now = time.time()
                self._probe_gateway(now)
                if now - last_timeout > DISASSOCIATE_INTERVAL:
                    last_timeout = now
                    self.state.timeout_fixed_ips(now)
                current = self.state.revision()
                if current == revision:
                    continue
                self.view = self.state.load()
                revision = self.view.revision
                for dpid in list(self.switches):
                    self._work.put((dpid, "incremental"))
            except Exception:  # a database hiccup must not kill the poller
                LOG.exception("state poll failed")

    # ---- DHCP ---------------------------------------------------------------------------

    _DHCP_COOKIE = (COOKIE_APP << 8) | Feature.DHCP

    def fast_packet_in(self, dp, cookie: int, in_port: int | None, frame: bytes) -> bytes | None:
        """sdn.apps.fastdp hook, on the switch's receive thread: a DHCP punt's packet-out bytes
        (b"" when nothing is to be sent now), or None for anything else (os-ken's path)."""
        if cookie >> 48 != self._DHCP_COOKIE or in_port is None:
            return None
        return self._on_dhcp(dp, in_port, frame)

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _on_packet_in(self, ev):
        msg = ev.msg
        if (msg.cookie >> 48) & 0xFF == Feature.ROUTER:   # the punting flow's feature
            self._learn_gateway(msg.data)
            return
        out = self._on_dhcp(msg.datapath, msg.match.get("in_port"), msg.data)
        if out:
            msg.datapath.send(out)

    def _on_dhcp(self, dp, in_port: int, frame: bytes) -> bytes:
        """Decide on a DHCP punt from ``in_port``: the packet-out to send now (OFFER, NAK, ...)
        or b"" (nothing, or an ACK that waits for its lease commit in _lease_loop)."""
        sw = self.switches.get(dp.id)
        tag = b""
        if sw and in_port in sw.binding.relays:
            # a relay agent's request: giaddr picks the network, chaddr the VIF
            # (sdn.dhcp.relay); the reply carries the request's VLAN tag back
            fields = request_fields(frame)
            if fields is None:
                return b""
            tag, giaddr, chaddr = fields
            cached, view = self._relay_bindings, self.view
            if cached is None or cached[0] is not view:
                cached = self._relay_bindings = (view, RelayBindings(view))
            binding = cached[1].lookup(giaddr, chaddr)
        else:
            vif = sw.binding.vifs.get(in_port) if sw else None
            network = self.view.networks.get(vif.network_id) if vif else None
            binding = None
            if vif and network:
                binding = DhcpBinding(mac=vif.mac, hostname=vif.hostname, network=network,
                                      address=vif.addresses[0] if vif.addresses else None)
        decision = self.responder.handle(frame, binding, time.time())
        if LOG.isEnabledFor(logging.DEBUG):
            LOG.debug("DHCP on %016x port %s: %s", dp.id, in_port, decision.reason)
        reply = with_tag(decision.reply, tag) if decision.reply else None
        if decision.event:
            # ACKs wait for their lease to commit (write-ahead, see _lease_loop).
            self._lease_events.put((decision.event, dp, in_port, reply))
            return b""
        return ofmsgs.packet_out_bytes(in_port, reply) if reply else b""

    LEASE_BATCH_MAX = 512

    def _lease_loop(self):
        """Write lease events to state off the packet-in path, in batches (group commit).

        Write-ahead: a batch is committed in one transaction, and only then are its ACKs sent,
        so a lease the client was told about survives a controller crash (kill -9); a crash
        before the commit only loses unacknowledged leases, which the client requests again.
        """
        while True:
            batch = [self._lease_events.get()]
            while len(batch) < self.LEASE_BATCH_MAX:
                try:
                    batch.append(self._lease_events.get_nowait())
                except queue.Empty:
                    break
            try:
                results = self.state.apply_lease_events([item[0] for item in batch])
            except Exception:  # nothing committed: no ACK may claim it; clients will retry
                LOG.exception("could not record %d DHCP lease events; their ACKs are not sent",
                              len(batch))
                continue
            out: dict[object, list[bytes]] = {}
            for (event, dp, port, reply), error in zip(batch, results):
                if error is not None:
                    LOG.error("could not record DHCP %s of %s: %s", event.kind, event.address,
                              error)
                if reply:
                    out.setdefault(dp, []).append(ofmsgs.packet_out_bytes(port, reply))
            for dp, packets in out.items():   # one hand-off to the send thread per switch
                dp.send(b"".join(packets))


def main(conf) -> int:
    """Run the controller in-process (os-ken no longer ships osken-manager).

    ``conf`` is sdn's oslo.config ConfigOpts. Returns only on SIGTERM/SIGINT; the switches
    keep their flows (fail_mode secure) and a restarted controller resyncs without a wipe.
    """
    from os_ken import cfg as osken_cfg

    logging.basicConfig(level=logging.DEBUG if getattr(conf, "debug", False) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _SETTINGS["state"] = StateSource.from_conf(conf)
    _SETTINGS["trunk_names"] = conf.ovs.trunk_interfaces
    _SETTINGS["dhcp_rate_pps"] = conf.ovs.dhcp_rate_limit or None
    _SETTINGS["relay_names"] = conf.ovs.dhcp_relay_interfaces
    _SETTINGS["relay_rate_pps"] = conf.ovs.dhcp_relay_rate_limit or None
    _SETTINGS["ovsdb_connection"] = conf.ovs.ovsdb_connection
    _SETTINGS["public_interface"] = conf.public_interface
    if conf.routing_source_ip:
        _SETTINGS["router"] = router.RouterSettings(
            routing_source_ip=conf.routing_source_ip, external_gateway=conf.external_gateway,
            external_gateway_mac=conf.external_gateway_mac, public_vlan=conf.public_vlan,
            metadata_host=conf.metadata_host, metadata_port=conf.metadata_port,
            dmz_cidrs=tuple(conf.dmz_cidr))
    osken_cfg.CONF(args=["--ofp-listen-host", conf.ovs.ofp_listen_host,
                         "--ofp-tcp-listen-port", str(conf.ovs.ofp_tcp_listen_port)],
                   project="os_ken")

    def _stop(signum, _frame):
        LOG.info("signal %d: controller exiting, flows stay on the switches", signum)
        logging.shutdown()
        os._exit(0)  # os-ken's native-thread apps are non-daemon; do not wait for them

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    LOG.info("listening for OpenFlow 1.3 on %s:%d", conf.ovs.ofp_listen_host,
             conf.ovs.ofp_tcp_listen_port)
    fastdp.install(lambda dp, *pkt: _SETTINGS["app"].fast_packet_in(dp, *pkt))
    app_manager.AppManager.run_apps(["sdn.apps.controller"])
    return 0
