"""Bearer tokens of the REST API: the token file and who a token speaks for.

The token file ([api] token_file) holds one ``TOKEN SCOPE`` per line; ``#`` starts a comment,
blank lines are ignored. SCOPE is ``admin`` (every project's resources and the operator's:
network create/delete, floating IP ranges) or ``project:<id>`` (that project's resources only;
another project's look like they do not exist: 404, as nova answers). Tokens are compared in
constant time. The file is re-read when its modification time changes, so tokens can be added
or revoked without a restart.
"""

from __future__ import annotations

import hmac
import os
import stat
import threading
from dataclasses import dataclass

from sdn import exception

ADMIN = "admin"
PROJECT_PREFIX = "project:"
#: shortest token accepted: a guessable token is no authentication
MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class Principal:
    """Who a request speaks for: an admin (``project`` None unless the request names one with
    the ``X-Project-Id`` header) or one project."""

    admin: bool
    project: str | None = None

    def sees(self, project_id: str | None) -> bool:
        """True if a resource of ``project_id`` is visible (None: a shared resource)."""
        return self.admin and self.project is None or project_id in (None, self.project)

    def owns(self, project_id: str | None) -> bool:
        """True if the caller may change a resource of ``project_id``."""
        return self.admin and self.project is None or project_id == self.project


def parse_tokens(text: str, source: str = "token file") -> dict[str, Principal]:
    """``{token: Principal}`` of a token file's text. Raises ConfigError naming the line and what
    is allowed, for a malformed line, a bad scope, a short or repeated token."""
    tokens: dict[str, Principal] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        where = f"{source} line {number}"
        if len(fields) != 2:
            raise exception.ConfigError(f"{where}: expected 'TOKEN SCOPE' (SCOPE: admin or "
                                        f"project:<id>), got {len(fields)} field(s)")
        token, scope = fields
        if len(token) < MIN_TOKEN_LENGTH:
            raise exception.ConfigError(f"{where}: token is {len(token)} characters; use at least "
                                        f"{MIN_TOKEN_LENGTH} (e.g. 'openssl rand -hex 24')")
        if scope == ADMIN:
            principal = Principal(admin=True)
        elif scope.startswith(PROJECT_PREFIX) and scope[len(PROJECT_PREFIX):]:
            principal = Principal(admin=False, project=scope[len(PROJECT_PREFIX):])
        else:
            raise exception.ConfigError(f"{where}: scope {scope!r} is not admin or project:<id>")
        if token in tokens:
            raise exception.ConfigError(f"{where}: this token is already listed above; a token "
                                        "has one scope")
        tokens[token] = principal
    return tokens


class TokenFile:
    """The tokens of ``path``, re-read when the file changes. ``load()`` raises ConfigError for a
    missing, unreadable, group/world-readable or malformed file (``sdn api`` refuses to start);
    a later change that breaks the file keeps the last good tokens."""

    def __init__(self, path: str | None):
        if not path:
            raise exception.ConfigError("[api] token_file is not set; the API accepts only bearer "
                                        "tokens listed there ('TOKEN SCOPE' lines)")
        self.path = path
        self._tokens: dict[str, Principal] = {}
        self._mtime: float | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        st = self._stat()
        self._read(st)

    def _stat(self) -> os.stat_result:
        try:
            st = os.stat(self.path)
        except OSError as err:
            raise exception.ConfigError(f"cannot read [api] token_file {self.path} "
                                        f"({err.strerror}); create it with 'TOKEN SCOPE' lines") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise exception.ConfigError(f"[api] token_file {self.path} is accessible by group or "
                                        f"others (mode {stat.S_IMODE(st.st_mode):o}); "
                                        f"chmod 600 {self.path}")
        return st

    def _read(self, st: os.stat_result) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as err:
            raise exception.ConfigError(f"cannot read [api] token_file {self.path} ({err})") from None
        tokens = parse_tokens(text, f"[api] token_file {self.path}")
        with self._lock:
            self._tokens, self._mtime = tokens, st.st_mtime

    def lookup(self, token: str) -> Principal | None:
        """The Principal of ``token``, or None. Re-reads the file if it changed since."""
        try:
            st = os.stat(self.path)
            if st.st_mtime != self._mtime:
                self._read(self._stat())
        except (OSError, exception.SdnError):
            pass   # keep the last good tokens; the operator sees the error on the next restart
        found = None
        with self._lock:
            items = list(self._tokens.items())
        for known, principal in items:   # every token compared: the time does not tell which
            if hmac.compare_digest(known.encode(), token.encode()):
                found = principal
        return found
