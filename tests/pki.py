"""Test certificates for OpenFlow over TLS, made with openssl (what ``ovs-pki`` does, with one CA
instead of two): RSA 2048 PEM files, valid two days."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(directory: Path) -> dict[str, Path]:
    """A CA (``ca-cert``), the controller's and a switch's key and certificate signed by it, and
    a key that belongs to no certificate (``other-key``)."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=sdn-test-ca",
             "-keyout", "ca-key.pem", "-out", "ca-cert.pem", cwd=directory)
    for who in ("controller", "switch"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=sdn-test-{who}",
                 "-keyout", f"{who}-key.pem", "-out", f"{who}-req.pem", cwd=directory)
        _openssl("x509", "-req", "-in", f"{who}-req.pem", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem",
                 "-CAcreateserial", "-days", "2", "-out", f"{who}-cert.pem", cwd=directory)
    _openssl("genrsa", "-out", "other-key.pem", "2048", cwd=directory)
    return {name: directory / f"{name}.pem" for name in
            ("ca-cert", "controller-key", "controller-cert", "switch-key", "switch-cert", "other-key")}


def make_ovs_pki(directory: Path) -> dict[str, Path]:
    """Open vSwitch's own PKI, as docs/DEPLOYMENT.md sets it up: ``ovs-pki init`` (a controller
    CA and a switch CA under ``directory/pki``), ``req+sign ctl controller`` and ``req+sign sc
    switch``."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = directory / "pki"
    for args in (["init"], ["req+sign", "ctl", "controller"], ["req+sign", "sc", "switch"]):
        subprocess.run(["ovs-pki", f"--dir={pki}", *args], cwd=directory, check=True,
                       capture_output=True, timeout=120)
    return {"ctl-privkey": directory / "ctl-privkey.pem", "ctl-cert": directory / "ctl-cert.pem",
            "sc-privkey": directory / "sc-privkey.pem", "sc-cert": directory / "sc-cert.pem",
            "controllerca": pki / "controllerca" / "cacert.pem",
            "switchca": pki / "switchca" / "cacert.pem"}
