"""sdn.metrics (what the controller and agent count), the DHCP decision outcomes they count
(sdn.dhcp.server.Reason), the rate-limited DHCP log lines (sdn.apps.dhcp_punt.DhcpLog,
sdn.log.RateLimiter), the metrics endpoint and the logging options of the CLI."""

from __future__ import annotations

import logging
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sdn import cli, config, exception
from sdn import log as sdn_log
from sdn.apps.dhcp_punt import DhcpLog, DhcpPunt, LeaseCommitter
from sdn.apps.packet_in import PacketInDispatch
from sdn.dhcp.server import CAUSES, DhcpBinding, DhcpResponder, LeaseEvent
from sdn.flows import model as m
from sdn.metrics import AgentMetrics, ControllerMetrics, serve
from tests.unit.test_dhcp_packet import MAC, craft
from tests.unit.test_dhcp_server import ADDR, BINDING, SELECTING, SERVER

OTHER_MAC = "fa:16:3e:99:99:99"


def value(metrics, name: str, **labels) -> float:
    """A sample's value from the registry (0 when absent)."""
    got = metrics.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def exposed_names(metrics) -> set[str]:
    return {f.name for f in metrics.registry.collect()}


# ---- declarations ----------------------------------------------------------------------------

def test_every_metric_is_named_sdn_and_declared_once_per_registry():
    for cls in (ControllerMetrics, AgentMetrics):
        names = exposed_names(cls())
        assert names and all(n.startswith("sdn_") for n in names), names
        # a second container has its own registry: no "Duplicated timeseries" error, own values
        a, b = cls(), cls()
        a.database_errors.labels("state_read").inc()
        assert value(a, "sdn_database_errors_total", operation="state_read") == 1
        assert value(b, "sdn_database_errors_total", operation="state_read") == 0


def test_controller_metric_names_are_the_documented_ones():
    """docs/OPERATIONS.md lists these; a renamed metric must change the docs too."""
    assert exposed_names(ControllerMetrics()) == {
        "sdn_datapaths_connected", "sdn_datapath_connections", "sdn_flows",
        "sdn_sync_duration_seconds", "sdn_sync_failures", "sdn_audit_duration_seconds",
        "sdn_drift_repairs", "sdn_flow_mods_sent", "sdn_group_mods_sent", "sdn_meter_mods_sent",
        "sdn_packet_ins", "sdn_packet_in_errors", "sdn_dhcp_messages", "sdn_dhcp_lease_commits",
        "sdn_dhcp_lease_commit_seconds", "sdn_database_errors"}
    assert exposed_names(AgentMetrics()) == {
        "sdn_agent_reconcile_duration_seconds", "sdn_agent_reconciles", "sdn_agent_rules",
        "sdn_agent_table_restores", "sdn_agent_dhcp_lease_events", "sdn_database_errors"}


def test_docs_list_every_metric():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "OPERATIONS.md").read_text()
    for cls in (ControllerMetrics, AgentMetrics):
        for family in cls().registry.collect():
            name = family.name + ("_total" if family.type == "counter" else "")
            assert f"`{name}" in doc, f"{name} is not in docs/OPERATIONS.md"


def test_flows_per_feature_follow_the_last_sync_and_go_with_the_datapath():
    metrics = ControllerMetrics()
    metrics.set_flows(1, {m.Feature.L2: 5, m.Feature.DHCP: 2})
    assert value(metrics, "sdn_flows", dpid="0000000000000001", feature="l2") == 5
    metrics.set_flows(1, {m.Feature.L2: 3})        # no DHCP flow any more: 0, not stale 2
    assert value(metrics, "sdn_flows", dpid="0000000000000001", feature="dhcp") == 0
    assert value(metrics, "sdn_flows", dpid="0000000000000001", feature="l2") == 3
    metrics.forget_datapath(1)
    assert metrics.registry.get_sample_value(
        "sdn_flows", {"dpid": "0000000000000001", "feature": "l2"}) is None


# ---- DHCP decisions: what happened, counted ---------------------------------------------------

