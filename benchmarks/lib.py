"""Shared helpers for the sdn benchmarks: shell, namespaces, state population, cleanup.

Everything a benchmark creates (namespaces, veths, bridges, processes) is registered with a
``Cleanup`` and removed by handle, also when the benchmark fails. Traffic stays inside the
namespaces created here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid as uuidlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import insert, select, update  # noqa: E402

from sdn import config as sdn_config  # noqa: E402
from sdn import manager as managers  # noqa: E402
from sdn.db import api as db  # noqa: E402
from sdn.db import models  # noqa: E402
from tests.integration import netlab  # noqa: E402

PY = str(REPO / ".venv" / "bin" / "python")
SDN = str(REPO / ".venv" / "bin" / "sdn")


def sh(cmd, check=True, timeout=120, **kw) -> subprocess.CompletedProcess:
    if isinstance(cmd, str):
        cmd = ["bash", "-c", cmd]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))[:300]} exited {p.returncode}: {p.stderr[-2000:]}")
    return p


class Cleanup:
    def __init__(self):
        self.actions: list = []

    def add(self, fn, *args):
        self.actions.append((fn, args))

    def proc(self, p: subprocess.Popen):
        self.add(kill_group, p)
        return p

    def run(self):
        while self.actions:
            fn, args = self.actions.pop()
            try:
                fn(*args)
            except Exception as err:  # best effort: keep cleaning
                print(f"  cleanup {fn.__name__}{args}: {err}", file=sys.stderr)


def kill_group(p: subprocess.Popen, sig=signal.SIGTERM, wait=5.0):
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        return
    try:
        p.wait(wait)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(5)


def popen(argv, log: Path, netns: str | None = None, env=None) -> subprocess.Popen:
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    fh = open(log, "ab")
    return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                            env=env)


def netns(cl: Cleanup, name: str) -> str:
    sh(["ip", "netns", "del", name], check=False)
    sh(["ip", "netns", "add", name])
    cl.add(sh, ["ip", "netns", "del", name], False)
    sh(["ip", "-n", name, "link", "set", "lo", "up"])
    return name


def veth(cl: Cleanup, a: str, a_ns: str | None, b: str, b_ns: str | None,
         a_mac: str | None = None) -> None:
    """veth a<->b, each end moved into its namespace (None: root), up, tx checksum off."""
    if not a.startswith("b"):
        raise ValueError(f"benchmark veth names start with 'b' (got {a!r})")
    sh(["ip", "link", "del", a], check=False)   # a leftover of an aborted benchmark run
    sh(["ip", "link", "add", a, "type", "veth", "peer", "name", b])
    cl.add(sh, ["ip", "link", "del", b] if b_ns is None else ["ip", "-n", b_ns, "link", "del", b], False)
    for dev, ns in ((a, a_ns), (b, b_ns)):
        if ns:
            sh(["ip", "link", "set", dev, "netns", ns])
        pre = ["ip", "netns", "exec", ns] if ns else []
        if dev == a and a_mac:
            sh(pre + ["ip", "link", "set", dev, "address", a_mac])
        sh(pre + ["ip", "link", "set", dev, "up"])
        sh(pre + ["ethtool", "-K", dev, "tx", "off"], check=False)


def del_bridge(name: str) -> None:
    """Delete ``name`` and wait until ovs-vswitchd has applied it: tearing down a 10k-port
    bridge takes it minutes, and the next benchmark's add-br would time out meanwhile."""
    sh(["ovs-vsctl", "--timeout=900", "--if-exists", "del-br", name], check=False, timeout=960)


def bridge(cl: Cleanup, name: str, controller_port: int | None = None) -> str:
    sh(["ovs-vsctl", "--if-exists", "del-br", name])
    netlab.create_bridge(name=name, controller_port=controller_port)
    cl.add(del_bridge, name)
    return name


