"""Deployment packaging: the systemd units pass ``systemd-analyze verify`` with no warning, the
checked-in sample config is what oslo-config-generator makes today, and ``list_opts`` covers
every option group sdn registers."""

from __future__ import annotations

import configparser
import difflib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sdn import config

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "etc" / "systemd"
UNIT_NAMES = ("sdn-controller.service", "sdn-agent.service", "sdn-api.service", "sdn-metadata.service")
SAMPLE = REPO / "etc" / "sdn" / "sdn.conf.sample"
GENERATOR_CONF = REPO / "etc" / "oslo-config-generator" / "sdn.conf"
INSTALLED_PATHS = ("/usr/local/bin/sdn", "/usr/bin/sdn")


def _sdn_exe() -> str:
    """The sdn console script of the interpreter running the tests."""
    exe = Path(sys.executable).parent / "sdn"
    return str(exe) if exe.exists() else shutil.which("sdn")


def _verify(unit: Path) -> str:
    """``systemd-analyze verify`` output (warnings included) of ``unit``; it exits 0 on an
    unknown key or a bad value and only says so, hence the output is the verdict."""
    p = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                       timeout=60)
    return (p.stdout + p.stderr).strip() + (f"\n(exit {p.returncode})" if p.returncode else "")


def _unit_copy(name: str, directory: Path) -> Path:
    """The unit with ExecStart pointed at the sdn installed for these tests (verify needs an
    existing executable); never installed into the system."""
    text = (UNITS / name).read_text()
    for path in INSTALLED_PATHS:
        text = text.replace(path + " ", _sdn_exe() + " ")
    copy = directory / name
    copy.write_text(text)
    return copy


needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze is not installed")


@needs_systemd_analyze
@pytest.mark.parametrize("name", UNIT_NAMES)
def test_unit_passes_systemd_analyze_verify(name, tmp_path):
    assert _verify(_unit_copy(name, tmp_path)) == ""


@needs_systemd_analyze
def test_verify_reports_a_bad_unit(tmp_path):
    """Positive control: the same check catches a misspelt key and a bad Restart= value."""
    text = _unit_copy("sdn-controller.service", tmp_path).read_text()
    bad = tmp_path / "sdn-bad.service"
    bad.write_text(text.replace("Restart=on-failure", "Restart=sometimes\nProtectSistem=strict"))
    out = _verify(bad)
    assert "sometimes" in out and "ProtectSistem" in out


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(UNITS / name)
    return parser


@pytest.mark.parametrize("name, command", [
    ("sdn-controller.service", "controller"), ("sdn-agent.service", "agent"),
    ("sdn-api.service", "api"), ("sdn-metadata.service", "metadata")])
def test_unit_runs_its_command_with_the_system_config(name, command):
    service = _unit(name)["Service"]
    assert service["ExecStart"].split() == [
        "/usr/local/bin/sdn", "--config-file", config.DEFAULT_CONFIG_FILE, command]
    assert service["Restart"] == "on-failure"
    assert service["StateDirectory"] == "sdn"   # /var/lib/sdn: state_path, the SQLite default


def test_each_unit_command_is_an_sdn_verb():
    """A unit must not start a command the CLI does not have (e.g. after a rename)."""
    from sdn import cli

    parser = cli.build_parser()
    verbs = next(a for a in parser._actions if a.dest == "category").choices
    for name in UNIT_NAMES:
        assert _unit(name)["Service"]["ExecStart"].split()[-1] in verbs, name


def test_agent_keeps_what_the_linux_backend_needs():
    """Netlink/iptables/raw DHCP sockets, dnsmasq surviving restarts, writable /proc/sys/net."""
    service = _unit("sdn-agent.service")["Service"]
    caps = service["CapabilityBoundingSet"].split()
    assert {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE", "CAP_KILL"} <= set(caps)
    assert {"AF_NETLINK", "AF_PACKET"} <= set(service["RestrictAddressFamilies"].split())
    assert service["KillMode"] == "process"
    assert "ProtectKernelTunables" not in service


def test_controller_waits_for_open_vswitch():
    unit = _unit("sdn-controller.service")["Unit"]
    assert "openvswitch-switch.service" in unit["After"].split()
    assert "openvswitch-switch.service" in unit["Wants"].split()


# ------------------------------------------------------------------------ sample config


def _generate(tmp_path: Path) -> str:
    """oslo-config-generator's output for etc/oslo-config-generator/sdn.conf, run outside the
    repository so installed metadata (the entry points) is what counts."""
    out = tmp_path / "sdn.conf.sample"
    p = subprocess.run([sys.executable, "-m", "oslo_config.generator", "--config-file",
                        str(GENERATOR_CONF), "--output-file", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    return out.read_text()


def test_checked_in_sample_config_is_the_generators_output(tmp_path):
    generated = _generate(tmp_path)
    checked_in = SAMPLE.read_text()
    diff = "".join(difflib.unified_diff(checked_in.splitlines(True), generated.splitlines(True),
                                        "etc/sdn/sdn.conf.sample", "generated"))
    assert not diff, f"the sample config is out of date: run 'make sample-config'\n{diff[:4000]}"


def test_sample_config_has_every_group_and_option(tmp_path):
    generated = _generate(tmp_path)
    for group, opts in config.list_opts():
        assert f"[{group}]" in generated
        for opt in opts:
            assert f"\n#{opt.dest} =" in generated, (group, opt.dest)
    assert "#debug = false" in generated     # oslo.log's namespace
    assert "#log_file = " in generated


def test_list_opts_is_every_registered_group():
    groups = dict(config.list_opts())
    assert set(groups) == set(config.GROUPS)
    for group, opts in config.GROUPS.items():
        assert [o.dest for o in groups[group]] == [o.dest for o in opts]


def test_list_opts_is_the_entry_point():
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="oslo.config.opts")}
    assert eps.get("sdn") == "sdn.config:list_opts"
    assert "oslo.log" in eps
