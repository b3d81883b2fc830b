"""``sdn api``: serve the REST API with uvicorn on [api] listen:port, over TLS when [api]
cert_file and key_file are set. Everything that can be wrong with the configuration (token file,
certificate, key) is checked before the port is opened, and reported as one line."""

from __future__ import annotations

import ipaddress
import logging
import ssl

from sdn import exception
from sdn.api.auth import TokenFile

LOG = logging.getLogger(__name__)


def check_tls(cert_file: str | None, key_file: str | None) -> bool:
    """True when TLS is configured. Raises ConfigError for one of the pair without the other,
    or a certificate/key that does not load (unreadable, not PEM, key not matching)."""
    if not cert_file and not key_file:
        return False
    if not (cert_file and key_file):
        raise exception.ConfigError(f"[api] cert_file and key_file go together; only "
                                    f"{'cert_file' if cert_file else 'key_file'} is set")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as err:
        raise exception.ConfigError(f"[api] cert_file {cert_file} / key_file {key_file} do not load "
                                    f"({getattr(err, 'strerror', None) or err}); give a PEM "
                                    "certificate and its private key") from None
    return True


def main(conf) -> int:
    """Run the API in the foreground until SIGINT/SIGTERM; returns the exit code."""
    import uvicorn

    from sdn.api.app import create_app

    api = conf.api
    tokens = TokenFile(api.token_file)
    tokens.load()
    tls = check_tls(api.cert_file, api.key_file)
    if not tls and not _loopback(api.listen):
        LOG.warning("[api] listen = %s without TLS: bearer tokens cross the network in clear; "
                    "set cert_file and key_file", api.listen)
    app = create_app(conf, tokens)
    server = uvicorn.Server(uvicorn.Config(
        app, host=api.listen, port=api.port, log_config=None,  # logging: oslo.log (sdn.log)
        ssl_certfile=api.cert_file if tls else None, ssl_keyfile=api.key_file if tls else None))
    server.run()
    # uvicorn reports a port it could not bind in its log and returns without serving
    return 0 if server.started else 1


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
