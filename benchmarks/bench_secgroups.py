"""Security-group benchmark (``run.py --only secgroups``).

1. Scale, on one userspace OVS bridge driven by the real ``sdn controller`` process:
   ``PROJECTS`` x ``PER_PROJECT`` VIFs (patch ports). Every project has groups ``web`` and
   ``db`` (created with the SecurityGroups API: every group holds CIDR_RULES ingress rules from
   CIDRs and REMOTE_RULES ingress rules from the other group, each on its own TCP port, plus
   the two egress rules every new group starts with); even VIFs join ``web``, odd ones ``db``.
   A group without members compiles to no flow, so the state commits measured are:
   - full sync: VIFs + their memberships inserted in one transaction on an empty state;
   - groups onto a synced state: the memberships of 1,000 already-programmed VIFs, one
     transaction;
   - one membership change (``add-secgroup`` of a web instance to ``db``) and its removal;
   - one rule removed (a CIDR rule, and a remote-group rule) and added back.
   Time = the controller's "sync:" log line (written after the bundle commit was confirmed)
   minus the moment the API call / transaction returned (committed); each sync line also
   gives the flow mods it sent. The security-group flows on the switch (cookie 0x5d08...) are
   counted and compared with ``expected_flows`` (the formula of sdn/flows/security_groups.py).
2. iperf3 TCP between two VIFs of one network on the sdn pipeline, with the firewall (their
   ``default`` group + a rule admitting the iperf port, ``allow_same_net_traffic`` off so the
   rule is what admits) against ``sdn instance port-security NAME off`` on both, paired runs
   in alternating order.

Everything created (bridges, namespaces, processes) is removed by handle, also on failure.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid as uuidlib
from pathlib import Path

from sqlalchemy import delete, insert

from benchmarks import lib
from benchmarks.bench_system import SYNC_RE, _iperf, _patch_ports, _syncs

PROJECTS, PER_PROJECT = 10, 100
CIDR_RULES, REMOTE_RULES = 5, 5
EGRESS_RULES = 2          # every new group: egress IPv4 + IPv6 to anywhere (sdn.secgroups)
REPS = 3                  # bulk commits
CHANGE_REPS = 5           # single changes
IPERF_PAIRS = 4
IPERF_PORT = 5201
SG_FEATURE = 0x08
SG_COOKIE = lib.feature_cookie(SG_FEATURE)


# ------------------------------------------------------------------ pure helpers

def expected_flows(vifs: int, groups: int, *, in_groups: bool = True,
                   cidr_rules: int = CIDR_RULES, remote_rules: int = REMOTE_RULES,
                   egress_rules: int = EGRESS_RULES, same_net: bool = True,
                   provider_matches: int = 0) -> int:
    """Security-group flows of one datapath by the formula of sdn/flows/security_groups.py's
    docstring, for ``vifs`` stateful filtered VIFs each in ONE of ``groups`` groups (with
    ``in_groups`` False: in none) whose rules are single-port (one match each) and whose
    remote-group rules name another group with members here, each member address once.

    entry 17/VIF; rules: sum R_v + same-net 2/VIF (its CIDR, fe80::/64) + P + M + 1 conj_id
    per remote-group rule;
    state: group clause 1/VIF/direction, label clause 1/rule/direction, conj_id 1/group/
    direction, 6 shared/direction (5 without the same-net label flow)."""
    if not vifs:
        return 0
    per_group = cidr_rules + remote_rules + egress_rules
    shared = 6 if same_net else 5
    same = 2 * vifs if same_net else 0
    entry = 17 * vifs
    if not in_groups:
        return entry + same + provider_matches + 2 * shared
    rules = (vifs * per_group + same + provider_matches
             + vifs                                   # M: every VIF's address, once
             + groups * remote_rules)
    state = 2 * vifs + 2 * groups * per_group + 2 * groups + 2 * shared
    return entry + rules + state


def median(xs):
    return round(statistics.median(xs), 3) if xs else None


def group_layout(k: int) -> dict[str, list[dict]]:
    """Project k's rules: group -> add_rule keyword arguments (ingress TCP, one port each)."""
    out = {}
    for g, (name, other) in enumerate((("web", "db"), ("db", "web"))):
        base = 100 * g       # ports of their own: equal matches of two groups would merge
        out[name] = ([dict(protocol="tcp", from_port=8000 + base + i, to_port=8000 + base + i,
                           cidr=f"172.{16 + k}.{i}.0/24") for i in range(CIDR_RULES)]
                     + [dict(protocol="tcp", from_port=9000 + base + i, to_port=9000 + base + i,
                             remote_group=other) for i in range(REMOTE_RULES)])
    return out


