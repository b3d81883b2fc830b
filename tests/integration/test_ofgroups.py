"""Real OVS accepts sdn's groups as ``sdn.flows.ofctl`` renders them and runs them as the
datapath design needs: a type-all group whose buckets are ``set_field:PORT->reg7,resubmit(,60)``
copies the packet through ingress ACL and output once per port, and a bucket may apply another
group (how a flood too large for one group is chained)."""

from __future__ import annotations

import re

import pytest

from sdn.flows import model as m
from sdn.flows import ofctl, trace
from sdn.flows.model import Feature, Reg, Table
from tests.integration import netlab
from tests.integration.netlab import OFCTL, sh

ROOT = m.entry_id(Feature.L2, 0x10)
CHILD = m.entry_id(Feature.L2, 0x11)


@pytest.fixture
def bridge():
    br = netlab.create_bridge()
    try:
        yield br
    finally:
        br.close()


def _to_port(port: int) -> tuple:
    return (m.SetField(Reg.DST_PORT, port), m.Resubmit(Table.INGRESS_ACL))


def _outputs(trace: str) -> list[int]:
    """OpenFlow ports the traced packet is output to, in order (``output:N`` steps)."""
    return [int(n) for n in re.findall(r"^\s*output:(\d+)\s*$", trace, re.MULTILINE)]


def test_group_of_resubmits_chained_to_another_group(bridge):
    names = ["p1", "p2", "p3", "p4"]
    for name in names:
        bridge.add_internal_port(f"{bridge.name}{name}")
    p1, p2, p3, p4 = (bridge.ofport(f"{bridge.name}{name}") for name in names)
    child = m.GroupEntry(Feature.L2, CHILD, (_to_port(p3), _to_port(p4)))
    root = m.GroupEntry(Feature.L2, ROOT, (_to_port(p2), (m.Group(CHILD),)))
    assert root.children == (CHILD,)
    for entry in (child, root):   # a group must exist before a bucket applies it
        sh(OFCTL + ["add-group", bridge.name, ofctl.render_group(entry)])
    flows = [m.flow(Feature.L2, Table.CLASSIFY, 10, {"in_port": p1}, [m.Group(ROOT)]),
             m.flow(Feature.PIPELINE, Table.INGRESS_ACL, 0, {}, goto=Table.OUTPUT)]
    flows += [m.flow(Feature.L2, Table.OUTPUT, 10, {Reg.DST_PORT: p}, [m.Output(p)])
              for p in (p2, p3, p4)]
    for f in flows:
        bridge.add_flow(ofctl.render(f, generation=1))

    groups = sh(OFCTL + ["dump-groups", bridge.name]).stdout
    assert f"group_id={ROOT},type=all" in groups and f"group_id={CHILD},type=all" in groups
    assert "resubmit(,60)" in groups and f"group:{CHILD}" in groups
    ovs = bridge.trace(f"in_port={p1},dl_dst=ff:ff:ff:ff:ff:ff")
    assert _outputs(ovs) == [p2, p3, p4], ovs
    # each bucket ran on its own copy, with its own reg7, through ingress ACL then output
    assert [int(n, 16) for n in re.findall(r"70\. reg7=0x([0-9a-f]+)", ovs)] == [p2, p3, p4]
    # and sdn's simulator agrees with the switch
    sim = trace.trace(flows, {"in_port": p1, "eth_dst": "ff:ff:ff:ff:ff:ff"},
                      {ROOT: root, CHILD: child})
    assert sim.outputs == [(p2, None), (p3, None), (p4, None)]
