"""Several network hosts with the Linux backend (issue 13 item 4, ``network_driver = linux``):
the claim rule both backends share (``sdn.nethost``) and what a Linux agent plans for the
networks it hosts, for other hosts' networks its VIFs are on, and as a compute host only.

The state is test_network_hosts.py's: alpha is h1's, beta h2's, gamma has a VIF and no host.
"""

import dataclasses

from sdn import nethost
from sdn.linux import desired
from sdn.view import StateView
from tests.unit.test_linux import conf, rules_of
from tests.unit.test_network_hosts import A1, ALPHA, B1, BETA, FA, FB, G1, GAMMA, VIEW

EMPTY = dataclasses.replace(GAMMA, id=4, label="empty", cidr="10.34.0.192/26", gateway="10.34.0.193")
WITH_EMPTY = StateView(VIEW.revision, {**VIEW.networks, 4: EMPTY}, VIEW.vifs, VIEW.floating_ips,
                       security_groups=VIEW.security_groups)


def test_a_network_host_claims_the_networks_with_a_vif_and_no_host():
    # gamma has a VIF and no host; the empty network has no VIF: nova claimed at allocation
    assert nethost.networks_to_claim(WITH_EMPTY, "h1") == [3]
    assert nethost.networks_to_claim(WITH_EMPTY, "h2") == [3]
    # not a network host (no name): nothing to claim
    assert nethost.networks_to_claim(WITH_EMPTY, None) == []
    assert nethost.networks_to_claim(WITH_EMPTY, "") == []
    claimed = StateView(1, {**VIEW.networks, 3: dataclasses.replace(GAMMA, host="h2")}, VIEW.vifs)
    assert nethost.networks_to_claim(claimed, "h1") == []


def test_hosted_networks_follow_the_host_column():
    assert nethost.hosted_networks(VIEW, "h1") == {1}
    assert nethost.hosted_networks(VIEW, "h2") == {2}
    assert nethost.hosted_networks(VIEW, "h3") == set()
    assert nethost.hosted_networks(VIEW, None) == set() == nethost.hosted_networks(VIEW, "")


def h1_plan(present, hosted=frozenset({1}), view=VIEW):
    return desired.plan(view, {}, conf(), present_ports=set(present), dhcp=True, vlan_mode=True,
                        hosted=set(hosted))


def test_network_host_routes_only_its_own_networks():
    # crossed as in the integration test: beta's b1 is plugged on h1, alpha's a1 elsewhere
    plan = h1_plan({B1.port_name})
    bridges = {b.network_id: b for b in plan.bridges}
    # alpha (h1's): gateway, its MAC, dnsmasq; beta: a plain bridge for b1, its gateway released
    assert set(bridges) == {1, 2}, "gamma has no host and no VIF here: no bridge"
    assert bridges[1].gateway_cidr == "10.34.0.1/26" and bridges[1].mac == ALPHA.gateway_mac
    assert bridges[1].released == () and bridges[1].foreign_mac is None
    assert bridges[2].gateway_cidr is None and bridges[2].mac is None and bridges[2].gateway_v6 == ()
    assert bridges[2].released == ("10.34.0.65/26",) and bridges[2].foreign_mac == BETA.gateway_mac
    assert [s.network_id for s in plan.dnsmasq] == [1]
    # beta's bridged frames cross h1's netfilter too: SNAT and metadata only from alpha's CIDR
    assert rules_of(plan, "ipv4", "nat", "snat") == ["-s 10.34.0.0/26 -j SNAT --to-source 192.0.2.1"]
    pre = rules_of(plan, "ipv4", "nat", "PREROUTING")
    assert pre == ["-s 10.34.0.0/26 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT "
                   "--to-destination 192.0.2.9:8775",
                   f"-d {FA.address}/32 -j DNAT --to-destination {FA.fixed_address}"]
    assert plan.floating == [f"{FA.address}/32"] and plan.floating_map == {FA.address: FA.fixed_address}
    assert rules_of(plan, "ipv4", "nat", "float-snat") == [f"-s {FA.fixed_address}/32 -j SNAT "
                                                          f"--to-source {FA.address}"]
    assert FB.address not in str([r for r in plan.rules if r.table == "nat"])
    # b1's port is bridged and filtered here all the same
    assert plan.ports == {B1.port_name: "br401"}
    assert f"-i {B1.port_name} -j $I-{B1.port_name}" in rules_of(plan, "eb", "nat", "PREROUTING")
    # positive control: h2's plan routes beta and its floating IP
    h2 = h1_plan({A1.port_name}, hosted={2})
    assert [s.network_id for s in h2.dnsmasq] == [2] and h2.floating == [f"{FB.address}/32"]


