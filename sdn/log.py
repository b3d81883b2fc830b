"""Logging of sdn's long-running programs through oslo.log (the OpenStack convention).

``register_options(conf)`` adds oslo.log's options (``debug``, ``log_file``, ``log_dir``,
``use_syslog``, ``use_journal``, ...) to sdn's ConfigOpts (``sdn.config.make_conf`` does it),
so sdn.conf's ``[DEFAULT]`` may set them; ``sdn --debug`` and ``sdn --log-file F`` override
the file. ``setup(conf, program)`` is called once per process by the program's entry point
(``sdn controller``, ``sdn agent``, ``sdn metadata``, ``sdn api``): without a log file, lines
go to stderr (oslo.log's ``use_stderr``; its own fallback is stdout, which is a command's output
and was never sdn's log), unless the config sets ``use_stderr`` itself.

``RateLimiter`` keeps a per-key INFO line (one DHCP outcome per MAC) from flooding the log.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

from oslo_log import log as oslo_log

from sdn import exception

#: oslo.log's defaults plus libraries whose INFO is noise at sdn's scale
DEFAULT_LOG_LEVELS = ["os_ken=WARN", "ovsdbapp=WARN", "sqlalchemy=WARN", "alembic=WARN",
                      "urllib3=WARN", "stevedore=WARN", "oslo_concurrency=WARN"]


def register_options(conf) -> None:
    """Register oslo.log's options on ``conf`` (idempotent)."""
    if "log_file" not in conf:
        oslo_log.register_options(conf)


def setup(conf, program: str, debug: bool | None = None, log_file: str | None = None) -> None:
    """Configure the root logger of this process from ``conf`` (oslo.log options registered,
    config already parsed) for ``program`` (``sdn-controller``: the name oslo.log puts in
    syslog/journal lines). ``debug``/``log_file`` (the command line's ``--debug`` and
    ``--log-file``) override the config file's values when given."""
    register_options(conf)
    if debug is not None:
        conf.set_override("debug", debug)
    if log_file is not None:
        conf.set_override("log_file", log_file)
    if not (conf.log_file or conf.log_dir):
        conf.set_default("use_stderr", True)
    levels = [lvl for lvl in conf.default_log_levels
              if lvl.split("=", 1)[0] not in {x.split("=", 1)[0] for x in DEFAULT_LOG_LEVELS}]
    conf.set_default("default_log_levels", levels + DEFAULT_LOG_LEVELS)
    try:
        oslo_log.setup(conf, program)
    except OSError as err:   # the log file's directory is missing or not writable
        raise exception.Invalid(f"cannot open log file {err.filename or conf.log_file} "
                                 f"({err.strerror}); give a writable --log-file (or log_file "
                                 "in [DEFAULT])") from None


class RateLimiter:
    """At most one event per key every ``interval`` seconds; the rest are counted.

    ``allow(key, now) -> int | None``: None when the event is suppressed, else how many events
    of that key were suppressed since its last allowed one (0: none), for a line such as
    ``... (3 more suppressed)``. Pure apart from its own table and lock: ``now`` is given by the
    caller (seconds, any monotonic clock). At most ``max_keys`` keys are kept: when full, keys
    idle for longer than ``interval`` are forgotten, and if none is, the oldest half goes (a
    forgotten key's next event is allowed: never silence, at worst a few more lines).
    """

    def __init__(self, interval: float = 10.0, max_keys: int = 10000):
        if interval < 0:
            raise ValueError(f"interval must be >= 0 seconds, not {interval}")
        self.interval = interval
        self.max_keys = max(1, max_keys)
        self._last: dict[Hashable, list] = {}     # key -> [last allowed time, suppressed]
        self._lock = threading.Lock()

    def allow(self, key: Hashable, now: float) -> int | None:
        with self._lock:
            entry = self._last.get(key)
            if entry is not None and now - entry[0] < self.interval:
                entry[1] += 1
                return None
            suppressed = entry[1] if entry is not None else 0
            if entry is None and len(self._last) >= self.max_keys:
                self._prune(now)
            self._last[key] = [now, 0]
            return suppressed

    def _prune(self, now: float) -> None:
        idle = [k for k, (t, _) in self._last.items() if now - t >= self.interval]
        for key in idle:
            del self._last[key]
        if len(self._last) >= self.max_keys:
            oldest = sorted(self._last, key=lambda k: self._last[k][0])
            for key in oldest[:max(1, len(oldest) // 2)]:
                del self._last[key]
