"""The engine's contract, kept: the os-ken shell imports no feature module, and the pure floors
(flows, dhcp) import neither the database nor os-ken."""

from __future__ import annotations

import ast
from pathlib import Path

from sdn.flows import compiler

ROOT = Path(__file__).resolve().parents[2] / "sdn"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_the_shell_imports_no_feature_module():
    features = {f.__name__ for f in compiler.FEATURES}
    assert "sdn.flows.router" in features and "sdn.flows.dhcp" in features   # positive control
    for path in sorted((ROOT / "apps").glob("*.py")):
        assert not _imports(path) & features, f"{path.name} imports a feature module"


def test_pure_floors_reach_neither_the_database_nor_os_ken():
    for floor in ("flows", "dhcp"):
        for path in sorted((ROOT / floor).glob("*.py")):
            bad = {n for n in _imports(path)
                   if n.startswith(("sdn.db", "sqlalchemy", "os_ken", "sdn.apps", "sdn.manager"))}
            assert not bad, f"sdn/{floor}/{path.name} imports {sorted(bad)}"
