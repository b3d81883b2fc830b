"""Fixtures for the state/manager/CLI tests: a fresh config and a migrated SQLite file per test."""

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


@pytest.fixture
def db_url(tmp_path):
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
