"""Deployment: OpenFlow over TLS between a real OVS switch and the controller, and
``pip install`` of the repository into a fresh venv used from another directory.

TLS: certificates are made with ``ovs-pki`` in tmp as docs/DEPLOYMENT.md does (tests/pki.py). ``ovs-vsctl set-ssl`` is global to the shared
ovs-vswitchd: the test records the SSL row it found and puts it back (or removes its own).
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.integration.netlab import free_tcp_port, sh, wait_for
from tests.pki import make_ovs_pki

REPO_ROOT = Path(__file__).resolve().parents[2]
OFPT_HELLO = 0


@pytest.fixture
def switch_ssl(tmp_path):
    """ovs-vswitchd's SSL row set to the test's switch key/cert/CA; the previous row restored."""
    pki = make_ovs_pki(tmp_path / "ovs-pki")
    before = sh(["ovs-vsctl", "--timeout=30", "get-ssl"]).stdout.strip()
    previous = {}
    for line in before.splitlines():
        key, _, value = line.partition(":")
        previous[key.strip()] = value.strip()
    try:
        # the set may have been done even when ovs-vsctl times out: restore in every case
        sh(["ovs-vsctl", "--timeout=30", "set-ssl", str(pki["sc-privkey"]), str(pki["sc-cert"]),
            str(pki["controllerca"])])
        yield pki
    finally:
        if previous.get("Private key"):
            sh(["ovs-vsctl", "--timeout=30", "set-ssl", previous["Private key"], previous["Certificate"],
                previous["CA Certificate"]], check=False)
        else:
            sh(["ovs-vsctl", "--timeout=30", "del-ssl"], check=False)


def _tls_echoes(host: str, port: int, cert: Path, key: Path, ca: Path, batches: int = 200,
                per_batch: int = 500) -> int:
    """Echo requests (OpenFlow 1.3 §7.5.2) pipelined ``per_batch`` at a time over TLS: the
    controller reads and answers at once, on two threads. Returns the echo replies received
    with their payload intact (the connection closing early ends the count)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(ca)
    ctx.load_cert_chain(cert, key)
    payload = os.urandom(200)
    good, buf = 0, b""
    with ctx.wrap_socket(socket.create_connection((host, port), timeout=10)) as tls:
        tls.sendall(struct.pack("!BBHI", 4, OFPT_HELLO, 8, 1))
        while len(buf) < 16:                # the controller's HELLO and FEATURES_REQUEST
            buf += tls.recv(16 - len(buf))
        buf = b""
        for batch in range(batches):
            tls.sendall(b"".join(struct.pack("!BBHI", 4, 2, 8 + len(payload), batch * per_batch + i)
                                 + payload for i in range(per_batch)))
            replies = 0
            while replies < per_batch:
                while len(buf) >= 8 and len(buf) >= struct.unpack_from("!H", buf, 2)[0]:
                    length = struct.unpack_from("!H", buf, 2)[0]
                    if buf[1] == 3:         # ECHO_REPLY
                        replies += 1
                        good += buf[8:length] == payload
                    buf = buf[length:]
                if replies < per_batch:
                    data = tls.recv(65536)
                    if not data:
                        return good
                    buf += data
    return good


