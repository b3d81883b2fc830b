"""The per-switch sync unit (sdn/apps/datapath.py) against a fake switch fed its real bytes.

Every assertion is on what the fake switch (tests/unit/fakeswitch.py, after Faucet's
FakeOFTable) holds after parsing and applying the OpenFlow messages the unit sent: its flow
table, meters and groups, the order it applied them in, and the errors it answered with.
"""

import dataclasses
import itertools
import threading
import time

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from sdn.apps import ofmsgs
from sdn.apps.datapath import DatapathGone, DatapathRejected, DatapathSync, Liveness
from sdn.flows import l2, reconcile
from sdn.flows import model as m
from sdn.flows.compiler import CompileSettings, bind_ports, compile_datapath
from sdn.flows.model import Feature, GENERATION_MASK
from sdn.flows.trace import trace
from sdn.view import NetworkView, StateView, VifView
from tests.unit.fakeswitch import FakeSwitch, flow_of, parse_one
from tests.unit.test_flows import B1, PORTS
from tests.unit.test_flows import VIEW as FLOWS_VIEW

RATE = 50
# The engine's tests count flows, meters and groups: unfiltered VIFs keep security groups'
# share (tested in test_security_groups.py) out of those counts.
VIEW = dataclasses.replace(FLOWS_VIEW, vifs=tuple(dataclasses.replace(v, port_security=False)
                                                  for v in FLOWS_VIEW.vifs))
A4 = VifView("aaaa4444-0000-0000-0000-000000000004", "fa:16:3e:00:00:a4", 1, "a4", "a4",
             ("10.10.0.7",), "alpha", port_security=False)
B2 = VifView("bbbb2222-0000-0000-0000-000000000002", "fa:16:3e:00:00:b2", 2, "b2", "b2",
             ("10.10.0.69",), "beta", port_security=False)


class State:
    """What the controller's compile closure reads: the view and settings of the moment."""

    def __init__(self, view=VIEW, settings=CompileSettings(dhcp_rate_pps=RATE)):
        self.view, self.settings = view, settings

    def compile(self, ports, flow_sink=None) -> m.Desired:
        return compile_datapath(self.view, bind_ports(self.view, ports, frozenset({"s1-trunk"})),
                                self.settings, flow_sink)


#: every test runs twice: incremental syncs sending flows after the compile, and streaming
#: them into the open bundle while it runs (DatapathSync(streaming=True), the controller's)
_STREAMING = [False]


@pytest.fixture(autouse=True, params=[False, True], ids=["batch", "streamed"])
def streaming(request):
    _STREAMING[0] = request.param
    yield request.param
    _STREAMING[0] = False


def unit_on(fake, state, ports=PORTS, *, start=False, generations=None, **kw):
    """A DatapathSync of ``fake`` whose ports are known (as after the port-desc reply)."""
    gens = generations or itertools.count(7)
    kw.setdefault("streaming", _STREAMING[0])
    unit = DatapathSync(fake, state.compile, lambda: next(gens), start=start,
                        reply_timeout=kw.pop("reply_timeout", 5), **kw)
    fake.unit = unit
    if start:
        unit.set_ports(dict(ports))
    else:
        unit.ports, unit.ports_known = dict(ports), True
    return unit


def serialised(msg) -> bytes:
    msg.set_xid(0)
    msg.serialize()
    return bytes(msg.buf)


def expected_flows(desired: m.Desired, generation: int) -> dict:
    """{key: (cookie, instruction bytes)} the switch must hold: each desired flow encoded by
    os-ken (sdn.apps.ofmsgs, the reference encoder) and parsed back like the fake parses."""
    out = {}
    for f in reconcile.index(desired.flows).values():
        key, entry = flow_of(parse_one(FakeSwitch(), serialised(
            ofmsgs.flow_add(FakeSwitch(), f, generation))).msg)
        out[key] = (entry.cookie, entry.inst_bytes)
    return out


def held_flows(fake) -> dict:
    return {k: (e.cookie, e.inst_bytes) for k, e in fake.sdn_flows().items()}


def expected_groups(desired: m.Desired) -> dict:
    return {i: repr(parse_one(FakeSwitch(), serialised(
        ofmsgs.group_mod(FakeSwitch(), g, i, ofp.OFPGC_ADD))).msg.buckets)
        for i, g in desired.groups.items()}


