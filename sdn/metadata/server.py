"""``sdn metadata``: the HTTP edge of the metadata service (stdlib ``ThreadingHTTPServer``).

Listens on ``metadata_host:metadata_port`` (where both backends DNAT 169.254.169.254:80, keeping
the guest's fixed IP as the source). Each GET/HEAD is one read transaction
(``store.load_instance``) and one pure answer (``document.respond``); other methods get 501
from the stdlib. One log line per request (source, method, path, status, bytes); malformed
requests are answered 4xx by the stdlib parser and logged the same way; an error while
answering is a 500 and one log line, never a traceback. SIGTERM/SIGINT stop it cleanly.
"""

from __future__ import annotations

import errno
import logging
import signal
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sdn import exception
from sdn.metadata import document, store

LOG = logging.getLogger("sdn.metadata")
#: seconds a client may take to send its request (a stuck client holds one thread at most that long)
REQUEST_TIMEOUT = 10


class MetadataApp:
    """source address + path -> ``document.Response``, one read transaction each."""

    def __init__(self, engine, settings: document.Settings):
        self.engine = engine
        self.settings = settings

    def respond(self, address: str, path: str) -> document.Response:
        record = store.load_instance(self.engine, address)
        return document.respond(record, address, path, self.settings)


class _Handler(BaseHTTPRequestHandler):
    server_version = "sdn-metadata"
    sys_version = ""
    protocol_version = "HTTP/1.0"      # one request per connection
    timeout = REQUEST_TIMEOUT
    # the stdlib's own errors (400, 414, 431, 501, 505) in plain text, like ours; an HTTP/0.9
    # style request line gets the body alone (no status line), as the stdlib does
    error_message_format = "%(code)d %(message)s\n"
    error_content_type = "text/plain; charset=utf-8"

    def setup(self):
        super().setup()
        self._error: str | None = None
        self._logged = False

    def do_GET(self):  # noqa: N802 - stdlib naming
        self._answer(send_body=True)

    def do_HEAD(self):  # noqa: N802
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        try:
            response = self.server.app.respond(self.client_address[0], self.path)
        except Exception as err:  # noqa: BLE001 - database unreachable, locked, ...: a 500
            self._error = f"{err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            response = document.Response(500, document.TEXT, b"500 Internal Server Error\n")
        self._size = len(response.body)
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if send_body:
            self.wfile.write(response.body)

    # -- logging: one line per request -------------------------------------------------------
    def log_request(self, code="-", size="-"):
        self._logged = True
        code = int(code) if not isinstance(code, str) else code
        size = getattr(self, "_size", size) if size == "-" else size
        path = getattr(self, "path", None)
        LOG.info("%s %s %r %s %s%s", self.client_address[0], getattr(self, "command", None) or "-",
                 path if path is not None else self._raw_line(), code, size,
                 f" ({self._error})" if self._error else "")

    def _raw_line(self) -> str:
        raw = getattr(self, "raw_requestline", b"") or b""
        return raw[:200].decode("latin-1").rstrip("\r\n")

    def log_error(self, format, *args):  # noqa: A002 - stdlib signature
        self._error = (format % args)[:200]

    def log_message(self, format, *args):  # noqa: A002
        pass

    def finish(self):
        try:
            super().finish()
        finally:
            if self._error and not self._logged:   # e.g. a client that sent nothing in time
                LOG.info("%s - %r - - (%s)", self.client_address[0], self._raw_line(), self._error)


class MetadataServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: MetadataApp):
        self.app = app
        super().__init__(address, _Handler)

    def server_bind(self):
        # HTTPServer.server_bind resolves the host's FQDN (a DNS lookup that can hang in a
        # namespace without a resolver); the name is never used here
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        import sys
        err = sys.exc_info()[1]
        LOG.warning("%s connection error: %s: %s", client_address[0], err.__class__.__name__, err)


def listen(host: str, port: int, app: MetadataApp) -> MetadataServer:
    """A bound, listening server; SdnError with one line when the address cannot be used."""
    try:
        return MetadataServer((host, port), app)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise exception.SdnError(f"cannot listen on {host}:{port}: the port is already in use "
                                     "(another sdn metadata?); stop it or set another metadata_port") \
                from None
        if err.errno == errno.EADDRNOTAVAIL:
            raise exception.SdnError(f"cannot listen on {host}:{port}: {host} is not an address of "
                                     "this host; set metadata_host to one of its addresses") from None
        raise exception.SdnError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def settings_from(conf) -> document.Settings:
    return document.Settings(link_type="bridge" if conf.network_driver == "linux" else "ovs",
                             mtu=conf.network_device_mtu, domain=conf.dhcp_domain,
                             addresses=conf.network_manager != "flat" or conf.flat_injected)


def main(conf) -> int:
    """Run the service in the foreground until SIGTERM/SIGINT; returns the exit code."""
    from sdn.db import api

    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = api.get_engine(conf.database.connection)
    api.current_revision(engine)    # a missing or schema-less database fails now, in one line
    server = listen(conf.metadata_host, conf.metadata_port, MetadataApp(engine, settings_from(conf)))
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    worker = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="metadata-http", daemon=True)
    worker.start()
    LOG.info("metadata service listening on %s:%s", conf.metadata_host, conf.metadata_port)
    try:
        while not stop.wait(0.5):
            if not worker.is_alive():
                LOG.error("metadata HTTP thread stopped")
                return 1
    finally:
        server.shutdown()
        server.server_close()
        engine.dispose()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    LOG.info("metadata service stopped")
    return 0
