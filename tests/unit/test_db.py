"""Schema, revision counter, snapshot reads and cross-process allocation safety."""

import multiprocessing
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect
from sqlalchemy.dialects import postgresql

from sdn import config, exception, manager
from sdn.db import api, models
from tests.unit.conftest import write_conf

pytestmark = pytest.mark.both_databases  # every test using the database runs on SQLite and PostgreSQL


def test_migration_matches_models(engine):
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), models.Base.metadata)
    assert diff == []


def test_downgrade_to_base_and_upgrade_again(engine):
    with api.transaction(engine) as s:   # data survives the later migrations' table rewrites
        s.add(models.Instance(uuid="u1", name="a", hostname="a", project_id="p", rx_kbps=5))
    api.migrate(engine, "0002", downgrade=True)
    api.migrate(engine, "head")
    with api.read_transaction(engine) as s:
        assert s.get(models.Instance, "u1").name == "a"
    api.migrate(engine, "base", downgrade=True)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    api.sync(engine)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), models.Base.metadata) == []
    assert api.current_revision(engine) == 0


def test_sync_is_idempotent_and_creates_parent_dir(tmp_path):
    url = f"sqlite:///{tmp_path}/a/b/c.sqlite"
    eng = api.get_engine(url)
    api.sync(eng)
    api.sync(eng)
    assert (tmp_path / "a" / "b" / "c.sqlite").exists()
    assert api.current_revision(eng) == 0


def test_revision_bumps_on_commit_only(engine):
    assert api.current_revision(engine) == 0
    with api.transaction(engine) as s:
        s.add(models.Instance(uuid="u1", name="a", hostname="a", project_id="p"))
    assert api.current_revision(engine) == 1
    try:
        with api.transaction(engine) as s:
            s.add(models.Instance(uuid="u2", name="b", hostname="b", project_id="p"))
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert api.current_revision(engine) == 1
    with api.transaction(engine) as s:  # read-only use of a write transaction
        s.get(models.Instance, "u1")
    assert api.current_revision(engine) == 1
    assert len(api.load_views(engine).vifs) == 0


def test_noop_manager_calls_keep_revision(make_manager, engine):
    mgr = make_manager("flatdhcp")
    mgr.create_networks("f", "10.5.0.0/24")
    mgr.allocate_for_instance("a", "p")
    rev = api.current_revision(engine)
    mgr.allocate_for_instance("a", "p")  # idempotent repeat
    assert mgr.timeout_fixed_ips() == 0
    assert api.current_revision(engine) == rev
    mgr.deallocate_for_instance("a")
    assert api.current_revision(engine) == rev + 1


def test_reader_snapshot_does_not_block_writer(engine, db_url):
    other = api.get_engine(db_url)
    with api.read_transaction(engine) as s:
        before = s.get(models.StateRevision, 1).value
        with api.transaction(other) as w:  # would time out if the reader held the write lock
            w.add(models.Instance(uuid="u1", name="a", hostname="a", project_id="p"))
        assert s.query(models.Instance).count() == 0  # still the old snapshot
    assert api.current_revision(engine) == before + 1


def test_free_ip_pick_skips_locked_rows_on_postgresql():
    sql = str(manager.free_fixed_ip_query(1).compile(dialect=postgresql.dialect()))
    assert "FOR UPDATE SKIP LOCKED" in sql


#: worker processes of the concurrency tests (the issue's "8 simultaneous launches")
WORKERS = 8
#: rounds of simultaneous first launches of one new project
ROUNDS = 20


@pytest.fixture(scope="module")
def workers():
    """WORKERS spawned processes shared by this module's concurrency tests (starting and
    importing sdn is most of their cost); spawn: a forked child would inherit eventlet state
    other test modules may have imported."""
    with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(time.sleep, [0.5] * WORKERS))    # all of them up before the first test
        yield pool


_manager_of: dict[str, manager.NetworkManager] = {}


def _manager(conf_path):
    """This worker's manager on the test's database (one at a time: a test's database is
    dropped after it)."""
    if conf_path not in _manager_of:
        for old in _manager_of.values():
            old.engine.dispose()
        _manager_of.clear()
        conf = config.load([], [conf_path], conf=config.make_conf())
        _manager_of[conf_path] = manager.get_manager(api.get_engine(conf.database.connection), conf)
    return _manager_of[conf_path]


