"""The incremental compiler (``sdn.flows.incremental``) against the reference
``compile_datapath``: for random sequences of state changes (VIFs added, removed, changed;
networks, security groups and rules with and without remote groups, provider rules, trunks,
relay and public ports, floating IPs, rates), both give the same flows, meters and groups at
every step, and the diff derived from the changed keys equals the full diff."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings, strategies as st

from sdn.flows import reconcile
from sdn.flows.compiler import Binding, CompileSettings, compile_datapath
from sdn.flows.context import RouterSettings
from sdn.flows.incremental import IncrementalCompiler
from sdn.view import (FloatingView, NetworkView, ProviderRuleView, RuleView, SecurityGroupView,
                      StateView, VifView)

NETWORKS = {
    1: NetworkView(1, "alpha", "10.10.0.0/26", "255.255.255.192", "10.10.0.1", "10.10.0.63",
                   vlan=100, project_id="p1", host="h1"),
    2: NetworkView(2, "beta", "10.10.0.64/26", "255.255.255.192", "10.10.0.65", "10.10.0.127",
                   vlan=101, project_id="p2", cidr_v6="fd00:0:0:2::/64",
                   gateway_v6="fd00:0:0:2::1", ipv6_ra_mode="slaac",
                   ipv6_address_mode="slaac"),
    3: NetworkView(3, "gamma", "10.20.0.0/24", "255.255.255.0", "10.20.0.1", "10.20.0.255",
                   project_id="p1", host="h2"),
}
ROUTER = RouterSettings("172.30.0.2", external_gateway="172.30.0.1",
                        external_gateway_mac="02:00:00:00:30:01", host="h1")


def vif(i: int, net: int, secure: bool = True, groups: tuple = (1,), rx: int | None = None,
        pair: bool = False) -> VifView:
    base = {1: "10.10.0.", 2: "10.10.0.", 3: "10.20.0."}[net]
    offset = {1: 2, 2: 66, 3: 2}[net]
    v6 = (f"fd00:0:0:2::{i:x}",) if net == 2 else ()
    return VifView(f"{i:08x}-0000-0000-0000-000000000000", f"fa:16:3e:00:00:{i:02x}", net,
                   f"i{i}", f"i{i}", (f"{base}{offset + i}",), f"p{net}", port_security=secure,
                   id=i, security_groups=groups, rx_kbps=rx, tx_kbps=rx,
                   allowed_address_pairs=(("fa:16:3e:00:01:01", "10.99.0.0/24"),) if pair else (),
                   addresses_v6=v6)


RULES = {
    "ssh": RuleView(11, "ingress", "IPv4", 6, 22, 22, "0.0.0.0/0"),
    "web": RuleView(12, "ingress", "IPv4", 6, 80, 90, "10.0.0.0/8"),
    "out": RuleView(13, "egress", "IPv4"),
    "out6": RuleView(14, "egress", "IPv6"),
    "remote": RuleView(15, "ingress", "IPv4", 17, 53, 53, remote_group=2),
    "icmp": RuleView(16, "ingress", "IPv4", 1, 8, None),
}

# one mutation of the state spec; a spec is a dict: vifs {port: args}, groups, provider, ...
mutation = st.one_of(
    st.tuples(st.just("add"), st.integers(1, 12), st.integers(1, 3), st.booleans(),
              st.sampled_from([(), (1,), (2,), (1, 2)]), st.sampled_from([None, 0, 1000]),
              st.booleans()),
    st.tuples(st.just("remove"), st.integers(1, 12)),
    st.tuples(st.just("rules"), st.integers(1, 2), st.sets(st.sampled_from(sorted(RULES)))),
    st.tuples(st.just("stateful"), st.integers(1, 2), st.booleans()),
    st.tuples(st.just("provider"), st.booleans()),
    st.tuples(st.just("trunks"), st.sampled_from([(), (100,), (100, 101)])),
    st.tuples(st.just("relays"), st.sampled_from([(), (200,)])),
    st.tuples(st.just("public"), st.booleans()),
    st.tuples(st.just("rate"), st.sampled_from([None, 50]), st.sampled_from([None, 10])),
    st.tuples(st.just("network"), st.integers(1, 3), st.sampled_from([None, "h1", "h2"])),
    st.tuples(st.just("floating"), st.booleans()),
    st.tuples(st.just("same_net"), st.booleans()),
    st.tuples(st.just("fresh"),),    # a full reload: equal state, new objects
)


class Spec:
    def __init__(self):
        self.vifs: dict[int, tuple] = {}
        self.rules = {1: {"ssh", "out"}, 2: {"out"}}
        self.stateful = {1: True, 2: True}
        self.provider = False
        self.trunks: tuple = ()
        self.relays: tuple = ()
        self.public = False
        self.rates = (None, None)
        self.hosts = {nid: n.host for nid, n in NETWORKS.items()}
        self.floating = False
        self.same_net = True
        self.objects: dict = {}      # spec -> object of the last view (stable identities)

    def apply(self, m: tuple) -> None:
        kind = m[0]
        if kind == "add":
            self.vifs[m[1]] = m[2:]
        elif kind == "remove":
            self.vifs.pop(m[1], None)
        elif kind == "rules":
            self.rules[m[1]] = set(m[2])
        elif kind == "stateful":
            self.stateful[m[1]] = m[2]
        elif kind == "provider":
            self.provider = m[1]
        elif kind == "trunks":
            self.trunks = m[1]
        elif kind == "relays":
            self.relays = m[1]
        elif kind == "public":
            self.public = m[1]
        elif kind == "rate":
            self.rates = m[1:]
        elif kind == "network":
            self.hosts[m[1]] = m[2]
        elif kind == "floating":
            self.floating = m[1]
        elif kind == "same_net":
            self.same_net = m[1]
        elif kind == "fresh":
            self.objects = {}

    def _stable(self, key, make):
        """The same object for the same spec, as an incremental view reload keeps them."""
        if key not in self.objects:
            self.objects[key] = make()
        return self.objects[key]

    def build(self, revision: int):
        nets = {nid: self._stable(("net", nid, self.hosts[nid]),
                                  lambda n=n, nid=nid: dataclasses.replace(n, host=self.hosts[nid]))
                for nid, n in NETWORKS.items()}
        ports = {}
        for port, (net, secure, groups, rx, pair) in sorted(self.vifs.items()):
            ports[port] = self._stable(("vif", port, net, secure, groups, rx, pair),
                                       lambda: vif(port, net, secure, groups, rx or None, pair))
        groups = {gid: SecurityGroupView(gid, f"g{gid}", "p1", self.stateful[gid],
                                         tuple(sorted((RULES[r] for r in self.rules[gid]),
                                                      key=lambda r: r.id)))
                  for gid in (1, 2)}
        groups = self._stable(("groups", repr(groups)), lambda: groups)
        elsewhere = (vif(50, 1), vif(51, 3))
        floating = (FloatingView("172.30.0.9", ports[min(ports)].addresses[0],
                                 ports[min(ports)].network_id),) if self.floating and ports else ()
        view = StateView(revision, nets, tuple(ports.values()) + elsewhere, floating,
                         security_groups=groups,
                         provider_rules=(ProviderRuleView(1, "192.0.2.0/24", 6, 25, 25),)
                         if self.provider else (),
                         allow_same_net_traffic=self.same_net)
        binding = Binding(ports, self.trunks, 300 if self.public else None, self.relays)
        settings = CompileSettings(dhcp_rate_pps=self.rates[0], relay_rate_pps=self.rates[0],
                                   acl_log_rate_pps=self.rates[1], router=ROUTER)
        return view, binding, settings


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutation, min_size=1, max_size=25))
def test_incremental_equals_full_compile(mutations):
    spec, compiler = Spec(), IncrementalCompiler()
    installed: dict = {}
    for revision, m in enumerate(mutations, start=1):
        spec.apply(m)
        view, binding, settings_ = spec.build(revision)
        try:
            reference = compile_datapath(view, binding, settings_)
        except ValueError:       # two features claimed one id: the compiler must raise too
            try:
                compiler.compile(view, binding, settings_)
            except ValueError:
                compiler = IncrementalCompiler()
                installed = {}
                continue
            raise AssertionError("the incremental compile accepted a conflict")
        sunk: list = []        # what a streamed sync sends while the compile runs
        desired = compiler.compile(view, binding, settings_, sunk.extend)
        flows = reconcile.index(desired.flows)
        assert flows == reconcile.index(list(reference.flows)), m
        assert desired.meters == reference.meters, m
        assert desired.groups == reference.groups, m
        assert reconcile.ct_zones(flows) == reconcile.ct_zones(dict(flows))
        plan = reconcile.plan_incremental(installed, flows)
        full = reconcile.plan_incremental(dict(installed), dict(flows))
        assert sorted(map(repr, plan.adds)) == sorted(map(repr, full.adds)), m
        assert sorted(map(repr, plan.deletes)) == sorted(map(repr, full.deletes)), m
        assert {f.key for f in plan.adds} <= {f.key for f in sunk}, m
        installed = flows


def test_port_up_recompiles_only_the_new_port():
    """With stable view objects, one more VIF recompiles that VIF's parts (and its network's
    L2 share) only, and the diff names only its flows."""
    spec, compiler = Spec(), IncrementalCompiler()
    for port in range(1, 9):
        spec.apply(("add", port, 1 + port % 2, True, (1,), None, False))
    installed = reconcile.index(compiler.compile(*spec.build(1)).flows)
    before = dict(compiler.stats)
    spec.apply(("add", 9, 3, True, (1,), None, False))
    view, binding, settings_ = spec.build(2)
    desired = compiler.compile(view, binding, settings_)
    ports_compiled = compiler.stats["ports"] - before["ports"]
    assert ports_compiled == sum(1 for _ in ("port_security", "classifier", "dhcp", "qos", "nd",
                                             "dhcpv6", "l2", "security_groups"))
    flows = reconcile.index(desired.flows)
    plan = reconcile.plan_incremental(installed, flows)
    assert len(flows.changed) < len(flows) // 2       # the diff looked at the changed keys only
    full = reconcile.plan_incremental(dict(installed), dict(flows))
    assert plan.adds and not plan.deletes
    assert sorted(map(repr, plan.adds)) == sorted(map(repr, full.adds))
    assert compiler.stats["fallbacks"] == 0
