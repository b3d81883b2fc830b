"""OpenFlow over TLS options ([ovs] ssl_*) -> os-ken's listening options, and the start-up
checks that turn a wrong key/certificate/CA into one clear error.
(A real switch connecting over TLS: tests/integration/test_deploy.py.)"""

from __future__ import annotations

import os
import queue
import socket
import ssl
import threading
from pathlib import Path

import pytest

from sdn import cli, config, exception
from sdn.apps import ofp_tls
from tests.pki import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """The controller's key and certificate, their CA, and a key of no certificate (as str)."""
    files = make_pki(tmp_path_factory.mktemp("pki"))
    return {"ca-cert": str(files["ca-cert"]), "key": str(files["controller-key"]),
            "cert": str(files["controller-cert"]), "other-key": str(files["other-key"])}


def _ovs(tmp_path: Path, **ssl) -> object:
    conf = config.make_conf()
    lines = ["[ovs]", "ofp_listen_host = 192.0.2.10", "ofp_tcp_listen_port = 6653"]
    lines += [f"{k} = {v}" for k, v in ssl.items()]
    f = tmp_path / "sdn.conf"
    f.write_text("\n".join(lines) + "\n")
    return config.load([], config_files=[str(f)], conf=conf).ovs


def test_plain_tcp_when_no_ssl_option_is_set(tmp_path):
    ovs = _ovs(tmp_path)
    assert not ofp_tls.tls_enabled(ovs)
    assert ofp_tls.osken_listen_args(ovs) == ["--ofp-listen-host", "192.0.2.10",
                                              "--ofp-tcp-listen-port", "6653"]


def test_tls_on_the_same_port_with_client_certificates_required(tmp_path, pki):
    ovs = _ovs(tmp_path, ssl_key_file=pki["key"], ssl_cert_file=pki["cert"],
               ssl_ca_cert_file=pki["ca-cert"])
    assert ofp_tls.tls_enabled(ovs)
    assert ofp_tls.osken_listen_args(ovs) == [
        "--ofp-listen-host", "192.0.2.10", "--ofp-ssl-listen-port", "6653",
        "--ctl-privkey", pki["key"], "--ctl-cert", pki["cert"], "--ca-certs", pki["ca-cert"]]


def test_tls_without_ca_does_not_ask_for_client_certificates(tmp_path, pki):
    args = ofp_tls.osken_listen_args(_ovs(tmp_path, ssl_key_file=pki["key"], ssl_cert_file=pki["cert"]))
    assert "--ctl-cert" in args and "--ca-certs" not in args


def test_the_args_are_os_kens_own_options(tmp_path, pki):
    """os-ken registers each of them (a renamed option upstream fails here, not at a deployment)."""
    from os_ken import cfg as osken_cfg
    from os_ken.base import app_manager  # noqa: F401  (os-ken import order: app_manager first)
    from os_ken.controller import controller  # noqa: F401  (registers the ofp/ctl options)

    args = ofp_tls.osken_listen_args(_ovs(tmp_path, ssl_key_file=pki["key"], ssl_cert_file=pki["cert"],
                                          ssl_ca_cert_file=pki["ca-cert"]))
    for flag in args[::2]:
        assert flag[2:].replace("-", "_") in osken_cfg.CONF, flag


@pytest.mark.parametrize("given, message", [
    ({"ssl_key_file": "key"}, "[ovs] ssl_cert_file is not set"),
    ({"ssl_cert_file": "cert"}, "[ovs] ssl_key_file is not set"),
    ({"ssl_ca_cert_file": "ca-cert"}, "ssl_ca_cert_file is set without ssl_key_file"),
])
def test_incomplete_tls_options_are_refused(tmp_path, pki, given, message):
    ovs = _ovs(tmp_path, **{k: pki[v] for k, v in given.items()})
    with pytest.raises(exception.ConfigError) as err:
        ofp_tls.osken_listen_args(ovs)
    assert message in str(err.value)


