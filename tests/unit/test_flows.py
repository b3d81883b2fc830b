"""Flow compilation, asserted by what packets do (sdn.flows.trace), not by flow text."""

import pytest

from tests.unit.views import open_view
from sdn.flows import reconcile
from sdn.flows.compiler import CompileSettings, bind_ports, compile_datapath
from sdn.flows.model import Feature, Table, cookie, describe_cookie
from sdn.flows.ofctl import render
from sdn.flows.trace import trace
from sdn.view import NetworkView, StateView, VifView

ALPHA = NetworkView(1, "alpha", "10.10.0.0/26", "255.255.255.192", "10.10.0.1", "10.10.0.63",
                    ("8.8.4.4",), vlan=100, project_id="alpha")
BETA = NetworkView(2, "beta", "10.10.0.64/26", "255.255.255.192", "10.10.0.65", "10.10.0.127",
                   vlan=101, project_id="beta")
A1 = VifView("aaaa1111-0000-0000-0000-000000000001", "fa:16:3e:00:00:a1", 1, "a1", "a1",
             ("10.10.0.4",), "alpha")
A2 = VifView("aaaa2222-0000-0000-0000-000000000002", "fa:16:3e:00:00:a2", 1, "a2", "a2",
             ("10.10.0.5",), "alpha")
A3 = VifView("aaaa3333-0000-0000-0000-000000000003", "fa:16:3e:00:00:a3", 1, "a3", "a3",
             ("10.10.0.6",), "alpha")
B1 = VifView("bbbb1111-0000-0000-0000-000000000001", "fa:16:3e:00:00:b1", 2, "b1", "b1",
             ("10.10.0.68",), "beta")
VIEW = open_view(1, {1: ALPHA, 2: BETA}, (A1, A2, A3, B1))
TRUNK = 9
# This datapath hosts a1 (port 1), a3 (port 3), b1 (port 2); a2 lives behind the trunk.
PORTS = {A1.port_name: 1, B1.port_name: 2, A3.port_name: 3, "s1-trunk": TRUNK, "other": 7}


def flows(view=VIEW, ports=PORTS):
    return compile_datapath(view, bind_ports(view, ports, frozenset({"s1-trunk"})))


def ipv4(vif, dst_mac, dst_ip, port, **extra):
    return {"in_port": port, "eth_src": vif.mac, "eth_dst": dst_mac, "eth_type": 0x0800,
            "ipv4_src": vif.addresses[0], "ipv4_dst": dst_ip, "ip_proto": 1, **extra}


def test_same_project_local_unicast_is_delivered_untagged():
    r = trace(flows(), ipv4(A1, A3.mac, "10.10.0.6", 1))
    assert r.outputs == [(3, None)]


def test_same_project_remote_unicast_leaves_on_trunk_with_project_vlan():
    r = trace(flows(), ipv4(A1, A2.mac, "10.10.0.5", 1))
    assert r.outputs == [(TRUNK, 100)]


def test_cross_project_unicast_is_dropped_even_with_right_mac():
    r = trace(flows(), ipv4(A1, B1.mac, "10.10.0.68", 1))
    assert r.dropped


def test_broadcast_floods_only_own_network_and_trunk_never_back_to_sender():
    r = trace(flows(), {"in_port": 1, "eth_src": A1.mac, "eth_dst": "ff:ff:ff:ff:ff:ff",
                        "eth_type": 0x0806, "arp_op": 1, "arp_sha": A1.mac,
                        "arp_spa": "10.10.0.4", "arp_tpa": "10.10.0.6"})
    assert sorted(r.outputs) == [(3, None), (TRUNK, 100)]


