"""Fixtures for integration tests: real userspace Open vSwitch, network namespaces, dhclient,
the sdn CLI and the sdn controller. Helpers live in ``netlab.py``.

Fixtures (all function-scoped; everything created is removed at teardown, by handle, even when
the test fails):

``ovs_bridge(name=None, controller_port=None, fail_mode="secure") -> netlab.Bridge``
    netdev bridge ``sdnt<4 hex>``, OpenFlow13, secure fail mode, optional controller
    ``tcp:127.0.0.1:<port>``.
``netns_host(port_name=None, mac=None) -> netlab.NetnsHost``
    namespace + veth (``eth0`` with ``mac`` inside, ``port_name`` outside, not on a bridge).
``capture(iface, bpf="", netns=None, count=None) -> netlab.Capture``
    tcpdump (ready when returned); stopped at teardown.
``make_sdn_env(trunk_interfaces=(), config=None, bridge=None, db_sync=True) -> netlab.SdnEnv``
    sdn.conf + SQLite in tmp_path, a bridge whose controller target is the env's port,
    ``sdn db sync`` done. ``env.cli(...)``, ``env.start_controller()``, ``env.stop_controller()``.
``sdn_env -> netlab.SdnEnv``
    ``make_sdn_env()`` with defaults.

Integration tests are skipped (with the reason) only when not root or Open vSwitch cannot be
started; with ``SDN_REQUIRE_INTEGRATION=1`` (set by .ci/run) that is an error instead.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from tests.integration import netlab
from tests.integration.netlab import wait_for  # noqa: F401  (re-export for tests)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _integration_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "integration tests need root (network namespaces, Open vSwitch)"
    ok, why = netlab.start_ovs()
    if not ok:
        return f"userspace Open vSwitch is not available: {why}"
    return None


@pytest.fixture(scope="session")
def integration_ready():
    reason = _integration_unavailable()
    if reason:
        if os.environ.get("SDN_REQUIRE_INTEGRATION") == "1":
            pytest.fail(f"SDN_REQUIRE_INTEGRATION=1 but {reason}")
        pytest.skip(reason)
    return True


@pytest.fixture(autouse=True)
def _require_integration(integration_ready):
    """Every test in tests/integration needs root + OVS."""


class BridgeFactory:
    """Creates bridges and deletes exactly those at ``close_all()``."""

    def __init__(self):
        self.bridges: list[netlab.Bridge] = []

    def __call__(self, name: str | None = None, controller_port: int | None = None,
                 fail_mode: str = "secure") -> netlab.Bridge:
        br = netlab.create_bridge(name=name, controller_port=controller_port, fail_mode=fail_mode)
        self.bridges.append(br)
        return br

    def close_all(self) -> None:
        for br in reversed(self.bridges):
            br.close()


class NetnsFactory:
    """Creates NetnsHosts and removes exactly those at ``close_all()``."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.hosts: list[netlab.NetnsHost] = []

    def __call__(self, port_name: str | None = None, mac: str | None = None) -> netlab.NetnsHost:
        name = f"sdnt-{netlab.random_suffix(6)}"
        host = netlab.NetnsHost(port_name=port_name, mac=mac, name=name, workdir=self.workdir / name)
        self.hosts.append(host)
        return host

    def close_all(self) -> None:
        errors = []
        for host in reversed(self.hosts):
            try:
                host.close()
            except Exception as e:  # keep cleaning the others
                errors.append(e)
        if errors:
            raise errors[0]


class CaptureFactory:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.captures: list[netlab.Capture] = []

    def __call__(self, iface: str, bpf: str = "", netns: str | None = None,
                 count: int | None = None) -> netlab.Capture:
        cap = netlab.Capture(iface, bpf, netns=netns, count=count, directory=self.workdir)
        self.captures.append(cap)
        return cap

    def close_all(self) -> None:
        for cap in self.captures:
            cap.stop()