def _tls_hello(host: str, port: int, cert: Path | None, key: Path | None, ca: Path) -> bytes:
    """Connect over TLS to host:port (with a client certificate when given) and return the
    first OpenFlow header the controller sends (its HELLO)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    with socket.create_connection((host, port), timeout=5) as raw:
        with ctx.wrap_socket(raw) as tls:
            # TLS 1.3: the server's verdict on our certificate arrives with its first record
            tls.sendall(struct.pack("!BBHI", 4, OFPT_HELLO, 8, 1))
            return tls.recv(8)


def test_switch_connects_over_tls_and_plain_or_unauthenticated_peers_are_refused(
        make_sdn_env, netns_host, switch_ssl, tmp_path):
    """The controller on its own "host" (a network namespace reached over a veth, listening on
    its address only), OpenFlow over TLS with client certificates; the switch syncs and a real
    dhclient gets its lease through the TLS channel (packet-in, packet-out)."""
    pki = switch_ssl
    ctl_host = netns_host()
    net = f"198.19.{int.from_bytes(os.urandom(1), 'big')}"
    sh(["ip", "addr", "add", f"{net}.1/30", "dev", ctl_host.port_name])
    ctl_host.set_ip(f"{net}.2/30")
    env = make_sdn_env(config={"ovs": {"ofp_listen_host": f"{net}.2",
                                       "ssl_key_file": str(pki["ctl-privkey"]),
                                       "ssl_cert_file": str(pki["ctl-cert"]),
                                       "ssl_ca_cert_file": str(pki["switchca"])}})
    env.cli("network", "create", "--label", "tls", "--fixed_range_v4", "10.36.0.0/24", "--vlan", "210",
            "--project_id", "p")
    in_ctl_host = tmp_path / "sdn-on-controller-host"
    in_ctl_host.write_text(f'#!/bin/sh\nexec ip netns exec {ctl_host.name} {env.sdn_exe} "$@"\n')
    in_ctl_host.chmod(0o755)
    env.sdn_exe, sdn_exe = str(in_ctl_host), env.sdn_exe
    env.start_controller(wait_connected=False)
    env.sdn_exe = sdn_exe
    wait_for(lambda: env._alive() and ctl_host.run(["ss", "-tlnH", f"( sport = :{env.port} )"]).stdout.strip(),
             30, what="the controller to listen on the controller host")
    wait_for(lambda: f"{net}.2:{env.port} (TLS)" in env.controller_log(), 5, what="the controller to log TLS")

    # a client with a certificate from the CA gets the controller's OpenFlow HELLO ...
    header = _tls_hello(f"{net}.2", env.port, pki["sc-cert"], pki["sc-privkey"], pki["controllerca"])
    assert header[:2] == bytes([4, OFPT_HELLO])
    # ... one without a certificate is refused in the handshake
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        assert not _tls_hello(f"{net}.2", env.port, None, None, pki["controllerca"])
    # ... and so is one whose certificate the switch CA did not sign (the controller's own)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        assert not _tls_hello(f"{net}.2", env.port, pki["ctl-cert"], pki["ctl-privkey"], pki["controllerca"])
    # ... and a plain TCP OpenFlow client never gets a HELLO
    with socket.create_connection((f"{net}.2", env.port), timeout=5) as plain:
        plain.sendall(struct.pack("!BBHI", 4, OFPT_HELLO, 8, 1))
        try:
            reply = plain.recv(8)
        except (ConnectionError, socket.timeout):
            reply = b""
        assert reply[:2] != bytes([4, OFPT_HELLO])

    # the real switch: controller target ssl:, its SSL row from set-ssl; the controller syncs it
    sh(["ovs-vsctl", "--timeout=30", "--", "--id=@c", "create", "Controller",
        f'target="ssl:{net}.2:{env.port}"', "max_backoff=1000", "--", "set", "Bridge",
        env.bridge.name, "controller=@c"])
    wait_for(lambda: env._alive() and env.pipeline_cookie() is not None, 30,
             what=f"the controller to sync {env.bridge.name} over TLS")
    wait_for(env.bridge.controller_connected, 15, what="OVSDB to report the TLS controller connected")
    alloc = env.cli_json("instance", "launch", "t1", "--project", "p")
    guest = netns_host(port_name=alloc["port_name"], mac=alloc["mac"])
    env.cli("instance", "plug", "t1", "--bridge", env.bridge.name)
    assert guest.dhclient(wait=False).wait_bound()["new_ip_address"] == alloc["address"]
    # os-ken reads on one thread and writes on another: 100,000 pipelined echoes must all come
    # back over one TLS connection (without ofp_tls's single-owner pump the connection dropped
    # after 3,000-30,000 in each of 4 tries; with it: 4 of 4 complete, ~3 s each)
    assert _tls_echoes(f"{net}.2", env.port, pki["sc-cert"], pki["sc-privkey"], pki["controllerca"]) == 100000
    assert env.pipeline_cookie() is not None and env.bridge.controller_connected()
    log = env.controller_log()
    assert "Traceback" not in log, log[-3000:]


def _installed_files_missing(site: Path) -> list[str]:
    """Files of the sdn package in the repository (git ls-files) that the installed copy lacks:
    package data (alembic.ini, migrations, anything not .py) must ship too."""
    listed = subprocess.run(["git", "ls-files", "sdn"], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    return [f for f in listed if not (site / f).exists()]


def _source_copy(dest: Path) -> Path:
    """The repository's files (tracked, and new ones not ignored) copied to ``dest``: setuptools
    builds in the source tree (build/, *.egg-info), which must not happen in the worktree, and
    a stale build/lib there would ship modules deleted since."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO_ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def test_pip_install_outside_the_repository(tmp_path):
    """``pip install <repo>`` (not editable, dependencies from the configured index) into a fresh
    venv; ``sdn --help`` and ``sdn db sync`` on a new SQLite file, run from another directory."""
    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(target)
    py = target / "bin" / "python"
    source = _source_copy(tmp_path / "src")
    p = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-compile", str(source)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{target / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin"

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=120)

    where = run(str(py), "-c", "import sdn, sysconfig; print(sdn.__file__); "
                "print(sysconfig.get_paths()['purelib'])").stdout.split()
    assert where[0].startswith(str(target)), f"sdn imported from {where[0]}, not the new venv"
    assert _installed_files_missing(Path(where[1])) == []
    # every module imports: a third-party import not declared in pyproject.toml fails here
    imported = run(str(py), "-c", "import importlib, pkgutil, sdn\n"
                   "for m in pkgutil.walk_packages(sdn.__path__, 'sdn.'): importlib.import_module(m.name)")
    assert imported.returncode == 0, imported.stderr[-3000:]

    sdn = str(target / "bin" / "sdn")
    helped = run(sdn, "--help")
    assert helped.returncode == 0 and "controller" in helped.stdout, helped.stderr
    assert "Traceback" not in helped.stderr and "Warning" not in helped.stderr

    conf = elsewhere / "sdn.conf"
    db = elsewhere / "state" / "sdn.sqlite"
    db.parent.mkdir()
    conf.write_text(f"[DEFAULT]\nstate_path = {elsewhere / 'state'}\n"
                    f"[database]\nconnection = sqlite:///{db}\n")
    synced = run(sdn, "--config-file", str(conf), "db", "sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    created = run(sdn, "--config-file", str(conf), "network", "create", "--label", "pkg",
                  "--fixed_range_v4", "10.77.0.0/24", "--vlan", "100")
    assert created.returncode == 0, created.stdout + created.stderr
    listed = run(sdn, "--config-file", str(conf), "network", "list", "--json")
    assert [n["label"] for n in json.loads(listed.stdout)] == ["pkg"]
    # the sample config generator finds sdn's options through the installed entry point
    sample = run(str(target / "bin" / "oslo-config-generator"), "--namespace", "sdn")
    assert sample.returncode == 0 and "[ovs]" in sample.stdout and "ssl_cert_file" in sample.stdout, \
        sample.stderr


