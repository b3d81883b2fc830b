"""Table CLASSIFY: which VIF or which network segment a packet belongs to.

From a VIF: untagged frames only (a tagged frame from an instance is VLAN hopping, dropped by
the table default), reg5 := in_port, reg6 := the VIF's network key, on to port security.
From a trunk: VLAN networks by tag (tag popped), the flat network untagged; on to services
(past port security and the egress ACL: the far end already ran them), where routed frames reach the router.
"""

from __future__ import annotations

from sdn.flows.context import DatapathContext
from sdn.flows.model import (OFPVID_NONE, Feature, Flow, PopVlan, Reg, SetField, Table, flow,
                             vlan_vid)
from sdn.flows.pipeline import next_table
from sdn.view import NetworkView

PRIO_PORT = 100


def compile(dp: DatapathContext) -> list[Flow]:
    """Feature entry point: every VIF port and trunk of the datapath."""
    flows = []
    for port, vif in dp.vifs:
        flows += compile_vif(port, dp.network_of(vif))
    for trunk in dp.binding.trunks:
        flows += compile_trunk(trunk, dp.networks)
    return flows


# Per-port split (``sdn.flows.incremental``): a VIF's flow reads its port and its network.
def port_scope(_dp: DatapathContext) -> tuple:
    return ()


def compile_port(dp: DatapathContext, port: int, vif) -> list[Flow]:
    return compile_vif(port, dp.network_of(vif))


def compile_shared(dp: DatapathContext) -> list[Flow]:
    return [f for trunk in dp.binding.trunks for f in compile_trunk(trunk, dp.networks)]


def compile_vif(ofport: int, network: NetworkView) -> list[Flow]:
    """Classify untagged frames from VIF ``ofport`` into ``network``."""
    return [flow(Feature.CLASSIFIER, Table.CLASSIFY, PRIO_PORT,
                 {"in_port": ofport, "vlan_vid": OFPVID_NONE},
                 [SetField(Reg.SRC_PORT, ofport), SetField(Reg.NET, network.key)],
                 goto=next_table(Table.CLASSIFY))]


def compile_trunk(ofport: int, networks: list[NetworkView]) -> list[Flow]:
    """Classify frames arriving on trunk ``ofport`` for each of ``networks``.

    Untagged frames go to the flat network with the lowest id (a trunk carries at most one
    untagged segment).
    """
    flows = []
    flat = sorted((n for n in networks if not n.vlan), key=lambda n: n.id)
    for net in networks:
        if net.vlan:
            flows.append(flow(Feature.CLASSIFIER, Table.CLASSIFY, PRIO_PORT,
                              {"in_port": ofport, "vlan_vid": vlan_vid(net.vlan)},
                              [PopVlan(), SetField(Reg.SRC_PORT, ofport),
                               SetField(Reg.NET, net.key)],
                              goto=Table.SERVICES))
    if flat:
        flows.append(flow(Feature.CLASSIFIER, Table.CLASSIFY, PRIO_PORT,
                          {"in_port": ofport, "vlan_vid": OFPVID_NONE},
                          [SetField(Reg.SRC_PORT, ofport), SetField(Reg.NET, flat[0].key)],
                          goto=Table.SERVICES))
    return flows