DECISIONS = [  # (frame, binding, type, outcome, cause)
    (craft("discover"), BINDING, "DISCOVER", "offer", ""),
    (craft("request", options=SELECTING), BINDING, "REQUEST", "ack", ""),
    (craft("request", options=[("requested_addr", "10.0.0.9"), ("server_id", SERVER)]),
     BINDING, "REQUEST", "nak", "wrong_address"),
    (craft("request"), BINDING, "REQUEST", "ignored", "incomplete_request"),
    (craft("discover", chaddr=OTHER_MAC), BINDING, "DISCOVER", "ignored", "chaddr_mismatch"),
    (craft("discover"), None, "DISCOVER", "ignored", "no_binding"),
    (craft("discover"), DhcpBinding(BINDING.mac, None, "vm", BINDING.network), "DISCOVER",
     "ignored", "no_fixed_ip"),
    (craft("request", options=[("requested_addr", ADDR), ("server_id", "10.9.9.9")]), BINDING,
     "REQUEST", "ignored", "other_server"),
    (craft("offer"), BINDING, "unknown", "ignored", "server_message"),
    (craft("release", ciaddr=ADDR), BINDING, "RELEASE", "release", ""),
    (craft("release", ciaddr="10.0.0.9"), BINDING, "RELEASE", "ignored", "wrong_address"),
    (craft("decline", options=[("requested_addr", ADDR)]), BINDING, "DECLINE", "decline", ""),
    (craft("inform", ciaddr=ADDR), BINDING, "INFORM", "inform", ""),
    (b"\x00" * 20, BINDING, "malformed", "malformed", "malformed"),
]


@pytest.mark.parametrize("frame,binding,mtype,outcome,cause", DECISIONS)
def test_each_decision_says_what_happened(frame, binding, mtype, outcome, cause):
    reason = DhcpResponder().handle(frame, binding, 0.0).reason
    assert (reason.message, reason.outcome, reason.cause) == (mtype, outcome, cause), reason
    assert cause in CAUSES
    # the memoised path (same request again) gives the same structured reason
    responder = DhcpResponder()
    responder.handle(frame, binding, 0.0)
    again = responder.handle(frame, binding, 0.0).reason
    assert (again.message, again.outcome, again.cause) == (mtype, outcome, cause)


class _Dp:
    id = 0x1
    sent: list

    def send(self, data):
        self.sent.append(data)


def _punt(committed: list | None = None, log: DhcpLog | None = None):
    from sdn.flows.context import Binding

    metrics = ControllerMetrics()
    committer = LeaseCommitter(lambda events: committed.extend(events) or [None] * len(events)
                               if committed is not None else [None] * len(events),
                               start=False, metrics=metrics, log=log)
    punt = DhcpPunt(lambda: None, lambda dpid: Binding({}, ()), committer, metrics=metrics, log=log)
    punt._vif_binding = lambda dpid, view, binding, port: BINDING if port == 5 else None
    return punt, metrics


def test_dhcp_punt_counts_each_decision_by_type_outcome_and_reason():
    punt, metrics = _punt()
    dp = _Dp()
    dp.sent = []
    punt.on_packet_in(dp, 5, craft("discover"))
    punt.on_packet_in(dp, 5, craft("discover"))
    punt.on_packet_in(dp, 5, craft("discover", chaddr=OTHER_MAC))
    punt.on_packet_in(dp, 9, craft("discover"))     # a port with no VIF
    assert value(metrics, "sdn_dhcp_messages_total", type="DISCOVER", outcome="offer",
                 reason="") == 2
    assert value(metrics, "sdn_dhcp_messages_total", type="DISCOVER", outcome="ignored",
                 reason="chaddr_mismatch") == 1
    assert value(metrics, "sdn_dhcp_messages_total", type="DISCOVER", outcome="ignored",
                 reason="no_binding") == 1


def test_lease_commits_are_counted_with_their_latency_and_the_ack_logged(caplog):
    committed: list = []
    punt, metrics = _punt(committed)
    dp = _Dp()
    dp.sent = []
    caplog.set_level(logging.INFO, logger="sdn.dhcp")
    assert punt.on_packet_in(dp, 5, craft("request", options=SELECTING)) == b""   # ACK waits
    assert value(metrics, "sdn_dhcp_lease_commits_total", outcome="committed") == 0
    item = punt.committer._queue.get_nowait()
    punt.committer.commit([item])
    assert committed == [LeaseEvent("lease", ADDR, MAC.lower())] and len(dp.sent) == 1
    assert value(metrics, "sdn_dhcp_lease_commits_total", outcome="committed") == 1
    assert value(metrics, "sdn_dhcp_lease_commit_seconds_count") == 1
    assert value(metrics, "sdn_dhcp_messages_total", type="REQUEST", outcome="ack",
                 reason="") == 1
    acks = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert acks == [f"DHCP ACK {ADDR} to {MAC.lower()} (lease recorded)"], acks