def _launch(conf_path, names, project=None, start_at=None):
    """allocate_for_instance of each name (None when no fixed IP is left), in this worker;
    the first at wall-clock time ``start_at``, already connected, so the workers collide."""
    mgr = _manager(conf_path)
    api.current_revision(mgr.engine)
    if start_at is not None:
        time.sleep(max(0.0, start_at - time.time()))
    got = []
    for name in names:
        try:
            got.append(mgr.allocate_for_instance(name, project or f"proj-{name.split('-')[0]}"))
        except exception.NoMoreFixedIps:
            got.append(None)
    return got


def _run_workers(pool, conf_path, workers, per_worker, project=None):
    """Every worker launches ``per_worker`` instances (``w<n>-<i>``, project ``proj-w<n>`` or
    ``project``) at once; returns every allocation (None: refused for lack of addresses)."""
    start_at = time.time() + 0.3
    futures = [pool.submit(_launch, conf_path, [f"w{n}-{i}" for i in range(per_worker)], project, start_at)
               for n in range(workers)]
    return [a for f in futures for a in f.result(timeout=300)]


def _conf(tmp_path, db_url, kind):
    path = write_conf(tmp_path / "c.conf", DEFAULT={"network_manager": kind}, database={"connection": db_url})
    return path, config.load([], [path], conf=config.make_conf())


def test_concurrent_processes_never_share_an_address(tmp_path, engine, db_url, workers):
    conf_path, conf = _conf(tmp_path, db_url, "flatdhcp")
    manager.get_manager(engine, conf).create_networks("f", "10.0.0.0/26")  # 61 usable addresses
    got = [a and a["address"] for a in _run_workers(workers, conf_path, workers=6, per_worker=12)]  # 72
    handed_out = [a for a in got if a]
    assert len(handed_out) == 61 and len(set(handed_out)) == 61
    assert got.count(None) == 11
    views = api.load_views(engine)
    assert sorted(a for v in views.vifs for a in v.addresses) == sorted(handed_out)
    assert len({v.mac for v in views.vifs}) == 61


def test_concurrent_projects_get_distinct_vlan_networks(tmp_path, engine, db_url, workers):
    conf_path, conf = _conf(tmp_path, db_url, "vlan")
    manager.get_manager(engine, conf).create_networks("v", "10.0.0.0/22", num_networks=4, network_size=256)
    _run_workers(workers, conf_path, workers=4, per_worker=3)
    owners = {n.vlan: n.project_id for n in api.load_views(engine).networks.values()}
    assert sorted(owners.values()) == ["proj-w0", "proj-w1", "proj-w2", "proj-w3"]
    by_project = {}
    for v in api.load_views(engine).vifs:
        by_project.setdefault(v.project_id, set()).add(v.network_id)
    assert all(len(nets) == 1 for nets in by_project.values())


def test_simultaneous_first_launches_of_a_project_get_one_network(tmp_path, engine, db_url, workers):
    """The issue's race: WORKERS processes launch the first instances of one new project at
    the same moment; the project must end with one network, never one per launch."""
    conf_path, conf = _conf(tmp_path, db_url, "vlan")
    manager.get_manager(engine, conf).create_networks("v", "10.0.0.0/21", num_networks=ROUNDS + WORKERS,
                                                      network_size=64)
    for r in range(ROUNDS):
        start_at = time.time() + 0.2
        futures = [workers.submit(_launch, conf_path, [f"r{r}w{w}-0"], f"proj-{r}", start_at)
                   for w in range(WORKERS)]
        got = [f.result(timeout=120)[0] for f in futures]
        assert len({a["network_id"] for a in got}) == 1, f"round {r}: {sorted(a['cidr'] for a in got)}"
    owned = Counter(n.project_id for n in api.load_views(engine).networks.values() if n.project_id)
    assert owned == {f"proj-{r}": 1 for r in range(ROUNDS)}


def test_eight_processes_launching_100_each_share_no_address_mac_or_port(tmp_path, pg_database, workers):
    """WORKERS x 100 launches on PostgreSQL (row locks, no global write lock), four projects
    shared by the workers: every instance gets its own fixed IP, MAC and port; each project
    one network."""
    engine = api.get_engine(pg_database)
    conf_path, conf = _conf(tmp_path, pg_database, "vlan")
    manager.get_manager(engine, conf).create_networks("v", "10.0.0.0/21", num_networks=8, network_size=256)
    start_at = time.time() + 0.3
    futures = [workers.submit(_launch, conf_path, [f"w{n}-{i}" for i in range(100)], f"proj-{n % 4}",
                              start_at) for n in range(WORKERS)]
    got = [a for f in futures for a in f.result(timeout=600)]
    assert None not in got and len(got) == WORKERS * 100
    views = api.load_views(engine)
    assert len(views.vifs) == WORKERS * 100
    for key in ("address", "mac", "port_name", "vif_uuid"):
        values = [a[key] for a in got]
        assert len(set(values)) == len(values), f"duplicate {key}"
    assert sorted(a for v in views.vifs for a in v.addresses) == sorted(a["address"] for a in got)
    assert len({v.mac for v in views.vifs}) == len(views.vifs)
    networks = {p: {a["network_id"] for a in got if a["project"] == p} for p in {a["project"] for a in got}}
    assert all(len(n) == 1 for n in networks.values()) and len(networks) == 4
    engine.dispose()


