"""Fixed-IP allocation rate: PostgreSQL with 8 processes against SQLite, its anchor in the same run.

    .venv/bin/python benchmarks/bench_alloc.py [--procs 8] [--ops 2000] [--runs 5]

Each run: a fresh database (SQLite: a new WAL file; PostgreSQL: a database copied from a
migrated template in the benchmark's own throw-away cluster, tests/pg.py, with PostgreSQL's
durable defaults: fsync and synchronous commit on), one flat network, and
``procs`` worker processes (spawned once, connected before the clock starts) that each launch and
delete instances in a loop: one ``allocate_for_instance`` + one ``deallocate_for_instance`` are two
operations, as in ``sdn instance launch`` / ``delete``. ops/s = operations / (last worker's end -
common start). Every run is checked for duplicates: an address handed to an instance while another
one still held it. Prints and returns medians of ``runs`` runs per database, and the ratio
PostgreSQL / SQLite. ``benchmarks/run.py --only alloc`` (``make bench``) runs it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sdn import config as sdn_config  # noqa: E402
from sdn import manager as managers  # noqa: E402
from sdn.db import api as db  # noqa: E402
from tests import pg  # noqa: E402
from tests.integration import netlab  # noqa: E402

CIDR = "10.90.0.0/24"
#: the worker's manager, per config file (one database at a time)
_worker_state: dict[str, managers.NetworkManager] = {}


def _manager(conf_path: str) -> managers.NetworkManager:
    if conf_path not in _worker_state:
        for old in _worker_state.values():
            old.engine.dispose()
        _worker_state.clear()
        conf = sdn_config.load(["--config-file", conf_path], conf=sdn_config.make_conf())
        _worker_state[conf_path] = managers.get_manager(db.get_engine(conf.database.connection), conf)
    return _worker_state[conf_path]


def _worker(conf_path: str, wid: int, pairs: int, start_at: float) -> tuple[list, float, float]:
    """``pairs`` launch + delete cycles from ``start_at`` (wall clock). Returns
    ([(address, held from, held until, name)], first start, last end)."""
    mgr = _manager(conf_path)
    db.current_revision(mgr.engine)          # connected before the clock starts
    time.sleep(max(0.0, start_at - time.time()))
    began = time.time()
    held = []
    for i in range(pairs):
        name = f"w{wid}i{i}"
        address = mgr.allocate_for_instance(name, "bench")["address"]
        start = time.time()                  # after the allocation committed
        end = time.time()                    # before the release is asked for
        mgr.deallocate_for_instance(name)
        held.append((address, start, end, name))
    return held, began, time.time()


def duplicates(holds: list[tuple[str, float, float, str]]) -> int:
    """Holds of one address that overlap in time (two instances had it at once)."""
    dups = 0
    last: dict[str, float] = {}
    for address, start, end, _name in sorted(holds):
        if address in last and start < last[address]:
            dups += 1
        last[address] = max(last.get(address, 0.0), end)
    return dups


def _one_run(pool, url: str, workdir: Path, procs: int, ops: int) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    conf_path = netlab.write_sdn_conf(workdir / "sdn.conf", {
        "DEFAULT": {"network_manager": "flat"}, "database": {"connection": url}})
    conf = sdn_config.load(["--config-file", str(conf_path)], conf=sdn_config.make_conf())
    engine = db.get_engine(url)
    db.sync(engine)
    managers.get_manager(engine, conf).create_networks("bench", CIDR)
    engine.dispose()
    pairs = ops // 2 // procs
    start_at = time.time() + 1.0
    results = list(pool.map(_worker, [str(conf_path)] * procs, range(procs), [pairs] * procs,
                            [start_at] * procs))
    holds = [h for r in results for h in r[0]]
    elapsed = max(r[2] for r in results) - min(r[1] for r in results)
    n_ops = 2 * len(holds)
    return {"operations": n_ops, "seconds": round(elapsed, 3), "ops_per_s": round(n_ops / elapsed),
            "duplicates": duplicates(holds)}


def run(work: Path, log, procs: int = 8, ops: int = 2000, runs: int = 5) -> list[dict]:
    """Both databases, ``runs`` runs each, interleaved (SQLite, PostgreSQL, SQLite, ...) so that
    a noisy moment of the machine hits both. Returns one dict per database: {backend,
    processes, operations (per run), ops_per_s (median), runs_ops_per_s, duplicates (all runs),
    ratio_to_sqlite}."""
    work.mkdir(parents=True, exist_ok=True)
    cluster = pg.Cluster.start(durable=True)   # fsync on, as SQLite's WAL commits are
    per: dict[str, list[dict]] = {"sqlite": [], "postgresql": []}
    try:
        template = cluster.create_database("bench_template")
        engine = db.get_engine(cluster.url(template))
        db.sync(engine)
        engine.dispose()
        with tempfile.TemporaryDirectory(dir=work) as tmp, \
                ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for n in range(runs):
                for backend in per:
                    if backend == "sqlite":
                        url = f"sqlite:///{tmp}/sqlite-{n}/sdn.sqlite"
                    else:
                        url = cluster.url(cluster.create_database(template=template))
                    res = _one_run(pool, url, Path(tmp) / f"{backend}-{n}", procs, ops)
                    log(f"    allocation {backend} run {n + 1}/{runs}: {res['ops_per_s']} ops/s "
                        f"({res['operations']} ops in {res['seconds']}s, {res['duplicates']} duplicates)")
                    per[backend].append(res)
    finally:
        cluster.stop()
    out = []
    for backend, results in per.items():
        rates = [r["ops_per_s"] for r in results]
        out.append({"backend": backend, "processes": procs, "operations": results[0]["operations"],
                    "ops_per_s": round(statistics.median(rates)), "runs_ops_per_s": rates,
                    "duplicates": sum(r["duplicates"] for r in results)})
    anchor = out[0]["ops_per_s"]
    for res in out:
        res["ratio_to_sqlite"] = round(res["ops_per_s"] / anchor, 2) if anchor else None
    log(f"    allocation medians of {runs}: " + ", ".join(
        f"{r['backend']} {r['ops_per_s']} ops/s (x{r['ratio_to_sqlite']})" for r in out))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=8)
    ap.add_argument("--ops", type=int, default=2000, help="operations per run (launch and delete count one each)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--work", default="var/bench/work")
    args = ap.parse_args()
    run(Path(args.work).resolve(), lambda m: print(m, flush=True), args.procs, args.ops, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