def test_unreadable_file_is_named(tmp_path, pki):
    ovs = _ovs(tmp_path, ssl_key_file=pki["key"], ssl_cert_file=str(tmp_path / "missing.pem"))
    with pytest.raises(exception.ConfigError, match=r"\[ovs\] ssl_cert_file .*missing.pem: cannot read it"):
        ofp_tls.check_tls_files(ovs)


def test_key_of_another_certificate_is_refused(tmp_path, pki):
    ovs = _ovs(tmp_path, ssl_key_file=pki["other-key"], ssl_cert_file=pki["cert"])
    with pytest.raises(exception.ConfigError, match="are not a PEM certificate and its private key"):
        ofp_tls.check_tls_files(ovs)


def test_ca_file_without_a_certificate_is_refused(tmp_path, pki):
    ovs = _ovs(tmp_path, ssl_key_file=pki["key"], ssl_cert_file=pki["cert"],
               ssl_ca_cert_file=pki["other-key"])
    with pytest.raises(exception.ConfigError, match="holds no PEM CA certificate"):
        ofp_tls.check_tls_files(ovs)


def test_controller_command_refuses_half_tls_in_one_line(tmp_path, pki, capsys):
    f = tmp_path / "sdn.conf"
    f.write_text(f"[database]\nconnection = sqlite:///{tmp_path}/sdn.sqlite\n"
                 f"[ovs]\nssl_key_file = {pki['key']}\n")
    rc = cli.main(["--config-file", str(f), "controller"])
    err = capsys.readouterr().err
    assert rc != 0
    assert err.strip().splitlines() == [err.strip()] and "ssl_cert_file is not set" in err


def _tls_server(pki, handler):
    """A TLS listener on 127.0.0.1 whose one accepted connection goes through
    ``single_owner_tls(handler)`` on a thread; returns (port, thread)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["cert"], pki["key"])
    listener = socket.create_server(("127.0.0.1", 0))
    factory = ofp_tls.single_owner_tls(handler)

    def accept():
        with listener:
            raw, address = listener.accept()
            factory(ctx.wrap_socket(raw, server_side=True), address)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


def _tls_client(pki, port):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(pki["ca-cert"])
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))


def test_single_owner_pump_carries_both_ways_to_a_two_thread_reader_writer(pki):
    """The handler gets a plain socket and uses it as os-ken does (TCP_NODELAY, one thread
    reading, another writing); 4 MiB echoed through TLS arrive intact, and the client's close
    reaches the handler as end of file."""

    seen = {}

    def echo_handler(sock, address):
        seen["plain"] = not isinstance(sock, ssl.SSLSocket)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        chunks = queue.Queue()

        def writer():
            while (data := chunks.get()) is not None:
                sock.sendall(data)
        thread = threading.Thread(target=writer)
        thread.start()
        while data := sock.recv(65536):
            chunks.put(data)
        chunks.put(None)
        thread.join()
        seen["eof"] = True

    port, server = _tls_server(pki, echo_handler)
    blob = os.urandom(4 << 20)
    echoed = bytearray()
    with _tls_client(pki, port) as client:
        for off in range(0, len(blob), 1 << 16):
            client.sendall(blob[off:off + (1 << 16)])
            while len(echoed) < off + min(1 << 16, len(blob) - off):
                echoed += client.recv(1 << 16)
    server.join(timeout=10)
    assert bytes(echoed) == blob
    assert seen == {"plain": True, "eof": True}


def test_single_owner_pump_closes_tls_when_the_handler_returns(pki):
    port, server = _tls_server(pki, lambda sock, address: sock.sendall(b"bye"))
    with _tls_client(pki, port) as client:
        received = b""
        try:
            while chunk := client.recv(100):
                received += chunk
        except (ConnectionError, OSError):
            pass
    server.join(timeout=10)
    assert received == b"bye"
