"""A throw-away PostgreSQL cluster of the tests' (and benchmarks') own.

``Cluster.start()`` runs Debian's ``initdb`` into a fresh temporary directory and starts the
server with ``pg_ctl`` bound to 127.0.0.1 on a free port, with its unix socket in that same
directory (never /var/run/postgresql: a system cluster, if any, is not touched). PostgreSQL
refuses to run as root, so as root the cluster belongs to the ``postgres`` user (created by the
Debian package) and every server command runs through ``runuser``. ``stop()`` stops exactly
this cluster (``pg_ctl -D <its directory> stop``) and removes the directory.

Durability is off (fsync, synchronous_commit, full_page_writes): the cluster lives for one test
session, and the tests care about locking and visibility, not about surviving a power cut.
Logins use a random password (scram-sha-256) over TCP, as an operator's deployment would.

Databases: ``create_database(template=...)`` copies a migrated template in milliseconds, so each
test gets a fresh database; ``drop_database`` removes it (``WITH (FORCE)`` ends leftover
connections of the test). Needs psycopg 3 (``pip install .[postgresql]``).
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

#: the OS user that owns the cluster when we are root (Debian's postgresql package creates it)
SERVER_USER = "postgres"
#: the database superuser the tests log in as
DB_USER = "sdn"
#: server settings of a throw-away cluster (see the module docstring)
SETTINGS = {
    "listen_addresses": "127.0.0.1", "fsync": "off", "synchronous_commit": "off",
    "full_page_writes": "off", "max_connections": "200", "shared_buffers": "64MB",
}


class Unavailable(RuntimeError):
    """PostgreSQL's server programs or psycopg are not installed (``make setup`` installs both)."""


def bindir() -> Path:
    """Directory of initdb/pg_ctl: the newest /usr/lib/postgresql/<version>/bin (Debian), else
    PATH. Raises Unavailable."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    raise Unavailable("PostgreSQL server programs (initdb, pg_ctl) are not installed; "
                      "`make setup` installs Debian's postgresql package")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """One running throw-away cluster; see the module docstring."""

    def __init__(self, root: Path, port: int, password: str, server_user: str | None):
        self.root = root
        self.data = root / "data"
        self.port = port
        self.password = password
        self._server_user = server_user
        self._names = itertools.count(1)
        self._stopped = False

    # -- lifecycle -------------------------------------------------------------------------------

    @classmethod
    def start(cls, attempts: int = 3) -> Cluster:
        """initdb + pg_ctl start; returns the running cluster. Raises Unavailable, or
        RuntimeError with the server log when it does not start."""
        try:
            import psycopg  # noqa: F401  (fail early, with advice, before initdb)
        except ImportError:
            raise Unavailable("psycopg 3 is not installed; pip install '.[postgresql]'") from None
        bins = bindir()
        server_user = SERVER_USER if os.geteuid() == 0 else None
        root = Path(tempfile.mkdtemp(prefix="sdn-pg-"))
        os.chmod(root, 0o755)
        password = secrets.token_hex(16)
        pwfile = root / "pwfile"
        pwfile.write_text(password + "\n")
        if server_user:
            entry = pwd.getpwnam(server_user)
            os.chown(root, entry.pw_uid, entry.pw_gid)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        cluster = cls(root, 0, password, server_user)
        atexit.register(cluster.stop)   # a session that dies before its teardown still cleans up
        try:
            cluster._run([str(bins / "initdb"), "-D", str(cluster.data), "-U", DB_USER, "--no-sync",
                          "-E", "UTF8", "--locale=C", "--auth-local=scram-sha-256",
                          "--auth-host=scram-sha-256", f"--pwfile={pwfile}"])
            for attempt in range(attempts):   # another process may take the free port first
                cluster.port = free_port()
                options = " ".join(f"-c {k}={v}" for k, v in
                                   {**SETTINGS, "port": cluster.port,
                                    "unix_socket_directories": str(root)}.items())
                result = cluster._run([str(bins / "pg_ctl"), "-D", str(cluster.data), "-l",
                                       str(root / "server.log"), "-w", "-t", "60", "-o", options,
                                       "start"], check=False)
                if result.returncode == 0:
                    return cluster
            raise RuntimeError(f"PostgreSQL did not start: {result.stdout}{result.stderr}\n"
                               f"{cluster.log_tail()}")
        except BaseException:
            cluster.stop()
            raise

    def stop(self) -> None:
        """Stop this cluster (pg_ctl -D, immediate: nothing in it is kept) and remove its files.
        Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if (self.data / "postmaster.pid").exists():
            self._run([str(bindir() / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                       "stop"], check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.root / "server.log").read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        if self._server_user:
            argv = ["runuser", "-u", self._server_user, "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, cwd=self.root, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    # -- databases -------------------------------------------------------------------------------

    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        """SQLAlchemy URL of ``database`` (``driver`` ``postgresql`` gives a libpq URL)."""
        return f"{driver}://{DB_USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _admin(self, sql: str) -> None:
        import psycopg
        with psycopg.connect(self.url(driver="postgresql"), autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self, name: str | None = None, template: str | None = None) -> str:
        """A new empty database (or a copy of ``template``, which must have no open
        connection); returns its name."""
        name = name or f"t{os.getpid()}_{next(self._names)}"
        self._admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, ending any connection still open to it."""
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
