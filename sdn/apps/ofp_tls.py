"""OpenFlow listening options for os-ken: plain TCP, or TLS from sdn's [ovs] ssl_* options.

os-ken 4.x (``os_ken/controller/controller.py``, ``server_loop``) listens with TLS instead of
TCP when both ``ctl_privkey`` and ``ctl_cert`` are set, on ``ofp_ssl_listen_port``, and asks
every switch for a certificate signed by ``ca_certs`` when that is set (``CERT_REQUIRED``).
Its ``ciphers`` option is passed to ``SSLContext.wrap_socket``, which has no such argument,
so it is not offered here. The files are checked at start so a wrong path or a key that does
not match its certificate is one clear error, not a refusal at every switch's handshake.

os-ken reads a datapath's socket on one thread and writes it on another; an OpenSSL connection
must not be used by two threads at once (seen: the connection dropped with "EOF occurred in
violation of protocol" after a few hundred echo replies). ``single_owner_tls`` therefore gives
os-ken a plain socket and moves bytes between it and the TLS socket on one thread of its own.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import threading
from collections.abc import Callable

from sdn import exception

LOG = logging.getLogger("sdn.ofp_tls")

#: bytes read or written per call, and the most buffered per direction before reading pauses
_CHUNK = 1 << 16
_BUFFER_LIMIT = 1 << 22


def tls_enabled(ovs_conf) -> bool:
    """Whether the controller listens with TLS (``ssl_key_file`` and ``ssl_cert_file`` set)."""
    return bool(ovs_conf.ssl_key_file and ovs_conf.ssl_cert_file)


def check_tls_files(ovs_conf) -> None:
    """Raise ConfigError unless the [ovs] ssl_* options are unset or name a usable key,
    certificate and CA: both of key and certificate or neither, readable PEM files, the key
    matching the certificate."""
    key, cert, ca = ovs_conf.ssl_key_file, ovs_conf.ssl_cert_file, ovs_conf.ssl_ca_cert_file
    if bool(key) != bool(cert):
        missing = "ssl_cert_file" if key else "ssl_key_file"
        raise exception.ConfigError(
            f"[ovs] {missing} is not set: OpenFlow over TLS needs both ssl_key_file and "
            "ssl_cert_file (or neither, for plain TCP)")
    if ca and not key:
        raise exception.ConfigError(
            "[ovs] ssl_ca_cert_file is set without ssl_key_file and ssl_cert_file: set all "
            "three for OpenFlow over TLS, or none for plain TCP")
    if not key:
        return
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for name, path in (("ssl_key_file", key), ("ssl_cert_file", cert), ("ssl_ca_cert_file", ca)):
        if not path:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as err:
            raise exception.ConfigError(
                f"[ovs] {name} {path}: cannot read it ({err.strerror}); give a readable PEM "
                "file") from None
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as err:
        raise exception.ConfigError(
            f"[ovs] ssl_cert_file {cert} and ssl_key_file {key} are not a PEM certificate "
            f"and its private key ({err.reason or err}); give the pair ovs-pki or openssl "
            "made together") from None
    if ca:
        try:
            ctx.load_verify_locations(ca)
        except ssl.SSLError as err:
            raise exception.ConfigError(
                f"[ovs] ssl_ca_cert_file {ca} holds no PEM CA certificate ({err.reason or err}); "
                "give the CA that signed the switches' certificates (ovs-pki: switchca/cacert.pem)"
            ) from None


def osken_listen_args(ovs_conf) -> list[str]:
    """os-ken's command-line options for where and how to listen: TCP on
    ofp_listen_host:ofp_tcp_listen_port, or TLS on the same address and port (a switch's
    controller target is then ``ssl:HOST:PORT``). Raises ConfigError (see check_tls_files)."""
    check_tls_files(ovs_conf)
    args = ["--ofp-listen-host", ovs_conf.ofp_listen_host]
    port = str(ovs_conf.ofp_tcp_listen_port)
    if not tls_enabled(ovs_conf):
        return args + ["--ofp-tcp-listen-port", port]
    args += ["--ofp-ssl-listen-port", port,
             "--ctl-privkey", ovs_conf.ssl_key_file, "--ctl-cert", ovs_conf.ssl_cert_file]
    if ovs_conf.ssl_ca_cert_file:
        args += ["--ca-certs", ovs_conf.ssl_ca_cert_file]
    return args


class _PlainEnd(socket.socket):
    """os-ken's side of the socket pair: it sets TCP_NODELAY on a datapath's socket, which a
    Unix socket refuses; the TLS socket's TCP connection has it instead."""

    def setsockopt(self, level, option, value, *args):
        if level == socket.IPPROTO_TCP:
            return None
        return super().setsockopt(level, option, value, *args)


