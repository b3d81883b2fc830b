"""Schema, revision counter, snapshot reads and cross-process allocation safety."""

import multiprocessing

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


def _worker(conf_path, prefix, count, queue):
    conf = config.load([], [conf_path], conf=config.make_conf())
    mgr = manager.get_manager(api.get_engine(conf.database.connection), conf)
    got = []
    for i in range(count):
        try:
            got.append(mgr.allocate_for_instance(f"{prefix}-{i}", f"proj-{prefix}")["address"])
        except exception.NoMoreFixedIps:
            got.append(None)
    queue.put(got)


def _run_workers(conf_path, workers, per_worker):
    # spawn: a forked child would inherit eventlet state other test modules may have imported
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(conf_path, f"w{n}", per_worker, queue)) for n in range(workers)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return [a for r in results for a in r]


def test_concurrent_processes_never_share_an_address(tmp_path, engine, db_url):
    conf_path = write_conf(tmp_path / "c.conf", DEFAULT={"network_manager": "flatdhcp"},
                           database={"connection": db_url})
    conf = config.load([], [conf_path], conf=config.make_conf())
    manager.get_manager(engine, conf).create_networks("f", "10.0.0.0/26")  # 61 usable addresses
    got = _run_workers(conf_path, workers=6, per_worker=12)  # 72 requests
    handed_out = [a for a in got if a]
    assert len(handed_out) == 61 and len(set(handed_out)) == 61
    assert got.count(None) == 11
    views = api.load_views(engine)
    assert sorted(a for v in views.vifs for a in v.addresses) == sorted(handed_out)
    assert len({v.mac for v in views.vifs}) == 61


def test_concurrent_projects_get_distinct_vlan_networks(tmp_path, engine, db_url):
    conf_path = write_conf(tmp_path / "c.conf", DEFAULT={"network_manager": "vlan"},
                           database={"connection": db_url})
    conf = config.load([], [conf_path], conf=config.make_conf())
    manager.get_manager(engine, conf).create_networks("v", "10.0.0.0/22", num_networks=4, network_size=256)
    _run_workers(conf_path, workers=4, per_worker=3)
    owners = {n.vlan: n.project_id for n in api.load_views(engine).networks.values()}
    assert sorted(owners.values()) == ["proj-w0", "proj-w1", "proj-w2", "proj-w3"]
    by_project = {}
    for v in api.load_views(engine).vifs:
        by_project.setdefault(v.project_id, set()).add(v.network_id)
    assert all(len(nets) == 1 for nets in by_project.values())


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
