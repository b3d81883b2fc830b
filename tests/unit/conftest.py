"""Fixtures for the state/manager/CLI tests: a fresh config and a migrated database per test.

The database is a SQLite file; in a module marked ``pytest.mark.both_databases`` every test that
uses it runs twice, ``[sqlite]`` and ``[postgresql]`` (a fresh database of the session's own
PostgreSQL cluster, tests/pg.py).
"""

import pytest

from sdn import config, manager
from sdn.db import api


def write_conf(path, **sections) -> str:
    """Write an ini file from {"DEFAULT": {...}, "database": {...}}; returns its path."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {v}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


#: the engines a ``both_databases`` module runs on (the ``db`` fixture's parameters)
DATABASES = ("sqlite", "postgresql")


def pytest_configure(config):
    config.addinivalue_line("markers", "both_databases: the module's database tests run on SQLite "
                                       "and PostgreSQL (the db fixture)")


def pytest_generate_tests(metafunc):
    if "db" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_databases"):
        metafunc.parametrize("db", DATABASES, indirect=True)


@pytest.fixture
def db(request) -> str:
    """The database engine of this test: ``sqlite``, or as parametrized ``postgresql``."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def db_url(db, tmp_path, request):
    if db == "postgresql":
        return request.getfixturevalue("pg_database")
    return f"sqlite:///{tmp_path}/state/sdn.sqlite"


@pytest.fixture
def engine(db_url):
    eng = api.get_engine(db_url)
    api.sync(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def make_conf(tmp_path, db_url):
    """make_conf(**DEFAULT options) -> a loaded ConfigOpts using the test database."""
    def _make(**defaults):
        path = write_conf(tmp_path / "sdn.conf", DEFAULT=defaults, database={"connection": db_url})
        return config.load([], [path], conf=config.make_conf())
    return _make


@pytest.fixture
def make_manager(engine, make_conf):
    """make_manager("vlan", **options) -> a manager of that kind on the test database."""
    def _make(kind="vlan", **options):
        return manager.get_manager(engine, make_conf(network_manager=kind, **options))
    return _make