def write_conf(workdir: Path, port: int, ovs: dict | None = None, db_url: str | None = None,
               **defaults) -> Path:
    """``db_url``: the state database (default: a SQLite file in ``workdir``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    sections = {"DEFAULT": {"network_manager": "flatdhcp", "dhcp_lease_time": 3600, **defaults},
                "database": {"connection": db_url or f"sqlite:///{workdir / 'sdn.sqlite'}"},
                "ovs": {"ofp_listen_host": "127.0.0.1", "ofp_tcp_listen_port": port,
                        "dhcp_rate_limit": 0, **(ovs or {})}}
    return netlab.write_sdn_conf(workdir / "sdn.conf", sections)


def load_conf(path: Path):
    return sdn_config.load(["--config-file", str(path)], conf=sdn_config.make_conf())


def new_state(workdir: Path, port: int, cidr: str, ovs: dict | None = None,
              db_url: str | None = None, **defaults):
    """Config + migrated SQLite (or the empty database ``db_url``) + one flat DHCP network;
    returns (conf_path, engine, manager, net). ``workdir`` is emptied first; ``ovs`` adds
    options of the [ovs] section."""
    import shutil
    shutil.rmtree(workdir, ignore_errors=True)
    conf_path = write_conf(workdir, port, ovs, db_url, **defaults)
    conf = load_conf(conf_path)
    engine = db.get_engine(conf.database.connection)
    db.sync(engine)
    mgr = managers.get_manager(engine, conf)
    size = 1 << (32 - int(cidr.split("/")[1]))
    net = mgr.create_networks("bench", cidr, num_networks=1, network_size=size)[0]
    return conf_path, engine, mgr, net


def mac_n(base: int, i: int) -> str:
    v = base + i
    return ":".join(f"{(v >> s) & 0xFF:02x}" for s in range(40, -8, -8))


def add_vifs(engine, network_id: int, macs: list[str], project="bench",
             uuids: list[str] | None = None, session=None) -> list[dict]:
    """Bulk: one instance + VIF + associated fixed IP per MAC, in ONE transaction (what
    ``sdn instance launch`` does one by one), or in ``session``'s. Returns [{uuid, mac, address, port}]."""
    out = []
    import contextlib
    with (contextlib.nullcontext(session) if session is not None else db.transaction(engine)) as s:
        free = s.execute(select(models.FixedIp.id, models.FixedIp.address)
                         .where(models.FixedIp.network_id == network_id,
                                models.FixedIp.reserved.is_(False),
                                models.FixedIp.instance_uuid.is_(None))
                         .order_by(models.FixedIp.id).limit(len(macs))).all()
        if len(free) < len(macs):
            raise RuntimeError(f"network {network_id} has {len(free)} free addresses, need {len(macs)}")
        insts, vifs = [], []
        next_id = (s.scalar(select(models.VirtualInterface.id).order_by(models.VirtualInterface.id.desc()).limit(1)) or 0) + 1
        for i, mac in enumerate(macs):
            iu = str(uuidlib.uuid4())
            vu = uuids[i] if uuids else str(uuidlib.uuid4())
            name = f"b{vu[:8]}{i}"
            insts.append(dict(uuid=iu, name=name, hostname=name, project_id=project, host="bench"))
            vifs.append(dict(id=next_id + i, uuid=vu, address=mac, instance_uuid=iu,
                             network_id=network_id, port_security=True))
            out.append(dict(uuid=vu, mac=mac, address=free[i][1], instance=iu,
                            port="tap" + vu[:11]))
        s.execute(insert(models.Instance), insts)
        s.execute(insert(models.VirtualInterface), vifs)
        s.execute(update(models.FixedIp), [
            dict(id=free[i][0], instance_uuid=vifs[i]["instance_uuid"],
                 virtual_interface_id=vifs[i]["id"], allocated=True, host="bench")
            for i in range(len(macs))])
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


#: logging's default "2026-11-30 14:53:57,072" and oslo.log's "2026-11-30 14:53:57.072"
_LOG_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)[,.](\d{3})")


def log_time(line: str) -> float:
    import datetime
    m = _LOG_TS.match(line)
    return datetime.datetime.strptime(f"{m.group(1)},{m.group(2)}", "%Y-%m-%d %H:%M:%S,%f").timestamp()


