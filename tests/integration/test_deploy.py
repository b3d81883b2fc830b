"""Deployment: OpenFlow over TLS between a real OVS switch and the controller, and
``pip install`` of the repository into a fresh venv used from another directory.

TLS: certificates are made with openssl in tmp (one CA signs the controller's and the switch's
certificate, as ``ovs-pki`` would with two). ``ovs-vsctl set-ssl`` is global to the shared
ovs-vswitchd: the test records the SSL row it found and puts it back (or removes its own).
"""

from __future__ import annotations

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

from tests.integration.netlab import sh, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
OFPT_HELLO = 0


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(directory: Path) -> dict[str, Path]:
    """A CA and two certificates it signed (controller, switch): RSA 2048 PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=sdn-test-ca",
             "-keyout", "ca-key.pem", "-out", "ca-cert.pem", cwd=directory)
    for who in ("controller", "switch"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=sdn-test-{who}",
                 "-keyout", f"{who}-key.pem", "-out", f"{who}-req.pem", cwd=directory)
        _openssl("x509", "-req", "-in", f"{who}-req.pem", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem",
                 "-CAcreateserial", "-days", "2", "-out", f"{who}-cert.pem", cwd=directory)
    return {name: directory / f"{name}.pem" for name in
            ("ca-cert", "controller-key", "controller-cert", "switch-key", "switch-cert")}


@pytest.fixture
def switch_ssl(tmp_path):
    """ovs-vswitchd's SSL row set to the test's switch key/cert/CA; the previous row restored."""
    pki = make_pki(tmp_path / "pki")
    before = sh(["ovs-vsctl", "--timeout=5", "get-ssl"]).stdout.strip()
    previous = {}
    for line in before.splitlines():
        key, _, value = line.partition(":")
        previous[key.strip()] = value.strip()
    sh(["ovs-vsctl", "--timeout=10", "set-ssl", str(pki["switch-key"]), str(pki["switch-cert"]),
        str(pki["ca-cert"])])
    yield pki
    if previous.get("Private key"):
        sh(["ovs-vsctl", "--timeout=10", "set-ssl", previous["Private key"], previous["Certificate"],
            previous["CA Certificate"]], check=False)
    else:
        sh(["ovs-vsctl", "--timeout=10", "del-ssl"], check=False)


def _tls_hello(port: int, cert: Path | None, key: Path | None, ca: Path) -> bytes:
    """Connect over TLS to 127.0.0.1:port (with a client certificate when given) and return the
    first OpenFlow header the controller sends (its HELLO)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw) as tls:
            # TLS 1.3: the server's verdict on our certificate arrives with its first record
            tls.sendall(struct.pack("!BBHI", 4, OFPT_HELLO, 8, 1))
            return tls.recv(8)


def test_switch_connects_over_tls_and_plain_or_unauthenticated_peers_are_refused(
        make_sdn_env, switch_ssl):
    pki = switch_ssl
    env = make_sdn_env(config={"ovs": {"ssl_key_file": str(pki["controller-key"]),
                                       "ssl_cert_file": str(pki["controller-cert"]),
                                       "ssl_ca_cert_file": str(pki["ca-cert"])}})
    env.start_controller(wait_connected=False)
    wait_for(lambda: env._alive() and env.listening(), 30, what="the controller to listen")
    wait_for(lambda: "(TLS)" in env.controller_log(), 5, what="the controller to log TLS")

    # a client with a certificate from the CA gets the controller's OpenFlow HELLO ...
    header = _tls_hello(env.port, pki["switch-cert"], pki["switch-key"], pki["ca-cert"])
    assert header[:2] == bytes([4, OFPT_HELLO])
    # ... one without a certificate is refused in the handshake
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        assert not _tls_hello(env.port, None, None, pki["ca-cert"])
    # ... and a plain TCP OpenFlow client never gets a HELLO
    with socket.create_connection(("127.0.0.1", env.port), timeout=5) as plain:
        plain.sendall(struct.pack("!BBHI", 4, OFPT_HELLO, 8, 1))
        try:
            reply = plain.recv(8)
        except (ConnectionError, socket.timeout):
            reply = b""
        assert reply[:2] != bytes([4, OFPT_HELLO])

    # the real switch: controller target ssl:, its SSL row from set-ssl; the controller syncs it
    sh(["ovs-vsctl", "--timeout=30", "--", "--id=@c", "create", "Controller",
        f'target="ssl:127.0.0.1:{env.port}"', "max_backoff=1000", "--", "set", "Bridge",
        env.bridge.name, "controller=@c"])
    wait_for(lambda: env._alive() and env.pipeline_cookie() is not None, 30,
             what=f"the controller to sync {env.bridge.name} over TLS")
    wait_for(env.bridge.controller_connected, 15, what="OVSDB to report the TLS controller connected")
    log = env.controller_log()
    assert "Traceback" not in log, log[-3000:]