def held_groups(fake) -> dict:
    return {i: repr(g.buckets) for i, g in fake.groups.items()}


def assert_holds(fake, unit, state):
    """The switch holds exactly what state compiles to, under the unit's generation."""
    desired = state.compile(unit.ports)
    assert held_flows(fake) == expected_flows(desired, unit.generation)
    assert {k[0] for k in fake.flows} - {k[0] for k in fake.sdn_flows()} <= {99}
    assert all(e.cookie & GENERATION_MASK == unit.generation for e in fake.sdn_flows().values())
    assert {i: s.rate for i, s in fake.meters.items()} == {
        i: e.rate for i, e in desired.meters.items()}
    assert held_groups(fake) == expected_groups(desired)
    assert not fake.errors and not fake.collateral


def applied(fake, mark=0, kinds=None):
    return [e for e in fake.log[mark:] if kinds is None or e[0] in kinds]


def flow_mods(received) -> list:
    return [r for r in received if r.type == ofp.OFPT_FLOW_MOD or (
        r.bundle_id is not None)]


# ---- full and incremental sync -------------------------------------------------------------

def test_full_sync_installs_exactly_the_compiled_flows_meters_and_groups():
    fake, state = FakeSwitch(), State()
    unit = unit_on(fake, state)
    unit.step("full")
    desired = state.compile(PORTS)
    assert desired.meters and desired.groups and len(desired.flows) > 30
    assert_holds(fake, unit, state)
    assert unit.generation == 7 and unit.synced
    # meters and groups before the bundle that uses them; one atomic bundle of all flows
    kinds = [e[0] for e in fake.log]
    commit = kinds.index("bundle_commit")
    assert set(kinds[:kinds.index("flow_add")]) == {"meter_add", "group_add"}
    assert fake.log[commit] == ("bundle_commit", 1, len(reconcile.index(desired.flows)))


def test_full_sync_with_the_rich_view_of_test_ofwire():
    """Router, NAT, conntrack, VLAN trunks, relays: every flow the compiler emits is accepted
    by the switch model and held as compiled."""
    from tests.unit.test_ofwire import PORTS as RPORTS, RS, VIEW as RVIEW

    class Rich(State):
        def compile(self, ports):
            return compile_datapath(self.view, bind_ports(
                self.view, ports, frozenset({"trunk1", "trunk2"}), "pub"), self.settings)

    fake = FakeSwitch()
    state = Rich(RVIEW, CompileSettings(dhcp_rate_pps=RATE, router=RS))
    unit = unit_on(fake, state, RPORTS)
    unit.step("full")
    assert_holds(fake, unit, state)


def test_second_full_sync_is_hitless_and_deletes_only_the_old_generation():
    fake, state = FakeSwitch(reply_part=10), State()   # flow stats come in parts of 10
    unit_on(fake, state).step("full")
    desired_keys = set(expected_flows(state.compile(PORTS), 7))
    # the controller restarts: a new unit, a new generation, the switch keeps its tables
    unit = unit_on(fake, state, generations=itertools.count(8))
    mark = len(fake.log)
    unit.step("full")
    assert unit.generation == 8
    assert_holds(fake, unit, state)
    deleted = {e[1] for e in applied(fake, mark, {"flow_delete"})}
    assert not deleted & desired_keys      # a desired flow was replaced in place, never removed
    assert applied(fake, mark, {"group_add", "meter_add", "meter_modify"}) == []
    assert {e[0] for e in applied(fake, mark, {"group_modify"})} == {"group_modify"}