def test_trunk_frame_is_classified_by_tag_and_delivered_to_that_project_only():
    tagged = {"in_port": TRUNK, "vlan_vid": 0x1000 | 101, "eth_src": "fa:16:3e:00:00:b2",
              "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x0800}
    assert trace(flows(), tagged).outputs == [(2, None)]
    wrong_tag = {**tagged, "vlan_vid": 0x1000 | 555}
    assert trace(flows(), wrong_tag).dropped


def test_vlan_tagged_frame_from_instance_is_dropped():
    pkt = ipv4(A1, A3.mac, "10.10.0.6", 1, vlan_vid=0x1000 | 101)
    assert trace(flows(), pkt).dropped


def test_unknown_port_is_dropped():
    assert trace(flows(), ipv4(A1, A3.mac, "10.10.0.6", 7)).dropped


@pytest.mark.parametrize("dst_ip,dst_mac", [("255.255.255.255", "ff:ff:ff:ff:ff:ff"),
                                            ("10.10.0.1", ALPHA.gateway_mac)])
def test_dhcp_is_punted_broadcast_and_unicast_renewal(dst_ip, dst_mac):
    pkt = {"in_port": 1, "eth_src": A1.mac, "eth_dst": dst_mac, "eth_type": 0x0800,
           "ip_proto": 17, "ipv4_src": "10.10.0.4", "ipv4_dst": dst_ip, "udp_src": 68,
           "udp_dst": 67}
    r = trace(flows(), pkt)
    assert r.to_controller and not r.outputs


def test_dhcp_discover_from_unspecified_address_is_punted():
    pkt = {"in_port": 1, "eth_src": A1.mac, "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x0800,
           "ip_proto": 17, "ipv4_src": "0.0.0.0", "ipv4_dst": "255.255.255.255",
           "udp_src": 68, "udp_dst": 67}
    assert trace(flows(), pkt).to_controller


def test_gateway_arp_is_answered_in_the_switch():
    req = {"in_port": 1, "eth_src": A1.mac, "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x0806,
           "arp_op": 1, "arp_sha": A1.mac, "arp_spa": "10.10.0.4", "arp_tha": "00:00:00:00:00:00",
           "arp_tpa": "10.10.0.1"}
    r = trace(flows(), req)
    assert r.outputs == [(1, None)]
    p = r.packet
    assert (p["arp_op"], p["eth_src"], p["arp_sha"], p["arp_spa"]) == (
        2, ALPHA.gateway_mac, ALPHA.gateway_mac, "10.10.0.1")
    assert (p["eth_dst"], p["arp_tha"], p["arp_tpa"]) == (A1.mac, A1.mac, "10.10.0.4")


def test_other_projects_gateway_is_not_answered_and_not_delivered():
    req = {"in_port": 1, "eth_src": A1.mac, "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x0806,
           "arp_op": 1, "arp_sha": A1.mac, "arp_spa": "10.10.0.4", "arp_tpa": "10.10.0.65"}
    r = trace(flows(), req)
    assert 2 not in r.ports()


def test_flat_network_is_untagged_on_trunk():
    flat = NetworkView(3, "flat", "10.20.0.0/24", "255.255.255.0", "10.20.0.1", "10.20.0.255")
    f1 = VifView("ffff1111-0000", "fa:16:3e:00:00:f1", 3, "f1", "f1", ("10.20.0.4",))
    f2 = VifView("ffff2222-0000", "fa:16:3e:00:00:f2", 3, "f2", "f2", ("10.20.0.5",))
    view = open_view(1, {3: flat}, (f1, f2))
    fl = flows(view, {f1.port_name: 1, "s1-trunk": TRUNK})
    assert trace(fl, ipv4(f1, f2.mac, "10.20.0.5", 1)).outputs == [(TRUNK, None)]
    back = {"in_port": TRUNK, "eth_src": f2.mac, "eth_dst": f1.mac, "eth_type": 0x0800}
    assert trace(fl, back).outputs == [(1, None)]


def test_every_used_table_ends_in_an_explicit_default():
    defaults = {(int(f.table), f.goto) for f in flows().flows if f.priority == 0}
    assert defaults == {(0, None), (10, None), (20, Table.SERVICES), (21, Table.EGRESS_ACL_DROP),
                        (22, Table.EGRESS_ACL_DROP), (23, Table.SERVICES), (24, None),
                        (30, Table.L2_LOOKUP), (50, None), (60, Table.OUTPUT),
                        (61, Table.INGRESS_ACL_DROP), (62, Table.INGRESS_ACL_DROP),
                        (63, Table.OUTPUT), (64, None), (70, None)}


def test_cookie_names_feature_and_generation():
    c = cookie(Feature.L2, 7)
    assert hex(c) == "0x5d06000000000007"
    assert describe_cookie(c) == "l2 gen 7"
    assert describe_cookie(0x1234) == "foreign"


def test_render_is_ovs_ofctl_syntax():
    text = [render(f, 3) for f in flows().flows]
    assert any(t.startswith("cookie=0x5d04000000000003,table=30,priority=300,")
               and "actions=controller(max_len=65535)" in t for t in text)


def test_incremental_plan_touches_only_what_changed():
    before = reconcile.index(flows().flows)
    a4 = VifView("aaaa4444-0000-0000-0000-000000000004", "fa:16:3e:00:00:a4", 1, "a4", "a4",
                 ("10.10.0.7",), "alpha")
    view = open_view(2, VIEW.networks, VIEW.vifs + (a4,))
    after_desired = flows(view, {**PORTS, a4.port_name: 4})
    after = reconcile.index(after_desired.flows)
    plan = reconcile.plan_incremental(before, after)
    assert not plan.deletes
    touched_ports = {dict(f.match).get("in_port", dict(f.match).get("reg5")) for f in plan.adds}
    # new VIF's own flows (its lookup and output too); the flood flow stays, its group changes
    assert touched_ports <= {4, None}
    assert not any(f.table == Table.L2_LOOKUP and f.priority == 50 for f in plan.adds)
    groups = reconcile.plan_groups(flows().groups, after_desired.groups)
    # the network's two flood groups (ARP and the rest; IP through the ingress ACL)
    assert not groups.add and not groups.delete and len(groups.modify) == 2
    assert (4, None) in trace(after_desired, {"in_port": 1, "eth_src": A1.mac,
                                              "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x0806,
                                              "arp_op": 1, "arp_sha": A1.mac,
                                              "arp_spa": "10.10.0.4",
                                              "arp_tpa": "10.10.0.7"}).outputs
    assert reconcile.plan_incremental(after, after).adds == []
    back = reconcile.plan_incremental(after, before)
    assert back.deletes and all(f.key not in before for f in back.deletes)


def test_full_plan_deletes_only_stale_sdn_generations():
    desired = reconcile.index(flows().flows)
    installed = [cookie(Feature.L2, 5), cookie(Feature.L2, 6), cookie(Feature.DHCP, 6), 0x0,
                 0xABCD]
    plan = reconcile.plan_full(desired, installed, generation=6)
    assert plan.stale_cookies == [cookie(Feature.L2, 5)]
    assert len(plan.adds) == len(desired)


def _router_desired():
    from tests.unit.test_router import RS
    from sdn.view import FloatingView
    view = open_view(1, VIEW.networks, VIEW.vifs, (FloatingView("172.30.0.65", "10.10.0.4", 1),))
    ports = {**PORTS, "pub": 8, "relay": 6}
    binding = bind_ports(view, ports, frozenset({"s1-trunk"}), "pub", frozenset({"relay"}))
    return compile_datapath(view, binding, CompileSettings(dhcp_rate_pps=10, relay_rate_pps=100,
                                                           router=RS))


def test_every_jump_is_declared_in_the_pipeline_and_goto_only_moves_forward():
    from sdn.flows import pipeline
    from sdn.flows.model import Ct, Group, Resubmit
    desired = _router_desired()
    assert desired.meters and desired.groups      # the rich view exercises every feature
    for f in desired.flows:
        jumps = ([f.goto] if f.goto is not None else []) + \
                [a.table for a in f.actions if isinstance(a, (Ct, Resubmit)) and a.table is not None]
        for target in jumps:
            assert target in pipeline.successors(f.table), f"{f.table.label} -> {target.label}: {f}"
        if f.goto is not None:
            assert f.goto > f.table
        for a in f.actions:
            if isinstance(a, Group):
                assert a.group_id in desired.groups
    for g in desired.groups.values():
        for bucket in g.buckets:
            for a in bucket:
                if isinstance(a, Resubmit):
                    assert a.table in pipeline.successors(Table.L2_LOOKUP)
                if isinstance(a, Group):
                    assert a.group_id in desired.groups


def test_every_table_has_one_default_and_the_pipeline_declares_it():
    from sdn.flows import pipeline
    defaults = [f for f in _router_desired().flows if f.priority == 0]
    assert sorted(int(f.table) for f in defaults) == sorted(int(s.table) for s in pipeline.STAGES)
    assert {f.table: f.goto for f in defaults} == {s.table: pipeline.miss_goto(s)
                                                   for s in pipeline.STAGES}


def test_compilation_is_deterministic_across_hash_seeds():
    """Set/dict order must not leak into the compiled output: compile in two processes with
    different PYTHONHASHSEEDs and compare the rendered flows and groups."""
    import os
    import subprocess
    import sys
    code = ("from tests.unit.test_flows import _router_desired; from sdn.flows.ofctl import render;"
            "d = _router_desired(); print('\\n'.join(render(f, 1) for f in d.flows));"
            "print(sorted((i, repr(g)) for i, g in d.groups.items()))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2", "3")}
    assert len(outs) == 1