def test_refused_and_unavailable_lease_commits_are_counted():
    metrics = ControllerMetrics()
    refuse = LeaseCommitter(lambda events: [ValueError("no such address")] * len(events),
                            start=False, metrics=metrics)
    refuse.commit([(LeaseEvent("lease", ADDR, MAC), None, None)])
    assert value(metrics, "sdn_dhcp_lease_commits_total", outcome="refused") == 1

    def locked(events):
        raise OSError("database is locked")

    down = LeaseCommitter(locked, {ADDR: MAC.lower()}, start=False, metrics=metrics)
    down.commit([(LeaseEvent("lease", ADDR, MAC), None, None),          # a renewal: memory
                 (LeaseEvent("lease", "10.0.0.6", OTHER_MAC), None, None)])   # new: withheld
    assert value(metrics, "sdn_database_errors_total", operation="lease_commit") == 1
    assert value(metrics, "sdn_dhcp_lease_commits_total", outcome="from_memory") == 1
    assert value(metrics, "sdn_dhcp_lease_commits_total", outcome="withheld") == 1


def test_dhcp_info_lines_are_rate_limited_per_client_with_a_suppressed_count(caplog):
    clock = [100.0]
    log = DhcpLog(interval=10.0, clock=lambda: clock[0])
    punt, _ = _punt(log=log)
    dp = _Dp()
    dp.sent = []
    caplog.set_level(logging.DEBUG, logger="sdn.dhcp")
    nak = craft("request", options=[("requested_addr", "10.0.0.9"), ("server_id", SERVER)])
    for _ in range(5):
        punt.on_packet_in(dp, 5, nak)
    punt.on_packet_in(dp, 9, craft("discover"))          # another client: its own line
    clock[0] += 10.0
    punt.on_packet_in(dp, 5, nak)
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) == 3, info
    assert info[0].startswith("DHCP NAK 10.0.0.9 to fa:16:3e") and "VIF has 10.0.0.5" in info[0]
    assert "datapath 0000000000000001 port 5" in info[0]
    assert info[1].startswith("DHCP ignored: DISCOVER from a port with no VIF binding")
    assert info[2].endswith("(4 more suppressed)"), info[2]
    # an OFFER is not worth an INFO line (DEBUG only)
    caplog.clear()
    punt.on_packet_in(dp, 5, craft("discover"))
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


# ---- the rate limiter ----------------------------------------------------------------------

def test_rate_limiter_allows_one_per_interval_and_counts_the_rest():
    rl = sdn_log.RateLimiter(interval=10)
    assert rl.allow("a", 0.0) == 0
    assert rl.allow("a", 1.0) is None and rl.allow("a", 9.9) is None
    assert rl.allow("b", 5.0) == 0                       # keys are independent
    assert rl.allow("a", 10.0) == 2                      # two suppressed since the last line
    assert rl.allow("a", 20.0) == 0


def test_rate_limiter_memory_is_bounded_and_never_silences_for_good():
    rl = sdn_log.RateLimiter(interval=10, max_keys=100)
    for i in range(1000):
        assert rl.allow(i, 0.0) == 0                     # all new: all allowed
        assert len(rl._last) <= 100
    assert rl.allow(999, 1.0) is None                   # still tracked: suppressed
    with pytest.raises(ValueError):
        sdn_log.RateLimiter(interval=-1)


# ---- packet-ins, syncs ------------------------------------------------------------------------