def test_incremental_sync_sends_only_the_diff():
    fake, state = FakeSwitch(), State()
    unit = unit_on(fake, state)
    unit.step("full")
    before = state.compile(PORTS)
    state.view = dataclasses.replace(VIEW, revision=2, vifs=VIEW.vifs + (A4,))
    unit.port_changed(A4.port_name, 4)
    mark, log_mark = len(fake.received), len(fake.log)
    unit.step("incremental")
    after = state.compile(unit.ports)
    assert_holds(fake, unit, state)
    old, new = expected_flows(before, 7), expected_flows(after, 7)
    sent = fake.received[mark:]
    assert not [r for r in sent if r.type == ofp.OFPT_MULTIPART_REQUEST]   # no dump
    adds = {flow_of(r.msg)[0] for r in flow_mods(sent) if r.msg.command == ofp.OFPFC_ADD}
    assert adds == {k for k in new if old.get(k) != new[k]} and adds
    assert not [r for r in flow_mods(sent) if r.msg.command != ofp.OFPFC_ADD]
    assert applied(fake, log_mark, {"meter_add", "meter_modify", "meter_delete", "group_add",
                                    "group_modify", "group_delete"}) == [
        ("meter_add", m.entry_id(Feature.DHCP, 4)), ("group_modify", l2.flood_group_id(1))]
    assert unit.last_sync["kind"] == "incremental" and unit.last_sync["added"] == len(adds)

    # the VIF goes away again: its flows go by DELETE_STRICT, its meter only after them
    state.view = VIEW
    unit.port_changed(A4.port_name, None)
    mark, log_mark = len(fake.received), len(fake.log)
    unit.step("incremental")
    assert_holds(fake, unit, state)
    deletes = {(r.msg.table_id, r.msg.priority, tuple(sorted(r.msg.match.items())))
               for r in flow_mods(fake.received[mark:])
               if r.msg.command == ofp.OFPFC_DELETE_STRICT}
    assert deletes == set(new) - set(old)
    kinds = [e[0] for e in fake.log[log_mark:]]
    assert kinds.index("meter_delete") > kinds.index("bundle_commit")


def test_groups_are_added_children_first_and_deleted_parents_first(monkeypatch):
    """With flood chunks of one VIF, a network of two local VIFs gets a root group applying
    two chunk groups; the switch refuses a root before its chunks, and a chunk deleted while
    its root still applies it (OFPGMFC_CHAINED_GROUP)."""
    monkeypatch.setattr(l2, "FLOOD_CHUNK", 1)
    view = dataclasses.replace(VIEW, vifs=VIEW.vifs + (B2,))
    ports = {**PORTS, B2.port_name: 4}
    fake, state = FakeSwitch(), State(view)
    unit = unit_on(fake, state, ports)
    unit.step("full")
    assert_holds(fake, unit, state)
    beta_root, beta_1, beta_2 = (l2.flood_group_id(2, k) for k in range(3))
    assert fake.groups[beta_root].children == {beta_1, beta_2}
    adds = [e[1] for e in applied(fake, 0, {"group_add"})]
    assert adds.index(beta_root) > max(adds.index(beta_1), adds.index(beta_2))
    assert adds.index(l2.flood_group_id(1)) > adds.index(l2.flood_group_id(1, 1))

    # both beta VIFs unplugged: beta's flood flow goes (bundle), then root, then chunks
    unit.port_changed(B1.port_name, None)
    unit.port_changed(B2.port_name, None)
    mark = len(fake.log)
    unit.step("incremental")
    assert_holds(fake, unit, state)
    kinds = applied(fake, mark, {"group_delete", "bundle_commit", "meter_delete"})
    assert [e[0] for e in kinds] == ["bundle_commit"] + ["group_delete"] * 3 + [
        "meter_delete"] * 2
    assert kinds[1] == ("group_delete", beta_root)


def test_a_chained_flood_collapses_to_one_group_without_an_error(monkeypatch):
    monkeypatch.setattr(l2, "FLOOD_CHUNK", 1)
    view = dataclasses.replace(VIEW, vifs=VIEW.vifs + (B2,))
    fake, state = FakeSwitch(), State(view)
    unit = unit_on(fake, state, {**PORTS, B2.port_name: 4})
    unit.step("full")
    unit.port_changed(B2.port_name, None)   # beta: one local VIF left, no chunks needed
    mark = len(fake.log)
    unit.step("incremental")
    assert_holds(fake, unit, state)
    groups = applied(fake, mark, {"group_modify", "group_delete"})
    assert groups[0] == ("group_modify", l2.flood_group_id(2))
    assert sorted(groups[1:]) == [("group_delete", l2.flood_group_id(2, k)) for k in (1, 2)]
    unit.port_changed(B2.port_name, 4)      # and back: chunks added before the root points at them
    mark = len(fake.log)
    unit.step("incremental")
    assert_holds(fake, unit, state)
    assert applied(fake, mark, {"group_add", "group_modify"}) == [
        ("group_add", l2.flood_group_id(2, 1)), ("group_add", l2.flood_group_id(2, 2)),
        ("group_modify", l2.flood_group_id(2))]