# ----------------------------------------------------------- the units' capability sets

CAP_NAMES = {"CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_NET_BIND_SERVICE": 10, "CAP_SETUID": 7,
             "CAP_SETGID": 6, "CAP_KILL": 5, "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1}


def _unit_service(name: str) -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(REPO_ROOT / "etc" / "systemd" / name)
    return dict(parser["Service"])


def _as_unit_runs_it(tmp_path: Path, unit: str, caps: list[str] | None = None) -> tuple[str, int]:
    """A wrapper running sdn as root with the unit's CapabilityBoundingSet (or ``caps``) and
    NoNewPrivileges, as systemd would (setpriv, util-linux); and that set's bit mask."""
    service = _unit_service(unit)
    caps = service.get("CapabilityBoundingSet", "").split() if caps is None else caps
    unknown = [c for c in caps if c not in CAP_NAMES]
    assert not unknown, f"add {unknown} to CAP_NAMES"
    bounding = ",".join(["-all"] + [f"+{c[4:].lower()}" for c in caps])
    nnp = "--no-new-privs " if service.get("NoNewPrivileges") == "yes" else ""
    wrapper = tmp_path / f"sdn-as-{unit}-{len(caps)}"
    wrapper.write_text(f"#!/bin/sh\nexec setpriv --bounding-set={bounding} --inh-caps=-all {nnp}"
                       f"-- {sys.executable} -m sdn.cli \"$@\"\n")
    wrapper.chmod(0o755)
    return str(wrapper), sum(1 << CAP_NAMES[c] for c in caps)


def _cap_bounding(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no CapBnd for pid {pid}")


def test_controller_syncs_a_switch_with_no_capability(make_sdn_env, tmp_path):
    """sdn-controller.service: empty CapabilityBoundingSet, NoNewPrivileges."""
    env = make_sdn_env()
    env.sdn_exe, mask = _as_unit_runs_it(tmp_path, "sdn-controller.service")
    assert mask == 0
    proc = env.start_controller()            # waits for the full sync of the bridge
    assert _cap_bounding(proc.pid) == 0
    assert "NoNewPrivs:\t1" in Path(f"/proc/{proc.pid}/status").read_text()


def test_agent_serves_dhcp_with_its_units_capabilities_only(linux, tmp_path):
    """sdn-agent.service's CapabilityBoundingSet: bridge, iptables/ebtables, dnsmasq (started by
    the agent, so bounded by the same set) leasing to a real dhclient. Control: with no
    capability the agent cannot build the bridge."""
    env = linux.env(config={"DEFAULT": {"network_manager": "flatdhcp"}})
    bridge = linux.flat_bridge(env)
    env.cli("network", "create", "--label", "flat", "--fixed_range_v4", "10.39.0.0/24", "--bridge", bridge)
    alloc, host = linux.launch(env, "u1", "p")

    bare, _ = _as_unit_runs_it(tmp_path, "sdn-agent.service", caps=[])
    refused = env.hv.run(["timeout", "60", bare, "--config-file", str(env.config_file), "agent", "--once"],
                         check=False)
    assert refused.returncode != 0, refused.stdout + refused.stderr
    assert env.hv.run(["ip", "link", "show", bridge], check=False).returncode != 0

    env.sdn_exe, mask = _as_unit_runs_it(tmp_path, "sdn-agent.service")
    linux.start(env)
    assert host.dhclient(wait=False).wait_bound()["new_ip_address"] == alloc["address"]
    assert _cap_bounding(env.hv.agent.pid) == mask
    pid_file = env.workdir / "networks" / f"sdn-{bridge}.pid"
    assert _cap_bounding(int(pid_file.read_text())) == mask      # dnsmasq, in the same bounds


@pytest.mark.parametrize("unit, verb", [("sdn-metadata.service", "metadata"), ("sdn-api.service", "api")])
def test_http_services_answer_with_no_capability(make_sdn_env, tmp_path, unit, verb):
    """sdn-metadata.service and sdn-api.service: empty CapabilityBoundingSet, NoNewPrivileges;
    each answers HTTP on its port (the API a token's request, the metadata service a 404 for a
    source that is no instance)."""
    import urllib.error
    import urllib.request

    port = free_tcp_port()
    token = "deploy-test-token-" + "x" * 16
    tokens = tmp_path / "api-tokens"
    tokens.write_text(f"{token} admin\n")
    tokens.chmod(0o600)
    env = make_sdn_env(config={"DEFAULT": {"metadata_host": "127.0.0.1", "metadata_port": port},
                               "api": {"listen": "127.0.0.1", "port": port, "token_file": str(tokens)}})
    exe, mask = _as_unit_runs_it(tmp_path, unit)
    assert mask == 0
    log = open(tmp_path / f"{verb}.log", "wb")
    proc = subprocess.Popen([exe, "--config-file", str(env.config_file), verb], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def answers():
            if proc.poll() is not None:
                raise RuntimeError(f"sdn {verb} exited {proc.returncode}: "
                                   f"{(tmp_path / f'{verb}.log').read_text()[-3000:]}")
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/" + ("os-networks" if verb == "api" else "openstack/latest/meta_data.json"),
                headers={"Authorization": f"Bearer {token}"})
            try:
                with urllib.request.urlopen(req, timeout=2) as resp:
                    return resp.status
            except urllib.error.HTTPError as err:
                return err.code
            except OSError:
                return None
        status = wait_for(answers, 30, interval=0.1, what=f"sdn {verb} to answer on port {port}")
        assert status == (200 if verb == "api" else 404)
        assert _cap_bounding(proc.pid) == 0
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=10)
        log.close()