def test_packet_ins_are_counted_by_datapath_and_feature():
    metrics = ControllerMetrics()
    dispatch = PacketInDispatch(metrics)
    dispatch.on_fast(m.Feature.DHCP, lambda dp, port, frame: b"")

    def broken(dp, port, frame):
        raise RuntimeError("bug")

    dispatch.on_slow(m.Feature.ROUTER, broken)
    dp = _Dp()
    dhcp_cookie = (m.COOKIE_APP << 56) | (int(m.Feature.DHCP) << 48) | 7
    router_cookie = (m.COOKIE_APP << 56) | (int(m.Feature.ROUTER) << 48) | 7
    dispatch.fast(dp, dhcp_cookie, 1, b"x")
    dispatch.fast(dp, dhcp_cookie, 1, b"x")
    assert dispatch.fast(dp, router_cookie, 1, b"x") is None   # not fast: os-ken's path
    dispatch.slow(dp, router_cookie, 1, b"x")
    assert value(metrics, "sdn_packet_ins_total", dpid="0000000000000001", feature="dhcp") == 2
    assert value(metrics, "sdn_packet_ins_total", dpid="0000000000000001", feature="router") == 1
    assert value(metrics, "sdn_packet_in_errors_total", feature="router") == 1


def test_a_sync_records_flows_per_feature_mods_and_its_duration():
    from tests.unit.fakeswitch import FakeSwitch
    from tests.unit.test_datapath_sync import State, unit_on

    metrics = ControllerMetrics()
    fake, state = FakeSwitch(), State()
    unit = unit_on(fake, state, metrics=metrics)
    unit.step("full")
    dpid = f"{fake.id:016x}"
    per_feature: dict[str, int] = {}
    for flow in unit.installed.values():
        per_feature[flow.feature.name.lower()] = per_feature.get(flow.feature.name.lower(), 0) + 1
    assert len(per_feature) > 3
    for feature, count in per_feature.items():
        assert value(metrics, "sdn_flows", dpid=dpid, feature=feature) == count
    assert value(metrics, "sdn_flow_mods_sent_total", dpid=dpid,
                 type="add") == len(unit.installed)
    assert value(metrics, "sdn_sync_duration_seconds_count", dpid=dpid, type="full") == 1
    assert value(metrics, "sdn_group_mods_sent_total", dpid=dpid) == len(unit.groups)
    # an audit of an unchanged switch: timed, no repair; drift: counted and repaired
    unit.step("audit")
    assert value(metrics, "sdn_audit_duration_seconds_count", dpid=dpid) == 1
    assert value(metrics, "sdn_drift_repairs_total", dpid=dpid) == 0
    fake.flows.clear()
    unit.step("audit")
    assert value(metrics, "sdn_drift_repairs_total", dpid=dpid) == 1
    assert value(metrics, "sdn_sync_duration_seconds_count", dpid=dpid, type="full") == 2


# ---- the endpoint -------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_exposes_the_registry_over_http_and_port_0_disables():
    metrics = ControllerMetrics()
    metrics.datapaths.set(2)
    assert serve(metrics, "127.0.0.1", 0, "test") is None
    port = _free_port()
    server = serve(metrics, "127.0.0.1", port, "test")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["sdn_datapaths_connected"].samples[0].value == 2
    finally:
        server.shutdown()
        server.server_close()


def test_serve_on_a_taken_port_logs_an_error_and_goes_on(caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR, logger="sdn.metrics"):
            assert serve(ControllerMetrics(), "127.0.0.1", port, "controller") is None
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text


# ---- configuration and command line -------------------------------------------------------------

def test_metrics_options_are_validated(tmp_path):
    path = tmp_path / "sdn.conf"
    path.write_text("[metrics]\ncontroller_port = 70000\n")
    with pytest.raises(exception.ConfigError, match=r"\[metrics\] controller_port.*0\.\.65535"):
        config.load([], [str(path)], conf=config.make_conf())
    path.write_text("[metrics]\nlisten = 0.0.0.0\nagent_port = 0\n")
    conf = config.load([], [str(path)], conf=config.make_conf())
    assert (conf.metrics.listen, conf.metrics.controller_port, conf.metrics.agent_port) == (
        "0.0.0.0", 9302, 0)


def test_debug_and_log_file_are_global_options():
    args = cli.parse(["--debug", "--log-file", "/tmp/x.log", "controller"])
    assert (args.debug, args.log_file, args.category) == (True, "/tmp/x.log", "controller")
    args = cli.parse(["network", "list"])
    assert (args.debug, args.log_file) == (None, None)


def test_an_unwritable_log_file_is_one_clear_error(tmp_path):
    conf = config.make_conf()
    conf([])
    with pytest.raises(exception.Invalid, match="cannot open log file .*missing.*writable"):
        sdn_log.setup(conf, "sdn-test", log_file=str(tmp_path / "missing" / "x.log"))