def test_reading_a_missing_database_creates_nothing(tmp_path):
    url = f"sqlite:///{tmp_path}/missing/dir/sdn.sqlite"
    eng = api.get_engine(url)
    try:
        api.current_revision(eng)
        raise AssertionError("reading a missing database succeeded")
    except exception.DatabaseMissing as err:
        assert "sdn db sync" in str(err) and "does not exist" in str(err)
    assert list(tmp_path.iterdir()) == []


def _real_error(make):
    """The SQLAlchemy wrapper of a genuine sqlite3 error raised by ``make()``."""
    import sqlite3

    try:
        make(sqlite3)
    except sqlite3.Error as orig:
        return sa_exc.OperationalError("stmt", {}, orig)
    raise AssertionError("no error raised")


def test_database_errors_are_told_apart(tmp_path):
    path = str(tmp_path / "state" / "sdn.sqlite")
    db_url = f"sqlite:///{path}"
    api.sync(api.get_engine(db_url))
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")

    def read_only_write(sqlite3):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.execute("UPDATE state_revision SET value = value + 1")

    def no_schema(sqlite3):
        sqlite3.connect(str(empty)).execute("SELECT * FROM networks")

    def locked(sqlite3):
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            other = sqlite3.connect(path, timeout=0.05, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
        finally:
            holder.execute("ROLLBACK")

    missing = api.explain(_real_error(no_schema), db_url)
    assert isinstance(missing, exception.DatabaseMissing) and "no sdn schema" in str(missing)
    assert "sdn db sync" in str(missing)
    denied = api.explain(_real_error(read_only_write), db_url)
    assert isinstance(denied, exception.DatabasePermission) and "cannot be written" in str(denied)
    assert "sdn db sync" not in str(denied) and "permissions" in str(denied)
    busy = api.explain(_real_error(locked), db_url)
    assert isinstance(busy, exception.DatabaseLocked) and "locked by another process" in str(busy)
    assert "sdn db sync" not in str(busy)


def test_a_plain_postgresql_url_uses_psycopg_3(pg_database):
    engine = api.get_engine(pg_database.replace("postgresql+psycopg://", "postgresql://"))
    assert engine.dialect.driver == "psycopg"
    assert api.current_revision(engine) == 0
    engine.dispose()


def test_postgresql_errors_are_told_apart(pg_cluster, pg_database):
    empty = api.get_engine(pg_cluster.url(pg_cluster.create_database()))
    with pytest.raises(sa_exc.ProgrammingError) as no_schema:
        api.current_revision(empty)
    missing = api.explain(no_schema.value, str(empty.url))
    assert isinstance(missing, exception.DatabaseMissing) and "sdn db sync" in str(missing)
    with pytest.raises(sa_exc.OperationalError) as no_db:
        api.current_revision(api.get_engine(pg_cluster.url("no_such_db")))
    unknown = api.explain(no_db.value, pg_cluster.url("no_such_db"))
    assert isinstance(unknown, exception.DatabaseUnusable) and "createdb" in str(unknown)
    assert pg_cluster.password not in str(unknown)
    engine = api.get_engine(pg_database)
    holder = engine.connect()
    holder.exec_driver_sql("LOCK TABLE state_revision IN EXCLUSIVE MODE")
    try:
        with pytest.raises(sa_exc.OperationalError) as timeout:
            with api.transaction(engine, lock_wait=0.2) as s:
                s.add(models.Instance(uuid="u1", name="a", hostname="a", project_id="p"))
    finally:
        holder.rollback()
        holder.close()
    busy = api.explain(timeout.value, pg_database)
    assert isinstance(busy, exception.DatabaseLocked) and "sdn db sync" not in str(busy)
    assert api.current_revision(engine) == 0   # the refused write left nothing
