"""Bandwidth limits per VIF: the compiled meters and flows (sdn.flows.qos), the meter encoders
(ofmsgs, ofctl, the fake switch) and the reconcile of meters in kbit/s, the tc plan of the
Linux backend (sdn.linux.tc), and the state/CLI side (manager.set_bandwidth)."""

import dataclasses

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp

from sdn import exception
from sdn.apps import ofmsgs
from sdn.flows import classifier, qos, reconcile
from sdn.flows import model as m
from sdn.flows.compiler import CompileSettings, bind_ports, compile_datapath
from sdn.flows.model import Feature, Table
from sdn.flows.ofctl import render_meter
from sdn.flows.trace import trace
from sdn.linux import tc
from tests.unit.fakeswitch import FakeSwitch
from tests.unit.test_datapath_sync import VIEW, State, assert_holds, applied, unit_on
from tests.unit.test_flows import A1, A3, B1, PORTS, ipv4

A1_PLAIN = next(v for v in VIEW.vifs if v.uuid == A1.uuid)   # as the engine tests see a1
LIMITED = dataclasses.replace(A1_PLAIN, rx_kbps=20_000, tx_kbps=5_000)


def limited_view(a1=LIMITED, revision=2):
    return dataclasses.replace(VIEW, revision=revision,
                               vifs=tuple(a1 if v.uuid == A1.uuid else v for v in VIEW.vifs))


def compiled(view):
    return compile_datapath(view, bind_ports(view, PORTS, frozenset({"s1-trunk"})),
                            CompileSettings(dhcp_rate_pps=50))


def qos_meters(desired):
    return {i: e for i, e in desired.meters.items() if e.feature == Feature.QOS}


# ---- compile ---------------------------------------------------------------------------------

def test_limited_vif_gets_a_kbps_meter_per_direction_keyed_by_ofport():
    meters = qos_meters(compiled(limited_view()))
    tx, rx = qos.tx_meter_id(1), qos.rx_meter_id(1)
    assert tx == 0x5D090001 and rx == 0x5D098001
    assert meters == {
        tx: m.MeterEntry(Feature.QOS, tx, 5_000, m.KBPS, qos.burst_kbit(5_000)),
        rx: m.MeterEntry(Feature.QOS, rx, 20_000, m.KBPS, qos.burst_kbit(20_000))}
    assert meters[rx].burst_size == 20_000 * qos.BURST_MS // 1000
    assert qos.burst_kbit(10) == qos.BURST_MIN_KBIT


def test_unlimited_vifs_compile_exactly_as_before():
    plain, limited = compiled(VIEW), compiled(limited_view())
    assert not qos_meters(plain) and not [f for f in plain.flows if f.feature == Feature.QOS]
    others = [f for f in limited.flows if f.feature != Feature.QOS]
    assert sorted(others, key=repr) == sorted(plain.flows, key=repr)


def test_what_the_vif_sends_and_receives_passes_its_meters_and_goes_where_it_went():
    desired, plain = compiled(limited_view()), compiled(VIEW)
    pkt = ipv4(A1, A3.mac, "10.10.0.6", 1)            # a1 (port 1) -> a3 (port 3)
    r = trace(desired, pkt)
    assert r.outputs == trace(plain, pkt).outputs == [(3, None)]
    metered = [a.meter_id for f in r.path for a in f.actions if isinstance(a, m.Meter)]
    assert metered == [qos.tx_meter_id(1)]
    assert r.path[0].table == Table.CLASSIFY and r.path[0].feature == Feature.QOS
    back = trace(desired, ipv4(A3, A1.mac, "10.10.0.4", 3))   # a3 -> a1: a1's rx meter
    assert back.outputs == [(1, None)]
    assert [a.meter_id for f in back.path for a in f.actions
            if isinstance(a, m.Meter)] == [qos.rx_meter_id(1)]
    assert back.path[-1].table == Table.OUTPUT and back.path[-1].feature == Feature.QOS


def test_the_tx_flow_is_the_classifier_flow_plus_the_meter_one_priority_higher():
    (cls,) = classifier.compile_vif(1, VIEW.networks[1])
    (f,) = [f for f in compiled(limited_view()).flows
            if f.feature == Feature.QOS and f.table == Table.CLASSIFY]
    assert f.match == cls.match and f.goto == cls.goto and f.priority == cls.priority + 1
    assert f.actions == (m.Meter(qos.tx_meter_id(1)),) + cls.actions


def test_one_direction_only_and_ofports_beyond_the_index_range():
    rx_only = dataclasses.replace(A1_PLAIN, rx_kbps=1000)
    meters = qos_meters(compiled(limited_view(rx_only)))
    assert list(meters) == [qos.rx_meter_id(1)]
    assert qos.limited(qos.MAX_OFPORT, LIMITED) and not qos.limited(qos.MAX_OFPORT + 1, LIMITED)
    assert not qos.limited(1, A1)


# ---- encoders and reconcile ------------------------------------------------------------------