def wait_for(pred, timeout: float, interval: float = 0.05, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def start_controller(cl: Cleanup, conf_path: Path, log: Path,
                     netns: str | None = None) -> subprocess.Popen:
    """``sdn controller`` (in ``netns``: a lab switch's namespace, benchmarks/ovn.py)."""
    p = popen([SDN, "--config-file", str(conf_path), "controller"], log, netns=netns)
    cl.proc(p)
    return p


def controller_listening(port: int) -> bool:
    return bool(sh(["ss", "-tlnH", f"( sport = :{port} )"], check=False).stdout.strip())


# ------------------------------------------------------------------ security groups (additive)

#: cookie/mask of one feature's flows (``ovs-ofctl`` syntax): 0x5d | feature byte | generation
def feature_cookie(feature: int) -> str:
    return f"cookie=0x5d{feature:02x}000000000000/0xffff000000000000"


SDN_COOKIE = "cookie=0x5d00000000000000/0xff00000000000000"


def count_flows(br: str, match: str | None = None) -> int:
    """Flows on ``br`` (``dump-aggregate``), optionally only those matching ``match``
    (e.g. ``feature_cookie(8)``)."""
    cmd = ["ovs-ofctl", "-O", "OpenFlow13", "dump-aggregate", br] + ([match] if match else [])
    out = sh(cmd, timeout=120).stdout
    return int(re.search(r"flow_count=(\d+)", out).group(1))


def remove_vifs(engine, vifs: list[dict], session=None) -> None:
    """Undo ``add_vifs`` in ONE transaction (or ``session``'s): the fixed IPs go back to the
    pool, the VIFs, their group memberships and their instances are deleted."""
    import contextlib
    from sqlalchemy import delete
    insts = [v["instance"] for v in vifs]
    vif_uuids = [v["uuid"] for v in vifs]
    with (contextlib.nullcontext(session) if session is not None else db.transaction(engine)) as s:
        for i in range(0, len(insts), 500):      # SQLite's bound-parameter limit
            chunk, uchunk = insts[i:i + 500], vif_uuids[i:i + 500]
            vif_ids = select(models.VirtualInterface.id).where(
                models.VirtualInterface.uuid.in_(uchunk))
            s.execute(update(models.FixedIp).where(models.FixedIp.virtual_interface_id.in_(vif_ids))
                      .values(instance_uuid=None, virtual_interface_id=None, allocated=False,
                              host=None))
            s.execute(delete(models.SecurityGroupInstance).where(
                models.SecurityGroupInstance.instance_uuid.in_(chunk)))
            s.execute(delete(models.VirtualInterface).where(models.VirtualInterface.uuid.in_(uchunk)))
            s.execute(delete(models.Instance).where(models.Instance.uuid.in_(chunk)))


def instance_names(engine, vifs: list[dict]) -> None:
    """Add each ``add_vifs`` entry's instance ``name`` (what the CLI and APIs take)."""
    with db.read_transaction(engine) as s:
        names = dict(s.execute(select(models.Instance.uuid, models.Instance.name).where(
            models.Instance.uuid.in_([v["instance"] for v in vifs]))).all())
    for v in vifs:
        v["name"] = names[v["instance"]]


def start_kea(cl: Cleanup, work: Path, iface: str, netns: str, cidr: str, pool: str,
              control_socket: bool = False) -> subprocess.Popen:
    """Kea 2.2 (kea-dhcp4, memfile leases, raw socket on ``iface`` in ``netns``) serving
    ``cidr`` from ``pool`` ("first - last"), its files in ``work``; the lease file of an
    earlier run is removed first (a grown one slows Kea)."""
    conf = {"Dhcp4": {
        "interfaces-config": {"interfaces": [iface], "dhcp-socket-type": "raw"},
        "lease-database": {"type": "memfile", "persist": True, "name": str(work / "kea-leases.csv"),
                           "lfc-interval": 0},
        "valid-lifetime": 3600,
        "subnet4": [{"subnet": cidr, "pools": [{"pool": pool}]}],
        "loggers": [{"name": "kea-dhcp4", "severity": "WARN",
                     "output_options": [{"output": str(work / "kea.log")}]}]}}
    if control_socket:
        conf["Dhcp4"]["control-socket"] = {"socket-type": "unix", "socket-name": str(work / "kea.sock")}
    for old in work.glob("kea-leases.csv*"):
        old.unlink()
    (work / "kea.json").write_text(json.dumps(conf))
    env = {"KEA_PIDFILE_DIR": str(work), "KEA_LOCKFILE_DIR": str(work),
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    return cl.proc(popen(["kea-dhcp4", "-c", str(work / "kea.json")], work / "kea.out", netns, env=env))