def test_a_feature_that_filters_ingress_gets_flood_copies_and_unicast_through_its_stage(monkeypatch):
    """The seam security groups will use: a feature module with ``compile`` and
    ``ingress_filtered`` (one line in FEATURES) sees both unicast and flood copies to its ports,
    and only to its ports; the others' flood copies go straight out."""
    import types

    from sdn.flows import compiler, pipeline
    from sdn.flows.model import Reg, flow
    deny_a3 = types.SimpleNamespace(
        compile=lambda dp: [flow(Feature.PIPELINE, Table.INGRESS_ACL, 1000, {Reg.DST_PORT: 3})],
        ingress_filtered=lambda dp: {3})
    monkeypatch.setattr(compiler, "FEATURES", compiler.FEATURES + (deny_a3,))
    desired = flows()
    bcast = ipv4(A1, "ff:ff:ff:ff:ff:ff", "10.10.0.63", 1)
    r = trace(desired, bcast)
    assert sorted(r.outputs) == [(TRUNK, 100)]                 # a3's copy met the ACL's drop
    assert trace(desired, ipv4(A1, A3.mac, "10.10.0.6", 1)).dropped
    arp = {"in_port": 1, "eth_src": A1.mac, "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x0806,
           "arp_op": 1, "arp_sha": A1.mac, "arp_spa": "10.10.0.4", "arp_tpa": "10.10.0.6"}
    assert sorted(trace(desired, arp).outputs) == [(3, None), (TRUNK, 100)]   # ARP: no ACL
    # positive control: without the feature the same frames reach a3
    monkeypatch.setattr(compiler, "FEATURES", compiler.FEATURES[:-1])
    assert sorted(trace(flows(), bcast).outputs) == [(3, None), (TRUNK, 100)]
    # copies of the plain (non-IP) flood cost no resubmit: straight outputs in the bucket
    plain = [g for g in flows().groups.values() if not g.group_id & 0x8]
    assert plain and all(pipeline.Table.INGRESS_ACL not in {getattr(a, "table", None) for a in b}
                         for g in plain for b in g.buckets)