def test_meter_encoders_agree_on_unit_rate_and_burst():
    entry = m.MeterEntry(Feature.QOS, qos.rx_meter_id(4), 20_000, m.KBPS, 16_000)
    msg = ofmsgs.meter_mod(None, entry.meter_id, entry, ofp.OFPMC_ADD)
    assert msg.flags == ofp.OFPMF_KBPS | ofp.OFPMF_BURST
    (band,) = msg.bands
    assert (band.rate, band.burst_size) == (20_000, 16_000)
    assert ofmsgs.meter_spec(msg) == entry.spec == ("kbps", 20_000, 16_000)
    assert render_meter(entry) == (f"meter={entry.meter_id},kbps,burst,band=type=drop,"
                                   "rate=20000,burst_size=16000")
    pps = m.MeterEntry(Feature.DHCP, 5, 100)      # the DHCP meters keep their encoding
    msg = ofmsgs.meter_mod(None, 5, pps)
    assert msg.flags == ofp.OFPMF_PKTPS | ofp.OFPMF_BURST and msg.bands[0].burst_size == 10
    assert render_meter(pps) == "meter=5,pktps,burst,band=type=drop,rate=100,burst_size=10"
    assert ofmsgs.meter_mod(None, 5, None, ofp.OFPMC_DELETE).bands == []


def test_plan_meters_modifies_on_rate_unit_or_burst():
    e = m.MeterEntry(Feature.QOS, 1, 1000, m.KBPS, 800)
    assert not reconcile.plan_meters({1: e.spec}, {1: e}).modify
    for other in (("pktps", 1000, 800), ("kbps", 1000, 100), ("kbps", 2000, 800), None):
        assert reconcile.plan_meters({1: other}, {1: e}).modify == {1: e}
    plan = reconcile.plan_meters({2: e.spec}, {1: e})
    assert plan.add == {1: e} and plan.delete == [2]


def test_sync_installs_changes_and_removes_the_kbps_meters():
    fake, state = FakeSwitch(), State(view=limited_view())
    unit = unit_on(fake, state)
    unit.step("full")
    assert_holds(fake, unit, state)
    held = fake.meters[qos.rx_meter_id(1)]
    assert held.flags & ofp.OFPMF_KBPS and held.bands[0].burst_size == qos.burst_kbit(20_000)
    mark = len(fake.log)
    state.view = limited_view(dataclasses.replace(LIMITED, rx_kbps=30_000), revision=3)
    unit.step("incremental")
    assert applied(fake, mark, {"meter_add", "meter_modify", "meter_delete"}) == [
        ("meter_modify", qos.rx_meter_id(1))]
    assert_holds(fake, unit, state)
    mark = len(fake.log)
    state.view = dataclasses.replace(VIEW, revision=4)
    unit.step("incremental")
    assert sorted(applied(fake, mark, {"meter_delete"})) == sorted(
        [("meter_delete", qos.tx_meter_id(1)), ("meter_delete", qos.rx_meter_id(1))])
    assert_holds(fake, unit, state)
    # a full sync reads the switch's meters back (unit, rate, burst): nothing to change
    mark = len(fake.log)
    unit.step("full")
    assert not applied(fake, mark, {"meter_add", "meter_modify", "meter_delete"})


# ---- Linux: tc plan ---------------------------------------------------------------------------

def test_tc_plan_covers_present_limited_ports_only():
    view = limited_view()
    assert tc.plan(view, {A1.port_name, B1.port_name}) == {
        A1.port_name: tc.Limits(20_000, 5_000)}
    assert tc.plan(view, {B1.port_name}) == {}


def test_tc_commands_shape_both_ways_and_undo():
    port = A1.port_name
    ifb = tc.ifb_name(port)
    assert ifb == "ifb" + A1.uuid[:11] and len(ifb) <= 15
    cmds = tc.commands(port, tc.Limits(20_000, 5_000), tc.Limits())
    text = [" ".join(c) for c in cmds]
    assert f"tc qdisc replace dev {port} root handle 1: htb default 1" in text
    assert any(t.startswith(f"tc class replace dev {port} parent 1: classid 1:1 htb rate "
                            "20000kbit ceil 20000kbit") for t in text)
    assert f"ip link add {ifb} type ifb" in text
    assert any(t.startswith(f"tc class replace dev {ifb} ") and "rate 5000kbit" in t for t in text)
    assert text[-1].endswith(f"mirred egress redirect dev {ifb}")
    # the IFB exists before the filter that redirects to it
    assert text.index(f"ip link add {ifb} type ifb") < len(text) - 1
    assert tc.commands(port, tc.Limits(20_000, 5_000), tc.Limits(20_000, 5_000)) == []
    change = [" ".join(c) for c in tc.commands(port, tc.Limits(10_000, 5_000),
                                               tc.Limits(20_000, 5_000))]
    assert len(change) == 2 and all(f"dev {port} " in c for c in change)
    undo = [" ".join(c) for c in tc.commands(port, tc.Limits(), tc.Limits(20_000, 5_000))]
    assert undo == [f"tc qdisc del dev {port} root", f"tc qdisc del dev {port} ingress",
                    f"ip link del {ifb}"]