# ---- audit and repair -------------------------------------------------------------------------

def test_audit_without_drift_is_true_and_sends_no_mods():
    fake, state = FakeSwitch(), State()
    unit = unit_on(fake, state, deep_audit_every=1)
    unit.step("full")
    mark, log_mark = len(fake.received), len(fake.log)
    assert unit.audit()
    unit.step("audit")
    assert {r.type for r in fake.received[mark:]} == {ofp.OFPT_MULTIPART_REQUEST}
    assert fake.log[log_mark:] == [] and unit.generation == 7


def test_audit_detects_deleted_flows_and_a_step_repairs_everything():
    fake, state = FakeSwitch(), State()
    unit = unit_on(fake, state)
    unit.step("full")
    fake.tamper_delete_all_flows()        # ovs-ofctl del-flows
    assert not unit.audit()
    unit.step("audit")
    assert_holds(fake, unit, state)
    assert unit.generation == 8 and unit.audit()


def test_audit_removes_a_foreign_sdn_cookie_flow_and_keeps_a_non_sdn_flow():
    fake, state = FakeSwitch(), State()
    unit = unit_on(fake, state)
    unit.step("full")
    foreign = fake.tamper_add_flow(0x5D99000000000042, table_id=99, match={"in_port": 5})
    other = fake.tamper_add_flow(0, table_id=99, match={"in_port": 6})
    assert not unit.audit()
    unit.step("audit")
    assert foreign not in fake.flows and other in fake.flows
    assert_holds(fake, unit, state)
    assert unit.audit()


def test_a_non_sdn_flow_alone_is_no_drift():
    fake, state = FakeSwitch(), State()
    unit = unit_on(fake, state)
    unit.step("full")
    fake.tamper_add_flow(0x1234, table_id=99, match={"in_port": 6})
    assert unit.audit()


def test_deep_audit_removes_a_stray_sdn_group():
    fake, state = FakeSwitch(), State()
    unit = unit_on(fake, state, deep_audit_every=1)
    unit.step("full")
    stray = m.entry_id(Feature.L2, 0xFFF0)
    fake.tamper_add_group(stray)
    fake.tamper_add_group(0x42)             # not sdn's: left alone
    assert not unit.audit()
    unit.step("audit")
    assert stray not in fake.groups and 0x42 in fake.groups
    del fake.groups[0x42]
    assert_holds(fake, unit, state)


# ---- one switch's failure is its own ---------------------------------------------------------

def test_a_rejected_bundle_fails_only_its_own_switch():
    """Switch A answers the bundle with an error carrying the xid of the bundle's first
    message; A's sync raises DatapathRejected naming it, A's tables stay as they were (atomic),
    while B's unit, on its own worker and switch thread, syncs completely."""
    reject = (ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_OUT_GROUP)
    fake_a = FakeSwitch(1, reject_next=reject, threaded=True)
    fake_b = FakeSwitch(2, threaded=True)
    state = State()
    unit_a = unit_on(fake_a, state)
    unit_b = unit_on(fake_b, state, start=True, audit_interval=60)
    try:
        with pytest.raises(DatapathRejected, match="OFPET_BAD_ACTION/OFPBAC_BAD_OUT_GROUP"):
            unit_a.step("full")
        bundle_adds = [r for r in fake_a.received if r.bundle_id is not None]
        assert fake_a.errors[0] == (bundle_adds[0].xid, "OFPET_BAD_ACTION/OFPBAC_BAD_OUT_GROUP")
        assert fake_a.sdn_flows() == {} and not unit_a.synced
        deadline = time.monotonic() + 5
        while not unit_b.synced and time.monotonic() < deadline:
            time.sleep(0.01)
        assert unit_b.synced
        assert_holds(fake_b, unit_b, state)
        # A's next (full) sync succeeds over the meters and groups it left behind
        fake_a.errors.clear()
        unit_a.step("full")
        assert_holds(fake_a, unit_a, state)
    finally:
        unit_b.close()
        unit_b.join(2)
        fake_a.stop()
        fake_b.stop()


