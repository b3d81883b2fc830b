"""The security-group benchmark's flow-count formula and setup, against the real compiler
(no OVS): what benchmarks/bench_secgroups.py prints next to the switch's count."""

import uuid

import pytest
from sqlalchemy import insert

from benchmarks import bench_secgroups as bsg
from benchmarks import lib
from sdn.db import api as db
from sdn.db import models
from sdn.flows.compiler import CompileSettings, bind_ports, compile_datapath
from sdn.flows.model import Feature
from sdn.secgroups import SecurityGroups


def _sg_flows(engine, same_net=True) -> int:
    view = db.load_views(engine, allow_same_net_traffic=same_net)
    ports = {v.port_name: i + 1 for i, v in enumerate(view.vifs)}
    desired = compile_datapath(view, bind_ports(view, ports, frozenset()), CompileSettings())
    return len({f.key for f in desired.flows if f.feature == Feature.SECURITY_GROUPS})


@pytest.mark.parametrize("projects,per_project", [(1, 2), (2, 4), (3, 10)])
def test_formula_matches_the_compiled_benchmark_state(tmp_path, projects, per_project):
    _conf, engine, mgr, net = lib.new_state(tmp_path / "s", 1, "10.70.0.0/24")
    nets = [net] + (mgr.create_networks("bsg", "10.71.0.0/16", num_networks=projects - 1,
                                        network_size=256) if projects > 1 else [])
    gids = bsg.create_groups(SecurityGroups(engine), projects)
    uuids = [str(uuid.uuid4()) for _ in range(projects * per_project)]
    with db.transaction(engine) as s:
        vifs = bsg.add_project_vifs(engine, s, [n["id"] for n in nets], uuids, None)
    n = len(vifs)
    assert _sg_flows(engine) == bsg.expected_flows(n, 2 * projects, in_groups=False)
    assert _sg_flows(engine, same_net=False) == bsg.expected_flows(
        n, 2 * projects, in_groups=False, same_net=False)
    with db.transaction(engine) as s:
        s.execute(insert(models.SecurityGroupInstance), bsg._memberships(vifs, gids))
    assert _sg_flows(engine) == bsg.expected_flows(n, 2 * projects)
    with db.transaction(engine) as s:
        lib.remove_vifs(engine, vifs, session=s)
    assert _sg_flows(engine) == 0
    with db.transaction(engine) as s:   # the addresses went back: the same VIFs fit again
        bsg.add_project_vifs(engine, s, [n["id"] for n in nets], uuids, gids)
    assert _sg_flows(engine) == bsg.expected_flows(n, 2 * projects)


def test_group_layout_gives_every_rule_its_own_port():
    layout = bsg.group_layout(0)
    ports = [r["from_port"] for rules in layout.values() for r in rules]
    assert len(ports) == len(set(ports)) == 2 * (bsg.CIDR_RULES + bsg.REMOTE_RULES)
    assert sum(1 for r in layout["web"] if r.get("remote_group") == "db") == bsg.REMOTE_RULES