def flow_mods(syncs) -> int:
    """Flow mods the sync lines report (added: ADD, new or replacing; deleted: DELETE_STRICT)."""
    return sum(s[2] + s[4] for s in syncs)


# ------------------------------------------------------------------ sync observation

def _syncs_full(log: Path) -> list[tuple[float, str, int, int, int, float]]:
    """(time, kind, added, total flows, deleted, controller seconds) of every sync line."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        m = SYNC_RE.search(line)
        if m:
            out.append((lib.log_time(line), m.group(1), int(m.group(2)), int(m.group(4)),
                        int(m.group(3)), float(m.group(5))))
    return out


class Observer:
    """Commit -> confirmed-on-switch timing from the controller log: the sync line is written
    after the bundle holding the flow mods was committed on the switch."""

    def __init__(self, ctl_log: Path, br: str):
        self.log, self.br = ctl_log, br

    def mark(self) -> int:
        return len(_syncs_full(self.log))

    def _new(self, mark: int) -> list:
        return [s for s in _syncs_full(self.log)[mark:] if s[2] or s[4]]

    def wait(self, mark: int, committed: float, expect_sg: int | None = None,
             timeout: float = 600) -> dict:
        """Wait for the first sync with flow mods after ``mark`` (then up to 5 s more for the
        switch to hold ``expect_sg`` security-group flows, should a change take two syncs).
        Returns seconds (last sync with mods - commit), flow mods, flow counts; checks that
        the switch holds every sdn flow the controller reported."""
        lib.wait_for(lambda: self._new(mark), timeout, 0.1, what="sync after the commit")
        if expect_sg is not None:
            try:
                lib.wait_for(lambda: lib.count_flows(self.br, SG_COOKIE) == expect_sg, 5, 0.25)
            except TimeoutError:
                pass
        time.sleep(0.3)                       # a straggling sync would be counted too
        new = self._new(mark)
        total = lib.count_flows(self.br, lib.SDN_COOKIE)
        sg = lib.count_flows(self.br, SG_COOKIE)
        if total != new[-1][3]:
            raise RuntimeError(f"switch holds {total} sdn flows, controller reported {new[-1][3]}")
        return dict(seconds=round(new[-1][0] - committed, 3), syncs=len(new),
                    added=sum(s[2] for s in new), deleted=sum(s[4] for s in new),
                    flow_mods=flow_mods(new), controller_sync_seconds=round(sum(s[5] for s in new), 3),
                    sg_flows=sg, sg_expected=expect_sg,
                    sg_match=None if expect_sg is None else sg == expect_sg, flows=total)


# ------------------------------------------------------------------ 1. scale

def create_groups(sgs, projects: int) -> dict[tuple[str, str], int]:
    """Groups ``web`` and ``db`` of projects bp0.. with ``group_layout``'s rules, through the
    SecurityGroups API (one transaction per call). Returns (project, name) -> group id."""
    gids = {}
    for k in range(projects):
        p = f"bp{k}"
        for name in ("web", "db"):
            gids[(p, name)] = sgs.create(name, p)["id"]
        for name, rules in group_layout(k).items():
            for kw in rules:
                sgs.add_rule(name, p, **kw)
    return gids


def add_project_vifs(engine, session, net_ids: list[int], uuids: list[str],
                     gids: dict | None) -> list[dict]:
    """len(uuids) // len(net_ids) VIFs per project bp<k> on network net_ids[k], in ``session``;
    even ones tagged ``web``, odd ones ``db``, and (with ``gids``) made members of that group."""
    from sdn.db import models
    per = len(uuids) // len(net_ids)
    vifs = []
    for k, net_id in enumerate(net_ids):
        lo = k * per
        part = lib.add_vifs(engine, net_id, [lib.mac_n(0x02DD00000000, i) for i in range(lo, lo + per)],
                            project=f"bp{k}", uuids=uuids[lo:lo + per], session=session)
        for j, v in enumerate(part):
            v.update(project=f"bp{k}", group="web" if j % 2 == 0 else "db")
        vifs += part
    if gids is not None:
        session.execute(insert(models.SecurityGroupInstance), _memberships(vifs, gids))
    return vifs


def _memberships(vifs: list[dict], gids: dict) -> list[dict]:
    return [dict(security_group_id=gids[(v["project"], v["group"])], instance_uuid=v["instance"])
            for v in vifs]


def scale(work: Path, log) -> dict:
    from sdn.db import models
    from sdn.secgroups import SecurityGroups
    n = PROJECTS * PER_PROJECT
    d = work / "secgroups"
    cl = lib.Cleanup()
    try:
        port = lib.netlab.free_tcp_port()
        conf, engine, mgr, net = lib.new_state(d, port, "10.70.0.0/24")
        nets = [net] + mgr.create_networks("bsg", "10.71.0.0/16", num_networks=PROJECTS - 1,
                                           network_size=256)
        gids = create_groups(SecurityGroups(engine), PROJECTS)
        sgs = SecurityGroups(engine)
        uuids = [str(uuidlib.uuid4()) for _ in range(n)]
        br = lib.bridge(cl, "bbsg", port)
        _patch_ports(br, ["tap" + u[:11] for u in uuids])
        ctl_log = d / "controller.log"
        ctl = lib.start_controller(cl, conf, ctl_log)
        lib.wait_for(lambda: _syncs(ctl_log), 120, what="first full sync")
        obs = Observer(ctl_log, br)
        expect = expected_flows(n, 2 * PROJECTS)
        expect_bare = expected_flows(n, 2 * PROJECTS, in_groups=False)
        log(f"    formula: {expect} security-group flows with groups, {expect_bare} without")

        def add_all(session, with_groups: bool) -> list[dict]:
            return add_project_vifs(engine, session, [x["id"] for x in nets], uuids,
                                    gids if with_groups else None)

        res: dict = dict(vifs=n, projects=PROJECTS, groups=2 * PROJECTS,
                         ingress_rules_per_vif=CIDR_RULES + REMOTE_RULES,
                         remote_rules_per_vif=REMOTE_RULES, formula_flows=expect,
                         formula_flows_no_groups=expect_bare)
        # -- full sync of the whole state, REPS times (removed in one transaction in between)
        full, removed = [], []
        for rep in range(REPS):
            mark, t0 = obs.mark(), time.time()
            with lib.db.transaction(engine) as s:
                vifs = add_all(s, True)
            tc = time.time()
            r = obs.wait(mark, tc, expect)
            r["state_write_seconds"] = round(tc - t0, 3)
            full.append(r)
            log(f"    full sync {rep + 1}: {r['sg_flows']} sg flows / {r['flows']} in {r['seconds']}s "
                f"after commit ({r['flow_mods']} flow mods, write {r['state_write_seconds']}s)")
            mark = obs.mark()
            with lib.db.transaction(engine) as s:
                lib.remove_vifs(engine, vifs, session=s)
            tc = time.time()
            removed.append(obs.wait(mark, tc, 0))
        res["full_sync"] = dict(runs=full, median_seconds=median([r["seconds"] for r in full]),
                                sg_flows_on_switch=full[-1]["sg_flows"],
                                flows_on_switch=full[-1]["flows"],
                                median_flow_mods=median([r["flow_mods"] for r in full]))
        res["remove_all"] = dict(runs=removed, median_seconds=median([r["seconds"] for r in removed]))
        res["flows_on_switch"] = full[-1]["sg_flows"]
        # -- all groups onto an already-synced 1,000-VIF state
        mark = obs.mark()
        with lib.db.transaction(engine) as s:
            vifs = add_all(s, False)
        bare = obs.wait(mark, time.time(), expect_bare)
        res["flows_on_switch_no_groups"] = bare["sg_flows"]
        log(f"    VIFs without groups: {bare['sg_flows']} sg flows (formula {expect_bare})")
        onto, off = [], []
        for rep in range(REPS):
            mark = obs.mark()
            with lib.db.transaction(engine) as s:
                s.execute(insert(models.SecurityGroupInstance), _memberships(vifs, gids))
            r = obs.wait(mark, time.time(), expect)
            onto.append(r)
            log(f"    groups onto synced VIFs {rep + 1}: {r['seconds']}s ({r['flow_mods']} flow mods)")
            if rep < REPS - 1:
                mark = obs.mark()
                with lib.db.transaction(engine) as s:
                    s.execute(delete(models.SecurityGroupInstance))
                off.append(obs.wait(mark, time.time(), expect_bare))
        res["groups_onto_synced"] = dict(runs=onto, median_seconds=median([r["seconds"] for r in onto]),
                                         median_flow_mods=median([r["flow_mods"] for r in onto]))
        res["groups_off_synced"] = dict(runs=off, median_seconds=median([r["seconds"] for r in off]))
        # -- one membership change: a web instance of project k joins db (a remote group)
        lib.instance_names(engine, vifs)
        web = [v for v in vifs if v["group"] == "web"]
        join, leave = [], []
        for rep in range(CHANGE_REPS):
            v = web[rep * PER_PROJECT // 2]           # one per project
            before = lib.count_flows(br, SG_COOKIE)
            mark = obs.mark()
            sgs.add_instance(v["name"], "db")
            r = obs.wait(mark, time.time(), before + CIDR_RULES + REMOTE_RULES)
            join.append(r)
            log(f"    add-secgroup {v['name']} db: {r['seconds']}s, {r['added']} added "
                f"{r['deleted']} deleted")
            mark = obs.mark()
            sgs.remove_instance(v["name"], "db")
            leave.append(obs.wait(mark, time.time(), before))
        res["join_remote_group"] = _summary(join)
        res["leave_remote_group"] = _summary(leave)
        # -- one rule removed (and added back): a CIDR rule, a remote-group rule of web
        for kind, idx in (("cidr", 0), ("remote", CIDR_RULES)):
            rm, back = [], []
            for rep in range(CHANGE_REPS):
                p = f"bp{rep}"
                kw = group_layout(rep)["web"][idx]
                members = sum(1 for v in vifs if v["project"] == p and v["group"] == "web")
                before = lib.count_flows(br, SG_COOKIE)
                mark = obs.mark()
                sgs.delete_rule("web", p, direction="ingress", ethertype="IPv4",
                                **{**dict(cidr=None, remote_group=None), **kw})
                # per web member its clause/rule flow, the label clause per direction, and
                # a remote rule's conj_id flow
                gone = members + 2 + (1 if kind == "remote" else 0)
                rm.append(obs.wait(mark, time.time(), before - gone))
                mark = obs.mark()
                sgs.add_rule("web", p, **kw)
                back.append(obs.wait(mark, time.time(), before))
            res[f"rule_remove_{kind}"] = {**_summary(rm), "group_members": members}
            res[f"rule_add_{kind}"] = _summary(back)
            log(f"    remove one {kind} rule of web ({members} members): "
                f"{res[f'rule_remove_{kind}']['median_seconds']}s, "
                f"{res[f'rule_remove_{kind}']['median_flow_mods']} flow mods")
        res["controller_rss_mb"] = round(lib.rss_mb(ctl.pid), 1)
        return res
    finally:
        cl.run()


def _summary(runs: list[dict]) -> dict:
    return dict(runs=runs, median_seconds=median([r["seconds"] for r in runs]),
                median_flow_mods=median([r["flow_mods"] for r in runs]),
                max_flow_mods=max(r["flow_mods"] for r in runs))


# ------------------------------------------------------------------ 2. data plane

def _dp_port_numbers(names: list[str]) -> set[str]:
    out = lib.sh(["ovs-appctl", "dpctl/show", "netdev@ovs-netdev"], check=False).stdout
    nums = set()
    for line in out.splitlines():
        parts = line.strip().split()
        if len(parts) >= 3 and parts[0] == "port" and parts[2] in names:
            nums.add(parts[1].rstrip(":"))
    return nums


def _own_dp_flows(ports: set[str]) -> int:
    out = lib.sh(["ovs-appctl", "dpctl/dump-flows", "netdev@ovs-netdev"], check=False).stdout
    return sum(1 for line in out.splitlines()
               if any(f"in_port({p})" in line for p in ports))


def data_plane(work: Path, log) -> dict:
    d = work / "secgroups-dp"
    cl = lib.Cleanup()
    try:
        port = lib.netlab.free_tcp_port()
        conf, engine, mgr, _net = lib.new_state(d, port, "10.79.0.0/24",
                                                allow_same_net_traffic=False)
        insts = [mgr.allocate_for_instance(f"bsgdp{i}", "bench") for i in (1, 2)]   # default group
        cli = [lib.SDN, "--config-file", str(conf)]
        lib.sh(cli + ["secgroup-rule", "add", "default", "--project", "bench", "tcp",
                      str(IPERF_PORT), str(IPERF_PORT), "0.0.0.0/0"])
        br = lib.bridge(cl, "bbsgdp", port)
        for i, a in enumerate(insts, 1):
            ns = lib.netns(cl, f"bsg{i}")
            lib.veth(cl, f"{ns}e", ns, a["port_name"], None, a_mac=a["mac"])
            lib.sh(["ip", "-n", ns, "addr", "add", f"{a['address']}/24", "dev", f"{ns}e"])
            lib.sh(["ovs-vsctl", "add-port", br, a["port_name"]])
        ctl_log = d / "controller.log"
        lib.start_controller(cl, conf, ctl_log)
        lib.wait_for(lambda: lib.count_flows(br, SG_COOKIE) > 0 and _syncs(ctl_log), 60,
                     what="sync with security groups")
        srv, cli_ns = insts[0]["address"], "bsg2"

        def ping() -> bool:
            return lib.sh(["ip", "netns", "exec", cli_ns, "ping", "-c", "1", "-W", "1", srv],
                          check=False).returncode == 0

        def mode(on: bool) -> int:
            for a in insts:
                lib.sh(cli + ["instance", "port-security", a["instance"], "on" if on else "off"])
            want = sg_on if on else 0
            lib.wait_for(lambda: lib.count_flows(br, SG_COOKIE) == want, 60, 0.2,
                         what=f"firewall {'on' if on else 'off'} ({want} flows)")
            if not on:
                lib.wait_for(ping, 30, what="ping without firewall")
            return lib.count_flows(br, SG_COOKIE)

        # the firewall is really there: ICMP (no rule) is dropped, the iperf port passes
        sg_on = lib.count_flows(br, SG_COOKIE)
        blocked = not ping() and not ping()
        sg_off = mode(False)
        dp_ports = _dp_port_numbers([a["port_name"] for a in insts])
        runs = {"with": [], "without": []}
        for pair in range(IPERF_PAIRS):
            order = ("with", "without") if pair % 2 == 0 else ("without", "with")
            for which in order:
                mode(which == "with")
                own: dict = {}

                def sample(own=own):
                    time.sleep(3)
                    own["n"] = _own_dp_flows(dp_ports)
                th = threading.Thread(target=sample)
                th.start()
                r = _iperf(cl, "bsg1", cli_ns, srv, br)
                th.join()
                r["own_datapath_flows"] = own.get("n")
                runs[which].append(r)
                log(f"    iperf3 pair {pair + 1} {which:7s} firewall: {r['mbit_s']} Mbit/s "
                    f"(datapath flows: ours {r['own_datapath_flows']}, all {r['datapath_flows']})")
        ratios = [w["mbit_s"] / o["mbit_s"] for w, o in zip(runs["with"], runs["without"])]
        res = dict(
            with_fw=dict(median_mbit_s=median([r["mbit_s"] for r in runs["with"]]),
                         runs=runs["with"], sg_flows=sg_on,
                         median_own_datapath_flows=median([r["own_datapath_flows"] or 0
                                                           for r in runs["with"]])),
            without_fw=dict(median_mbit_s=median([r["mbit_s"] for r in runs["without"]]),
                            runs=runs["without"], sg_flows=sg_off,
                            median_own_datapath_flows=median([r["own_datapath_flows"] or 0
                                                              for r in runs["without"]])),
            pair_ratios=[round(x, 3) for x in ratios], ratio=median(ratios), pairs=IPERF_PAIRS,
            icmp_blocked_with_fw=blocked, same_net_traffic=False)
        log(f"    iperf3 with/without firewall: median pair ratio {res['ratio']} "
            f"({res['with_fw']['median_mbit_s']} / {res['without_fw']['median_mbit_s']} Mbit/s)")
        return res
    finally:
        cl.run()


def run(work: Path, log) -> dict:
    out = {}
    for name, fn in (("scale", scale), ("dataplane", data_plane)):
        try:
            out[name] = fn(work, log)
        except Exception as err:  # one part failing must not hide the other
            log(f"    secgroups {name} FAILED: {type(err).__name__}: {err}")
            out[name] = {"error": f"{type(err).__name__}: {err}"}
    return out
