"""Prometheus metrics of the controller and the Linux agent, each declared once (Faucet's
``faucet_metrics.py`` is the model: one container object per process, a ``dpid`` label on
everything per switch).

Every metric is named ``sdn_...`` and lives in the container's own ``CollectorRegistry``
(never prometheus_client's global one), so a test or a second app in one process gets fresh
counters. The shells (``sdn.apps.controller``, ``sdn.apps.datapath``, ``sdn.apps.dhcp_punt``,
``sdn.apps.packet_in``, ``sdn.linux.agent``) receive the container and count what the pure
parts decided; nothing here decides anything.

``serve(metrics, listen, port)`` exposes a registry over HTTP (``GET /metrics``, Prometheus
text format 0.0.4); ``[metrics]`` in sdn.conf says where (port 0: not served).

Label values: ``dpid`` is the datapath id as 16 hex digits (as the logs print it),
``feature`` a cookie's feature name in lower case (``l2``, ``dhcp``; ``sdn.flows.model.Feature``),
DHCP ``type`` the client's message type (``DISCOVER``...; ``sdn.dhcp.server.Reason``).
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LOG = logging.getLogger("sdn.metrics")

#: seconds; syncs and reconciles span ms (an incremental sync) to tens of s (5,000 VIFs)
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0, float("inf"))
#: seconds from a lease event's submission to its commit (an ACK waits that long)
LEASE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                 float("inf"))


def dpid_label(dpid: int) -> str:
    """A datapath id as the logs print it: 16 lower-case hex digits."""
    return f"{dpid:016x}"


def feature_label(feature) -> str:
    """``Feature.L2`` -> ``"l2"``; None (a foreign cookie) -> ``"foreign"``."""
    return feature.name.lower() if feature is not None else "foreign"


class _Metrics:
    def __init__(self, registry: CollectorRegistry | None):
        self.registry = registry if registry is not None else CollectorRegistry()

    def _counter(self, name: str, doc: str, labels=()) -> Counter:
        return Counter(name, doc, list(labels), registry=self.registry)

    def _gauge(self, name: str, doc: str, labels=()) -> Gauge:
        return Gauge(name, doc, list(labels), registry=self.registry)

    def _histogram(self, name: str, doc: str, labels=(), buckets=DURATION_BUCKETS) -> Histogram:
        return Histogram(name, doc, list(labels), buckets=buckets, registry=self.registry)


class ControllerMetrics(_Metrics):
    """What ``sdn controller`` exports. Names as exposed (counters get ``_total``):

    - ``sdn_datapaths_connected`` gauge: switches with a live OpenFlow connection;
    - ``sdn_datapath_connections_total{dpid}``: connections accepted per switch;
    - ``sdn_flows{dpid,feature}`` gauge: flows installed after the last sync;
    - ``sdn_sync_duration_seconds{dpid,type}`` histogram, type ``full``/``incremental``;
    - ``sdn_sync_failures_total{dpid}``: syncs that failed (retried with a full sync);
    - ``sdn_audit_duration_seconds{dpid}`` histogram: one drift audit;
    - ``sdn_drift_repairs_total{dpid}``: audits that found drift (a full sync repairs it);
    - ``sdn_flow_mods_sent_total{dpid,type}``, type ``add``/``delete``/``delete_cookie``
      (flows of an older generation, deleted by exact cookie);
    - ``sdn_group_mods_sent_total{dpid}``, ``sdn_meter_mods_sent_total{dpid}``;
    - ``sdn_packet_ins_total{dpid,feature}``: packet-ins by the feature whose flow punted them;
    - ``sdn_packet_in_errors_total{feature}``: packet-ins a handler failed on (dropped);
    - ``sdn_dhcp_messages_total{type,outcome,reason}``: every DHCP request decided, outcome
      ``offer``/``ack``/``nak``/``release``/``decline``/``inform``/``ignored``/``malformed``/
      ``error``, reason why (``""`` for an answered one; ``sdn.dhcp.server.Reason``);
    - ``sdn_dhcp_lease_commits_total{outcome}``: lease events ``committed``, ``refused`` (the
      database said no: nothing sent), ``from_memory`` (a renewal ACKed while the database
      was unavailable), ``withheld`` (a new lease not ACKed while it was unavailable);
    - ``sdn_dhcp_lease_commit_seconds`` histogram: submission to commit of a lease event;
    - ``sdn_database_errors_total{operation}``: ``state_read`` (revision/view),
      ``lease_commit``, ``periodic_write`` (disassociation, lease expiry).
    """

    def __init__(self, registry: CollectorRegistry | None = None):
        super().__init__(registry)
        self.datapaths = self._gauge("sdn_datapaths_connected",
                                     "Switches with a live OpenFlow connection")
        self.connections = self._counter("sdn_datapath_connections",
                                         "OpenFlow connections accepted", ["dpid"])
        self.flows = self._gauge("sdn_flows", "Flows installed by the last sync",
                                 ["dpid", "feature"])
        self.sync_seconds = self._histogram("sdn_sync_duration_seconds",
                                            "Duration of one sync", ["dpid", "type"])
        self.sync_failures = self._counter("sdn_sync_failures", "Syncs that failed", ["dpid"])
        self.audit_seconds = self._histogram("sdn_audit_duration_seconds",
                                             "Duration of one drift audit", ["dpid"])
        self.drift_repairs = self._counter("sdn_drift_repairs",
                                           "Audits that found drift (repaired by a full sync)",
                                           ["dpid"])
        self.flow_mods = self._counter("sdn_flow_mods_sent", "Flow mods sent", ["dpid", "type"])
        self.group_mods = self._counter("sdn_group_mods_sent", "Group mods sent", ["dpid"])
        self.meter_mods = self._counter("sdn_meter_mods_sent", "Meter mods sent", ["dpid"])
        self.packet_ins = self._counter("sdn_packet_ins", "Packet-ins received",
                                        ["dpid", "feature"])
        self.packet_in_errors = self._counter("sdn_packet_in_errors",
                                              "Packet-ins dropped by a failing handler",
                                              ["feature"])
        self.dhcp_messages = self._counter("sdn_dhcp_messages", "DHCP requests decided",
                                           ["type", "outcome", "reason"])
        self.lease_commits = self._counter("sdn_dhcp_lease_commits", "DHCP lease events",
                                           ["outcome"])
        self.lease_commit_seconds = self._histogram(
            "sdn_dhcp_lease_commit_seconds", "Seconds from a lease event's submission to its "
            "commit", buckets=LEASE_BUCKETS)
        self.database_errors = self._counter("sdn_database_errors",
                                             "Database operations that failed", ["operation"])
        self._dhcp_children: dict[tuple, object] = {}
        self._packet_in_children: dict[tuple, object] = {}
        self._flow_features: dict[int, set] = {}

    # the two per-packet counters: children cached (labels() takes a lock and hashes each time)

    def count_dhcp(self, reason) -> None:
        """Count one decision; ``reason`` is a ``sdn.dhcp.server.Reason``."""
        key = (reason.message, reason.outcome, reason.cause)
        child = self._dhcp_children.get(key)
        if child is None:
            child = self._dhcp_children[key] = self.dhcp_messages.labels(*key)
        child.inc()

    def count_packet_in(self, dpid: int | None, feature) -> None:
        key = (dpid, feature)
        child = self._packet_in_children.get(key)
        if child is None:
            child = self._packet_in_children[key] = self.packet_ins.labels(
                dpid_label(dpid) if dpid is not None else "unknown", feature_label(feature))
        child.inc()

    def set_flows(self, dpid: int, per_feature: dict) -> None:
        """The flow count per feature of one switch after a sync; a feature it had before and
        has no more is set to 0."""
        label = dpid_label(dpid)
        shown = self._flow_features.setdefault(dpid, set())
        for feature in shown - set(per_feature):
            self.flows.labels(label, feature_label(feature)).set(0)
        for feature, count in per_feature.items():
            self.flows.labels(label, feature_label(feature)).set(count)
        shown.update(per_feature)

    def forget_datapath(self, dpid: int) -> None:
        """A switch disconnected: its flow gauges go (its counters stay: they count)."""
        for feature in self._flow_features.pop(dpid, ()):
            self.flows.remove(dpid_label(dpid), feature_label(feature))


class AgentMetrics(_Metrics):
    """What ``sdn agent`` (the Linux backend) exports:

    - ``sdn_agent_reconcile_duration_seconds`` histogram: one reconcile;
    - ``sdn_agent_reconciles_total{outcome}``: ``changed``, ``unchanged``, ``failed``;
    - ``sdn_agent_rules{type}`` gauge: rules sdn holds after the last reconcile, type
      ``ipv4``/``ipv6``/``eb`` (iptables, ip6tables, ebtables);
    - ``sdn_agent_table_restores_total{type}``: ``*-restore`` runs per table (``iptables-save:filter``);
    - ``sdn_agent_dhcp_lease_events_total{type,outcome}``: leases of sdn's raw-socket DHCP
      (``dhcp_driver = scapy``), type ``lease``/``release``/``decline``, outcome
      ``recorded``/``refused`` (dnsmasq's go through ``sdn dhcp-bridge``, another process);
    - ``sdn_database_errors_total{operation}``: ``state_read``, ``lease_commit``,
      ``periodic_write``, ``claim`` (a network host claiming networks).
    """

    def __init__(self, registry: CollectorRegistry | None = None):
        super().__init__(registry)
        self.reconcile_seconds = self._histogram("sdn_agent_reconcile_duration_seconds",
                                                 "Duration of one reconcile")
        self.reconciles = self._counter("sdn_agent_reconciles", "Reconciles", ["outcome"])
        self.rules = self._gauge("sdn_agent_rules", "Rules held after the last reconcile",
                                 ["type"])
        self.table_restores = self._counter("sdn_agent_table_restores",
                                            "Tables restored (*-restore runs)", ["type"])
        self.lease_events = self._counter("sdn_agent_dhcp_lease_events", "DHCP lease events",
                                          ["type", "outcome"])
        self.database_errors = self._counter("sdn_database_errors",
                                             "Database operations that failed", ["operation"])


def serve(metrics: _Metrics, listen: str, port: int, what: str):
    """Serve ``metrics`` on http://listen:port/metrics in a daemon thread; returns the server,
    or None when ``port`` is 0 (disabled) or the address cannot be bound (logged as an
    error: forwarding matters more than its metrics, so the process goes on)."""
    if not port:
        LOG.info("%s metrics not served ([metrics] port 0)", what)
        return None
    try:
        server, _thread = start_http_server(port, listen, registry=metrics.registry)
    except OSError as err:
        LOG.error("%s metrics not served: cannot listen on %s:%d (%s); set [metrics] "
                  "listen/ports (0 disables)", what, listen, port, err.strerror or err)
        return None
    LOG.info("%s metrics on http://%s:%d/metrics", what, listen, port)
    return server