def test_compute_host_only_bridges_and_filters_its_vifs():
    plan = h1_plan({A1.port_name, G1.port_name}, hosted=set())
    assert sorted(b.network_id for b in plan.bridges) == [1, 3]
    assert all(b.gateway_cidr is None and b.mac is None for b in plan.bridges)
    assert plan.dnsmasq == [] and plan.floating == []
    assert not [r for r in plan.rules if r.table == "nat" and r.family == "ipv4"]
    assert set(plan.ports) == {A1.port_name, G1.port_name}
    eb = rules_of(plan, "eb", "nat", "PREROUTING")
    assert f"-i {A1.port_name} -j $I-{A1.port_name}" in eb and f"-i {G1.port_name} -j $I-{G1.port_name}" in eb


def test_ipv6_public_side_only_on_a_host_of_a_v6_network():
    v6 = dataclasses.replace(ALPHA, cidr_v6="fd00:34::/64", gateway_v6="fd00:34::1")
    view = StateView(1, {1: v6, 2: BETA}, (A1, B1))
    cfg = conf(public_ip_v6="2001:db8::2/64", external_gateway_v6="2001:db8::1")
    host = desired.plan(view, {}, cfg, present_ports={A1.port_name}, dhcp=True, vlan_mode=True, hosted={1})
    assert host.ipv6.public_ip == "2001:db8::2/64" and host.ipv6.gateway == "2001:db8::1"
    assert ("fd00:34::1/64", f"{v6.gateway_lla}/64") == host.bridges[0].gateway_v6
    other = desired.plan(view, {}, cfg, present_ports={A1.port_name}, dhcp=True, vlan_mode=True, hosted={2})
    assert other.ipv6.public_ip is None and other.ipv6.gateway is None
    a1_bridge = next(b for b in other.bridges if b.network_id == 1)
    assert a1_bridge.gateway_v6 == () and a1_bridge.released == (
        "10.34.0.1/26", "fd00:34::1/64", f"{v6.gateway_lla}/64")
    # the VIF's own port is answered (RA, DHCPv6) where the VIF is, as OVS's controller does
    assert set(other.ipv6.ports) == {A1.port_name} == set(host.ipv6.ports)


def test_a_network_that_moved_away_keeps_its_bridge_with_the_gateway_released():
    # h2 routed beta (its bridge br401 is here), beta is h1's now and no VIF of it is on h2
    moved = StateView(1, {1: ALPHA, 2: dataclasses.replace(BETA, host="h1")}, (A1, B1))
    hosted = nethost.hosted_networks(moved, "h2")
    plan = h1_plan({"br401"}, hosted=hosted, view=moved)
    assert [b.network_id for b in plan.bridges] == [2]
    bridge = plan.bridges[0]
    assert bridge.gateway_cidr is None and bridge.released == ("10.34.0.65/26",)
    assert bridge.foreign_mac == BETA.gateway_mac
    assert plan.dnsmasq == [] and not rules_of(plan, "ipv4", "nat", "snat")
    # without the bridge there is nothing to release: no bridge is made for it
    assert h1_plan(set(), hosted=hosted, view=moved).bridges == []


class _State:
    """What Agent._claim reads: the view after a claim, and a manager whose claim may fail."""

    def __init__(self, after, error=None):
        self.after, self.error, self.claims = after, error, []
        self.manager = self

    def claim_networks(self, host):
        self.claims.append(host)
        if self.error is not None:
            raise self.error
        return [{"label": "gamma", "cidr": GAMMA.cidr, "host": host}]

    def load(self):
        return self.after


def _agent(host, state):
    from sdn.linux.agent import Agent
    from sdn.metrics import AgentMetrics

    agent = Agent.__new__(Agent)
    agent.host, agent.state, agent.metrics, agent.claim_failed = host, state, AgentMetrics(), False
    return agent


def test_the_agent_claims_as_the_controller_and_retries_a_refused_claim():
    after = StateView(2, {**VIEW.networks, 3: dataclasses.replace(GAMMA, host="h1")}, VIEW.vifs)
    agent = _agent("h1", _State(after))
    assert agent._claim(VIEW) is after and agent.state.claims == ["h1"]
    assert agent._claim(after) is after and agent.state.claims == ["h1"]    # nothing left
    # a compute host claims nothing
    compute = _agent(None, _State(after))
    assert compute._claim(VIEW) is VIEW and compute.state.claims == []
    # a locked database: the view as it was, and the poll loop reconciles again
    locked = _agent("h1", _State(after, error=RuntimeError("database is locked")))
    assert locked._claim(VIEW) is VIEW and locked.claim_failed
    assert locked.metrics.database_errors.labels("claim")._value.get() == 1
    locked.state.error = None
    assert locked._claim(VIEW) is after and not locked.claim_failed