@pytest.mark.parametrize("shown, kbps", [
    ("class htb 1:1 root prio 0 rate 20Mbit ceil 20Mbit burst 1600b cburst 1600b", 20_000),
    ("class htb 1:1 root prio 0 rate 1234Kbit ceil 1234Kbit burst 1600b", 1234),
    ("class htb 1:1 root prio 0 rate 10Gbit ceil 10Gbit", 10_000_000),
    ("class htb 1:2 root prio 0 rate 20Mbit", None),
    ("", None)])
def test_tc_rate_read_back(shown, kbps):
    assert tc.parse_rate(shown) == kbps


# ---- state and CLI ---------------------------------------------------------------------------

def test_set_bandwidth_changes_clears_and_checks(make_manager):
    mgr = make_manager("flatdhcp")
    mgr.create_networks("net", "10.0.0.0/24", 1, 256)
    mgr.allocate_for_instance("vm1", "p", rx_kbps=20_000)
    assert mgr.show_bandwidth("vm1") == {"instance": "vm1", "rx_kbps": 20_000, "tx_kbps": None}
    assert mgr.set_bandwidth("vm1", tx_kbps=5_000)["tx_kbps"] == 5_000
    assert mgr.set_bandwidth("vm1", rx_kbps=0) == {"instance": "vm1", "rx_kbps": None,
                                                    "tx_kbps": 5_000}
    with pytest.raises(exception.Invalid, match="--rx-kbps"):
        mgr.set_bandwidth("vm1", rx_kbps=-1)
    with pytest.raises(exception.Invalid, match="--tx-kbps"):
        mgr.allocate_for_instance("vm2", "p", tx_kbps=10**9)
    with pytest.raises(exception.Invalid, match="give --rx-kbps"):
        mgr.set_bandwidth("vm1")
    with pytest.raises(exception.InstanceNotFound):
        mgr.set_bandwidth("nope", rx_kbps=1)
    from sdn.db import api as db
    (vif,) = db.load_views(mgr.engine).vifs
    assert (vif.rx_kbps, vif.tx_kbps) == (None, 5_000)


def test_tc_apply_reads_once_and_touches_only_what_differs(monkeypatch):
    """apply() against a scripted kernel: one qdisc listing, class reads for shaped ports only,
    commands for the ports whose limits differ, the IFB of a vanished port deleted."""
    a, b, c = "tap" + "a" * 11, "tap" + "b" * 11, "tap" + "c" * 11
    kernel = {("tc", "qdisc", "show"): (
        f"qdisc htb 1: dev {a} root refcnt 3 r2q 10 default 0x1\n"
        f"qdisc noqueue 0: dev {b} root refcnt 2\n"
        f"qdisc htb 1: dev {tc.ifb_name(a)} root refcnt 2 r2q 10 default 0x1\n"
        f"qdisc ingress ffff: dev {a} parent ffff:fff1 ----------------\n"),
        ("tc", "class", "show", "dev", a): "class htb 1:1 root prio 0 rate 20Mbit ceil 20Mbit",
        ("tc", "class", "show", "dev", tc.ifb_name(a)): "class htb 1:1 root rate 5Mbit"}
    ran = []

    def run(cmd, check=True):
        ran.append(tuple(cmd))
        return kernel.get(tuple(cmd), "")
    monkeypatch.setattr(tc, "_run", run)
    links = {a, b, tc.ifb_name(a), tc.ifb_name(c)}
    assert tc.apply({a: tc.Limits(20_000, 5_000)}, links) == [
        f"deleted {tc.ifb_name(c)} (its port is gone)"]
    assert ran[0] == ("tc", "qdisc", "show") and not [r for r in ran if b in r]
    ran.clear()
    changes = tc.apply({b: tc.Limits(rx_kbps=1_000)}, links - {tc.ifb_name(c)})
    assert changes == [f"tc {a}: receives unlimited, sends unlimited (kbit/s)",
                       f"tc {b}: receives 1000, sends unlimited (kbit/s)"]
    assert ("tc", "qdisc", "del", "dev", a, "root") in ran
    assert ("ip", "link", "del", tc.ifb_name(a)) in ran
    assert ("tc", "qdisc", "replace", "dev", b, "root", "handle", "1:", "htb", "default", "1") in ran


def test_rxtx_factor_times_rxtx_base(make_manager):
    from types import SimpleNamespace

    from sdn import cli, manager
    assert manager.rxtx_kbps(2.0, 10_000) == 20_000 and manager.rxtx_kbps(1e-9, 10) == 1
    with pytest.raises(exception.Invalid, match="rxtx_base"):
        manager.rxtx_kbps(1.0, 0)
    with pytest.raises(exception.Invalid, match="above 0"):
        manager.rxtx_kbps(0.0, 10_000)
    conf = SimpleNamespace(rxtx_base=10_000)
    args = cli.build_parser().parse_args(["instance", "set-bandwidth", "vm", "--rxtx-factor",
                                          "1.5", "--tx-kbps", "0"])
    assert cli._limits(args, conf) == (15_000, 0)      # an explicit rate wins over the factor
    args = cli.build_parser().parse_args(["instance", "launch", "vm", "--project", "p",
                                          "--rx-kbps", "300"])
    assert cli._limits(args, conf) == (300, None)