def test_a_group_mod_the_switch_rejects_names_the_error():
    """A flood group deleted by hand before an audit noticed: the next incremental sync
    modifies a group the switch does not have (OFPGMFC_UNKNOWN_GROUP) and says so."""
    fake, state = FakeSwitch(), State()
    unit = unit_on(fake, state)
    unit.step("full")
    fake.groups.clear()
    state.view = dataclasses.replace(VIEW, revision=2, vifs=VIEW.vifs + (A4,))
    unit.port_changed(A4.port_name, 4)
    with pytest.raises(DatapathRejected, match="OFPET_GROUP_MOD_FAILED/OFPGMFC_UNKNOWN_GROUP"):
        unit.step("incremental")


# ---- a dead switch ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["silent", "dead"])
def test_close_ends_a_wait_at_once_and_stops_the_worker(kind):
    """The worker waits for a reply that never comes (a barrier after the meter/group mods of
    a switch that stopped answering, or the first request to a dead one); close() from another
    thread releases it at once (reply_timeout is 15 s) and the worker stops."""
    fake = FakeSwitch(ignore_barriers=True) if kind == "silent" else FakeSwitch(dead=True)
    unit = unit_on(fake, State(), start=True, reply_timeout=15)
    deadline = time.monotonic() + 5
    while (unit._waiter is None or not fake.received) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert unit._waiter is not None and unit._thread.is_alive()
    if kind == "silent":
        assert fake.received[-1].type == ofp.OFPT_BARRIER_REQUEST
    started = time.monotonic()
    closer = threading.Thread(target=unit.close)
    closer.start()
    unit.join(0.5)
    elapsed = time.monotonic() - started
    closer.join(1)
    assert not unit._thread.is_alive() and elapsed < 0.5
    with pytest.raises(DatapathGone):
        unit.step("full")


# ---- 5,000 VIFs in one network ---------------------------------------------------------------

def test_five_thousand_vifs_in_one_network_flood_and_sync():
    n = 5000
    net = NetworkView(1, "big", "10.0.0.0/16", "255.255.0.0", "10.0.0.1", "10.0.255.255",
                      vlan=100, project_id="p")
    vifs = tuple(VifView(f"{i:08x}-0000", f"fa:16:3e:00:{i >> 8:02x}:{i & 255:02x}", 1,
                         f"i{i}", f"i{i}", (f"10.0.{(i + 2) >> 8}.{(i + 2) & 255}",), "p",
                         port_security=False)
                 for i in range(n))
    state = State(StateView(1, {1: net}, vifs), CompileSettings())
    ports = {v.port_name: i + 1 for i, v in enumerate(vifs)}
    desired = state.compile(ports)
    for i, g in desired.groups.items():
        assert len(serialised(ofmsgs.group_mod(FakeSwitch(), g, i))) <= 0xFFFF
    root = desired.groups[l2.flood_group_id(1)]
    assert root.children and len(desired.groups) == len(root.children) + 1
    flood = trace(desired, {"in_port": 1, "eth_src": vifs[0].mac, "eth_dst": "ff:ff:ff:ff:ff:ff",
                            "eth_type": 0x0806, "arp_op": 1, "arp_sha": vifs[0].mac,
                            "arp_spa": "10.0.0.2", "arp_tpa": "10.0.0.3"})
    assert sorted(flood.outputs) == [(p, None) for p in range(2, n + 1)]

    fake = FakeSwitch()
    unit = unit_on(fake, state, ports, reply_timeout=30)
    unit.step("full")
    assert not fake.errors and not fake.collateral and fake.max_len <= 0xFFFF
    assert len(fake.sdn_flows()) == len(reconcile.index(desired.flows))
    assert set(fake.groups) == set(desired.groups)
    assert fake.groups[root.group_id].children == set(root.children)


# ---- races with other threads (bugs the fake found, fixed) ----------------------------------