class SdnEnvFactory:
    def __init__(self, tmp_path: Path, bridges: BridgeFactory):
        self.tmp_path = tmp_path
        self.bridges = bridges
        self.envs: list[netlab.SdnEnv] = []

    def __call__(self, trunk_interfaces=(), config: dict | None = None, bridge: str | None = None,
                 db_sync: bool = True) -> netlab.SdnEnv:
        """``config`` is {section: {option: value}} merged over the defaults below."""
        workdir = self.tmp_path / f"sdn{len(self.envs)}"
        workdir.mkdir(parents=True, exist_ok=True)
        port = netlab.free_tcp_port()
        br = self.bridges(name=bridge)  # pointed at the controller by start_controller
        sections = netlab.merge_sections({
            "DEFAULT": {"state_path": str(workdir)},
            "database": {"connection": f"sqlite:///{workdir / 'sdn.sqlite'}"},
            "ovs": {"ofp_tcp_listen_port": port, "integration_bridge": br.name,
                    "trunk_interfaces": list(trunk_interfaces)},
            # several test controllers run at once: metrics only where a test asks for them
            "metrics": {"controller_port": 0, "agent_port": 0},
        }, config)
        conf = netlab.write_sdn_conf(workdir / "sdn.conf", sections)
        env = netlab.SdnEnv(workdir=workdir, bridge=br, port=port, config_file=conf,
                            sdn_exe=netlab.find_sdn_exe(REPO_ROOT))
        self.envs.append(env)
        if db_sync:
            env.cli("db", "sync")
        return env

    def close_all(self) -> None:
        for env in reversed(self.envs):
            env.close()


@contextlib.contextmanager
def module_factories(tmp: Path):
    """(bridges, envs, hosts) factories for a module-scoped lab (``tmp`` from
    ``tmp_path_factory``); on exit every host, env and bridge they made is closed, hosts first."""
    bridges = BridgeFactory()
    envs = SdnEnvFactory(tmp, bridges)
    hosts = NetnsFactory(tmp / "netns")
    try:
        yield bridges, envs, hosts
    finally:
        try:
            hosts.close_all()
        finally:
            envs.close_all()
            bridges.close_all()


@pytest.fixture
def ovs_bridge():
    factory = BridgeFactory()
    yield factory
    factory.close_all()


@pytest.fixture
def netns_host(tmp_path):
    factory = NetnsFactory(tmp_path / "netns")
    yield factory
    factory.close_all()


@pytest.fixture
def capture(tmp_path):
    (tmp_path / "captures").mkdir(exist_ok=True)
    factory = CaptureFactory(tmp_path / "captures")
    yield factory
    factory.close_all()


@pytest.fixture
def make_sdn_env(tmp_path, ovs_bridge):
    factory = SdnEnvFactory(tmp_path, ovs_bridge)
    yield factory
    factory.close_all()


@pytest.fixture
def sdn_env(make_sdn_env):
    return make_sdn_env()


@pytest.fixture
def linux(make_sdn_env, netns_host, tmp_path):
    """The Linux backend alone (``backends.LinuxBackend``), closed at teardown."""
    from tests.integration.backends import LinuxBackend
    be = LinuxBackend(make_sdn_env, netns_host, tmp_path)
    yield be
    be.close()


@pytest.fixture(params=["ovs", "linux"])
def backend(request, make_sdn_env, netns_host, tmp_path):
    """The data plane under test (``tests/integration/backends.py``): "ovs" (OpenFlow controller
    on userspace OVS) or "linux" (``sdn agent`` with Linux bridge, iptables, dnsmasq in a
    hypervisor namespace); "linux-scapy" selects the raw-socket DHCP responder instead of
    dnsmasq. Override the list with ``@pytest.mark.parametrize("backend", [...], indirect=True)``."""
    from tests.integration.backends import make_backend

    be = make_backend(request.param, make_sdn_env, netns_host, tmp_path)
    yield be
    be.close()