def test_a_flood_beyond_the_switchs_resubmit_limit_is_dropped_whole_as_ovs_does(monkeypatch):
    """trace models OVS's 4,096-resubmit translation limit, so a design that needs more per
    flood fails in unit tests (it did: 5,000 filtered copies reach nobody on real OVS)."""
    import types

    from sdn.flows import compiler
    from sdn.flows.trace import RESUBMITS_MAX
    n = RESUBMITS_MAX // 2 + 10
    vifs = tuple(VifView(f"cccc{i:04d}-0000", f"fa:16:3e:01:{i >> 8:02x}:{i & 255:02x}", 1, f"c{i}",
                         f"c{i}", ("10.10.0.9",) if i == 0 else (), "alpha") for i in range(n))
    view = open_view(1, {1: ALPHA}, vifs)
    ports = {v.port_name: i + 1 for i, v in enumerate(vifs)}
    every = types.SimpleNamespace(compile=lambda dp: [], ingress_filtered=lambda dp: set(dp.binding.vifs))
    monkeypatch.setattr(compiler, "FEATURES", compiler.FEATURES + (every,))
    src = vifs[0]
    bcast = {"in_port": 1, "eth_src": src.mac, "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x0800,
             "ipv4_src": "10.10.0.9", "ipv4_dst": "255.255.255.255", "ip_proto": 17,
             "udp_src": 5000, "udp_dst": 5000}
    desired = compile_datapath(view, bind_ports(view, ports, frozenset()))
    r = trace(desired, bcast)
    assert r.failed and r.dropped
    # positive control: an ARP flood (plain group, no ACL) reaches every other port
    arp = {"in_port": 1, "eth_src": src.mac, "eth_dst": "ff:ff:ff:ff:ff:ff", "eth_type": 0x0806,
           "arp_op": 1, "arp_sha": src.mac, "arp_spa": "0.0.0.0", "arp_tpa": "10.10.0.9"}
    r = trace(desired, arp)
    assert not r.failed and len(r.outputs) == n - 1


def test_a_networks_flood_group_keeps_its_id_when_other_networks_come_and_go():
    """Groups change before the flow bundle that stops using them: an id that moved to another
    network would flood one tenant's broadcasts to another's VIFs in between."""
    only_beta = flows(VIEW, {B1.port_name: 2})
    both = flows(VIEW, {A1.port_name: 1, B1.port_name: 2})
    beta_flood = [f for f in only_beta.flows if f.table == Table.L2_LOOKUP and f.priority == 50]
    assert beta_flood and all(f in both.flows for f in beta_flood)
    shared = set(only_beta.groups) & set(both.groups)
    assert shared and all(only_beta.groups[g] == both.groups[g] for g in shared)


def test_flood_slots_are_stable_and_collisions_resolve_in_id_order():
    from sdn.flows.l2 import flood_slots
    assert flood_slots([7, 3]) == {3: 3, 7: 7}
    assert flood_slots([4096 + 3, 3]) == {3: 3, 4099: 4}