def _sync_with_a_failing_packet_out(send_packet_out):
    """During the meter/group step, another thread sends a packet-out to a port the switch
    does not have (the public port just went away); the switch answers it with an error."""
    fake, state = FakeSwitch(ports=set(PORTS.values())), State()
    unit = unit_on(fake, state)
    sent = []

    def on_receive(r):
        if r.type == ofp.OFPT_GROUP_MOD and not sent:
            sent.append(True)
            send_packet_out(fake)

    fake.on_receive = on_receive
    unit.step("full")
    assert sent and fake.errors[0][1] == "OFPET_BAD_ACTION/OFPBAC_BAD_OUT_PORT"
    assert_holds_but_errors(fake, unit, state)


def assert_holds_but_errors(fake, unit, state):
    fake.errors.clear()
    assert_holds(fake, unit, state)


def test_a_failing_packet_out_with_xid_0_does_not_fail_a_sync():
    """DHCP replies go out as raw packet-outs with xid 0 (sdn/apps/dhcp_punt.py)."""
    _sync_with_a_failing_packet_out(
        lambda dp: dp.send(ofmsgs.packet_out_bytes(42, b"\xff" * 60)))


def test_a_failing_arp_probe_of_the_gateway_does_not_fail_a_sync():
    """The external gateway's ARP probe (sdn/apps/gateway.py) goes out with xid 0 too, so the
    error of a probe to a public port that just went away is not taken for the sync's."""
    from sdn.apps.gateway import GatewayLearner
    from sdn.flows.router import RouterSettings
    gateway = GatewayLearner(RouterSettings("172.30.0.2", external_gateway="172.30.0.1"),
                             lambda: [(probe_dp[0], 42)], lambda: None)
    probe_dp = []

    def probe(dp):
        probe_dp.append(dp)
        gateway.probe(time.time())

    _sync_with_a_failing_packet_out(probe)


class _ClosedMidBegin(FakeSwitch):
    """Calls ``unit.close()`` (as os-ken's thread would on EventOFPStateChange/DEAD) at the
    moment ``DatapathSync._begin`` reads ``dp.xid``: after its ``closed`` check, before it
    registers the waiter."""

    trigger = False

    @property
    def xid(self):
        if self.trigger:
            self.trigger = False
            self.unit.close()
        return self._xid

    @xid.setter
    def xid(self, value):
        self._xid = value


def test_close_between_the_closed_check_and_the_waiter_ends_the_wait_at_once():
    fake = _ClosedMidBegin(dead=True)
    unit = unit_on(fake, State(), reply_timeout=1)
    fake.trigger = True
    started = time.monotonic()
    try:
        with pytest.raises(DatapathGone):
            unit.step("full")
    finally:
        elapsed = time.monotonic() - started
    assert elapsed < 0.5


def test_drift_is_repaired_while_changes_keep_coming():
    """Audits are due every audit_interval even when incremental syncs never let the worker
    idle: flows deleted by hand come back although a change arrives every 0.1 s."""
    fake, state = FakeSwitch(threaded=True), State()
    unit = unit_on(fake, state, start=True, audit_interval=0.5)
    try:
        deadline = time.monotonic() + 5
        while not unit.synced and time.monotonic() < deadline:
            time.sleep(0.01)
        assert unit.synced and fake.flows                 # positive control: it synced
        installed = len(fake.flows)
        fake.tamper_delete_all_flows()
        started = time.monotonic()
        while len(fake.flows) < installed and time.monotonic() - started < 3:
            unit.request("incremental")                   # a state change every 0.1 s
            time.sleep(0.1)
        assert len(fake.flows) == installed, f"{len(fake.flows)} of {installed} after 3 s"
    finally:
        unit.close()
        unit.join(2)


