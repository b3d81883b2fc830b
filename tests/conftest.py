"""Top-level pytest configuration shared by unit and integration tests.

Tests under ``tests/integration`` get the ``integration`` marker automatically, so
``pytest -m "not integration"`` runs the fast, unprivileged unit tests only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

_INTEGRATION_DIR = REPO_ROOT / "tests" / "integration"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _INTEGRATION_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)


def pytest_configure(config):
    # Debian's Mininet uses distutils.StrictVersion; not ours to fix.
    config.addinivalue_line("filterwarnings", "ignore:distutils Version classes are deprecated:DeprecationWarning")


# -- PostgreSQL: one throw-away cluster per test session (tests/pg.py), started on first use ----

#: the migrated database every PostgreSQL test database is copied from
PG_TEMPLATE = "sdn_template"


@pytest.fixture(scope="session")
def pg_cluster():
    """The session's own PostgreSQL cluster (``tests.pg.Cluster``), stopped and removed after.
    Skips when PostgreSQL is not installed, fails instead under SDN_REQUIRE_INTEGRATION=1
    (.ci/run) or SDN_REQUIRE_POSTGRESQL=1."""
    from tests import pg
    try:
        cluster = pg.Cluster.start()
    except pg.Unavailable as err:
        if "1" in (os.environ.get("SDN_REQUIRE_INTEGRATION"), os.environ.get("SDN_REQUIRE_POSTGRESQL")):
            pytest.fail(f"PostgreSQL is required here but {err}")
        pytest.skip(str(err))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def pg_template(pg_cluster) -> str:
    """Name of a database migrated to head (alembic), the template of ``pg_database``."""
    from sdn.db import api
    pg_cluster.create_database(PG_TEMPLATE)
    engine = api.get_engine(pg_cluster.url(PG_TEMPLATE))
    api.sync(engine)
    engine.dispose()     # a template must have no open connection when it is copied
    return PG_TEMPLATE


@pytest.fixture
def pg_database(pg_cluster, pg_template):
    """URL of a fresh migrated PostgreSQL database of this test, dropped after it."""
    name = pg_cluster.create_database(template=pg_template)
    yield pg_cluster.url(name)
    pg_cluster.drop_database(name)
