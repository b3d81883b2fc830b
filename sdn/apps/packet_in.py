"""Packet-ins routed to the feature whose flow punted them (the cookie's feature byte).

A feature's punt handler registers here once; the controller never learns what a packet-in
means. ``fast`` handlers run on the switch's receive thread (``sdn.apps.fastdp``) and return
the bytes to send back at once; ``slow`` ones get os-ken's parsed ``OFPPacketIn`` on the app's
event thread. A handler's exception is contained to its packet (logged, nothing sent).
Every packet-in is counted by datapath and feature (``sdn_packet_ins_total``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sdn.flows.model import Feature, feature_of
from sdn.metrics import ControllerMetrics, feature_label

LOG = logging.getLogger("sdn.packet_in")

#: fast(dp, in_port, frame) -> bytes to send now (b"": nothing now)
FastHandler = Callable[[object, "int | None", bytes], bytes]
#: slow(dp, in_port, frame) -> None
SlowHandler = Callable[[object, "int | None", bytes], None]


class PacketInDispatch:
    """Feature -> handler tables for packet-ins; see the module docstring."""

    def __init__(self, metrics: ControllerMetrics | None = None) -> None:
        self._fast: dict[Feature, FastHandler] = {}
        self._slow: dict[Feature, SlowHandler] = {}
        self.errors = 0
        self.metrics = metrics if metrics is not None else ControllerMetrics()

    def on_fast(self, feature: Feature, handler: FastHandler) -> None:
        self._fast[feature] = handler

    def on_slow(self, feature: Feature, handler: SlowHandler) -> None:
        self._slow[feature] = handler

    def fast(self, dp, cookie: int, in_port: int | None, frame: bytes) -> bytes | None:
        """``sdn.apps.fastdp`` hook: bytes to send (b"" for none), or None when no fast
        handler claims the cookie (os-ken then parses and dispatches the message)."""
        feature = feature_of(cookie)
        handler = self._fast.get(feature)
        if handler is None:
            return None
        self.metrics.count_packet_in(getattr(dp, "id", None), feature)
        try:
            return handler(dp, in_port, frame)
        except Exception:
            self.errors += 1
            self.metrics.packet_in_errors.labels(feature_label(feature)).inc()
            LOG.exception("packet-in of %d bytes from port %s (cookie %#x) dropped", len(frame),
                          in_port, cookie)
            return b""

    def slow(self, dp, cookie: int, in_port: int | None, frame: bytes) -> None:
        """A packet-in os-ken parsed: to the slow handler, else the fast one (whose reply is
        sent here)."""
        feature = feature_of(cookie)
        handler = self._slow.get(feature)
        if handler is None:
            out = self.fast(dp, cookie, in_port, frame)
            if out:
                dp.send(out)
            elif out is None:     # nobody's: counted all the same
                self.metrics.count_packet_in(getattr(dp, "id", None), feature)
            return
        self.metrics.count_packet_in(getattr(dp, "id", None), feature)
        try:
            handler(dp, in_port, frame)
        except Exception:
            self.errors += 1
            self.metrics.packet_in_errors.labels(feature_label(feature)).inc()
            LOG.exception("packet-in of %d bytes from port %s (cookie %#x) dropped", len(frame),
                          in_port, cookie)