def test_a_filtered_vif_that_goes_away_takes_its_conntrack_zone_with_it():
    """Its connections must not outlive it (a new VIF could get the zone): the zone is
    flushed (NXT_CT_FLUSH_ZONE) after the bundle that removed its flows; others' stay."""
    from sdn import firewall
    from tests.unit.test_flows import VIEW as FILTERED
    a4 = dataclasses.replace(A4, port_security=True, id=44)
    fake, state = FakeSwitch(), State(dataclasses.replace(FILTERED, vifs=FILTERED.vifs + (a4,)))
    ports = {**PORTS, a4.port_name: 4}
    unit = unit_on(fake, state, ports)
    unit.step("full")
    assert not [e for e in fake.log if e[0] == "ct_flush_zone"]
    state.view = FILTERED
    unit.port_changed(a4.port_name, None)
    log_mark = len(fake.log)
    unit.step("incremental")
    flushed = [e for e in fake.log[log_mark:] if e[0] == "ct_flush_zone"]
    assert flushed == [("ct_flush_zone", firewall.acl_zone(a4))]
    commit = max(i for i, e in enumerate(fake.log) if e[0] == "bundle_commit")
    assert fake.log.index(flushed[0]) > commit
    # once more at the next audit (a datapath flow cached before the bundle may have
    # re-created an entry), then never again
    log_mark = len(fake.log)
    unit.step("audit")
    unit.step("audit")
    assert [e for e in fake.log[log_mark:] if e[0] == "ct_flush_zone"] == flushed


# ---- liveness: echoes a switch leaves unanswered while it commits our bundle (issue 13) -------

def test_liveness_counts_unanswered_echoes_outside_a_bundle_commit_only():
    live = Liveness(max_misses=3)
    for xid in (1, 2, 3):
        live.echo_sent(xid)
    assert live.alive() and live.misses == 3
    live.echo_sent(4)
    assert not live.alive()                       # os-ken's rule: more than max_misses
    live.echo_answered(4)
    live.echo_answered(1)
    assert live.alive() and live.misses == 2
    # a commit in flight: however many echoes go unanswered, none counts ...
    live.commit_started()
    for xid in range(10, 30):
        live.echo_sent(xid)
    assert live.alive() and live.misses == 2      # ... but those sent before it still do
    live.commit_ended()                           # the switch was busy for us: forgiven
    assert live.alive() and live.misses == 2
    live.echo_sent(30)
    live.echo_sent(31)
    assert not live.alive()                       # after the commit, misses count again


def test_liveness_excuses_until_the_last_of_overlapping_commits_ends():
    live = Liveness(max_misses=1)
    live.commit_started()
    live.commit_started()
    for xid in range(5):
        live.echo_sent(xid)
    live.commit_ended()
    live.echo_sent(5)                 # one commit still outstanding: not counted
    assert live.alive() and live.misses == 0
    live.commit_ended()
    live.commit_ended()               # an extra end never makes the count negative
    live.echo_sent(6)
    live.echo_sent(7)
    assert not live.alive()


@pytest.mark.parametrize("reject", [None, (ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_OUT_GROUP)])
def test_a_bundle_commit_excuses_echoes_from_open_to_barrier(reject):
    """The sync unit holds the commit window open from the bundle's open to its barrier's
    answer (or failure): echoes sent meanwhile do not count, and the window closes after."""
    fake = FakeSwitch(reject_next=reject)
    fake.liveness = Liveness(max_misses=1)
    seen = []

    def echo_during_bundle(r):
        if r.bundle_id is not None or isinstance(r.msg, parser.ONFBundleCtrlMsg):
            fake.liveness.echo_sent(1000 + len(seen))     # unanswered: the switch is busy
            seen.append(fake.liveness.alive())
    fake.on_receive = echo_during_bundle
    unit = unit_on(fake, State())
    if reject:
        with pytest.raises(DatapathRejected):
            unit.step("full")
    else:
        unit.step("full")
    assert len(seen) > 2 and all(seen)
    assert fake.liveness.misses == 0
    fake.liveness.echo_sent(1)
    fake.liveness.echo_sent(2)
    assert not fake.liveness.alive()


# ---- streaming: an incremental sync's adds go into the open bundle while the compile runs ---

def _bundle_adds(received):
    return [r for r in received if r.bundle_id is not None]