def single_owner_tls(handle: Callable[[socket.socket, tuple], None]) -> Callable[[ssl.SSLSocket, tuple], None]:
    """Wrap os-ken's connection factory ``handle(sock, address)`` so that it gets a plain socket
    while one pump thread owns the TLS socket (see the module docstring)."""

    def factory(tls_sock: ssl.SSLSocket, address: tuple) -> None:
        tls_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        left, right = socket.socketpair()
        inner = _PlainEnd(fileno=left.detach())
        pump = threading.Thread(target=_pump, args=(tls_sock, right, address), daemon=True,
                                name=f"ofp-tls-{address[0]}:{address[1]}")
        pump.start()
        try:
            handle(inner, address)
        finally:
            inner.close()

    return factory


def _pump(tls: ssl.SSLSocket, plain: socket.socket, address: tuple) -> None:
    """Copy bytes both ways until either side closes, then close both. Decrypted bytes that
    OpenSSL already holds (``pending()``) are read without waiting for the socket."""
    tls.setblocking(False)
    plain.setblocking(False)
    to_tls, to_plain = bytearray(), bytearray()
    tls_open = plain_open = True
    try:
        while (tls_open or to_plain) and (plain_open or to_tls):
            readers = []
            if tls_open and len(to_plain) < _BUFFER_LIMIT:
                readers.append(tls)
            if plain_open and len(to_tls) < _BUFFER_LIMIT:
                readers.append(plain)
            writers = ([tls] if to_tls else []) + ([plain] if to_plain else [])
            ready = tls in readers and tls.pending() > 0
            readable, writable, _ = select.select(readers, writers, [], 0 if ready else 5.0)
            if tls in readers and (ready or tls in readable):
                try:
                    data = tls.recv(_CHUNK)
                    if data:
                        to_plain += data
                    else:
                        tls_open = False
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
            if plain in readable:
                data = plain.recv(_CHUNK)
                if data:
                    to_tls += data
                else:
                    plain_open = False
            if tls in writable and to_tls:
                try:
                    # a retried write passes at least the bytes of the one that wanted a retry
                    del to_tls[:tls.send(bytes(to_tls[:_CHUNK]))]
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
            if plain in writable and to_plain:
                del to_plain[:plain.send(to_plain[:_CHUNK])]
    except (OSError, ValueError) as err:      # ssl.SSLError is an OSError: reset, bad record
        LOG.info("OpenFlow TLS connection from %s:%s closed: %s", address[0], address[1], err)
    finally:
        for sock in (plain, tls):
            try:
                sock.close()
            except OSError:
                pass


def install() -> None:
    """Route every TLS connection os-ken accepts through ``single_owner_tls``. Call after
    ``fastdp.install`` (it wraps whatever connection factory is in place) and before os-ken
    starts listening."""
    from os_ken.base import app_manager  # noqa: F401  (os-ken's import order: app_manager first)
    from os_ken.controller import controller as osken_controller

    osken_controller.datapath_connection_factory = single_owner_tls(
        osken_controller.datapath_connection_factory)
