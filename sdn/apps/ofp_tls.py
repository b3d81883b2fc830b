"""OpenFlow listening options for os-ken: plain TCP, or TLS from sdn's [ovs] ssl_* options.

os-ken 4.x (``os_ken/controller/controller.py``, ``server_loop``) listens with TLS instead of
TCP when both ``ctl_privkey`` and ``ctl_cert`` are set, on ``ofp_ssl_listen_port``, and asks
every switch for a certificate signed by ``ca_certs`` when that is set (``CERT_REQUIRED``).
Its ``ciphers`` option is passed to ``SSLContext.wrap_socket``, which has no such argument,
so it is not offered here. The files are checked at start so a wrong path or a key that does
not match its certificate is one clear error, not a refusal at every switch's handshake.
"""

from __future__ import annotations

import ssl

from sdn import exception


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