def test_a_streamed_sync_sends_adds_before_the_compile_ends_and_groups_before_their_users(
        streaming):
    fake, state = FakeSwitch(), State()
    unit = unit_on(fake, state)
    unit.step("full")
    seen_at_compile_end = []

    class Watching(State):
        def compile(self, ports, flow_sink=None):
            desired = super().compile(ports, flow_sink)
            seen_at_compile_end.append(len(_bundle_adds(fake.received[mark:])))
            return desired
    watching = Watching(dataclasses.replace(VIEW, revision=2, vifs=VIEW.vifs + (A4,)))
    unit._compile = watching.compile
    unit.port_changed(A4.port_name, 4)
    mark = len(fake.received)
    unit.step("incremental")
    assert_holds(fake, unit, watching)
    sent = fake.received[mark:]
    assert (seen_at_compile_end[0] > 0) == streaming      # the switch had work meanwhile
    # a flow applying a group or meter is added only after the group/meter mods
    mods = [i for i, r in enumerate(sent)
            if isinstance(r.msg, (parser.OFPGroupMod, parser.OFPMeterMod))]
    users = [i for i, r in enumerate(sent) if r.bundle_id is not None and any(
        isinstance(inst, parser.OFPInstructionMeter) or any(
            isinstance(a, parser.OFPActionGroup) for a in getattr(inst, "actions", []))
        for inst in r.msg.instructions)]
    assert mods and users and max(mods) < min(users)


def test_a_streamed_duplicate_key_ends_as_its_last_version(streaming):
    """A later flow with the key of an earlier one wins (reconcile.index): when an earlier
    version was already streamed, the last one is added after it, also when the last equals
    what the switch held before (so the plain diff would not send it)."""
    fake, state = FakeSwitch(), State()
    unit = unit_on(fake, state)
    unit.step("full")
    installed = next(f for f in unit.installed.values() if f.feature == Feature.PORT_SECURITY
                     and not any(isinstance(a, (m.Group, m.Meter)) for a in f.actions))
    variant = dataclasses.replace(installed, actions=(), goto=None)     # same key: a drop

    class Duplicating(State):
        def compile(self, ports, flow_sink=None):
            if flow_sink is not None:
                flow_sink([variant])                 # streamed: it differs from the switch's
            desired = super().compile(ports, flow_sink)
            desired.flows.insert(0, variant)         # ... and the compile's own version wins
            return desired
    dup = Duplicating(dataclasses.replace(VIEW, revision=2, vifs=VIEW.vifs + (A4,)))
    unit._compile = dup.compile
    unit.port_changed(A4.port_name, 4)
    unit.step("incremental")
    assert_holds(fake, unit, dup)


def test_a_streamed_sync_without_group_or_meter_mods_waits_for_one_barrier(streaming):
    """Only flows change (a VIF's MAC): the commit's barrier answers for the streamed
    adds too, so the sync costs one round trip, as the batch path does."""
    fake, state = FakeSwitch(), State()
    unit = unit_on(fake, state)
    unit.step("full")
    vif = VIEW.vifs[0]
    state.view = dataclasses.replace(VIEW, revision=2, vifs=(
        dataclasses.replace(vif, mac="fa:16:3e:00:00:99"),) + VIEW.vifs[1:])
    mark, log_mark = len(fake.received), len(fake.log)
    unit.step("incremental")
    assert_holds(fake, unit, state)
    sent = fake.received[mark:]
    assert [r for r in sent if r.bundle_id is not None]
    assert len([r for r in sent if isinstance(r.msg, parser.OFPBarrierRequest)]) == 1
    assert not applied(fake, log_mark, {"meter_add", "meter_modify", "group_add", "group_modify"})


@pytest.mark.parametrize("backlog, answered", [(0, False), (10_000, True)])
def test_a_barrier_behind_a_backlog_of_flow_mods_gets_time_for_it(monkeypatch, backlog, answered):
    """The wait for a reply grows with the flow mods the switch may still be parsing
    (``SWITCH_SECONDS_PER_FLOW`` each): a streamed 380k-flow bundle outlasted the plain
    ``reply_timeout`` on a busy switch and its sync was retried forever."""
    fake = FakeSwitch()
    unit = unit_on(fake, State(), reply_timeout=0.1)
    waiter = unit._begin()
    timer = threading.Timer(0.3, waiter.done.set)     # the switch answers after 0.3 s
    monkeypatch.setattr(fake, "send_msg", lambda msg: timer.start())
    msg = fake.ofproto_parser.OFPBarrierRequest(fake)
    try:
        if answered:      # 0.1 s + 10,000 x 50 us = 0.6 s
            assert unit._wait(waiter, msg, "barrier", backlog=backlog) is waiter
        else:
            with pytest.raises(TimeoutError, match="within 0s"):
                unit._wait(waiter, msg, "barrier", backlog=backlog)
    finally:
        timer.cancel()
