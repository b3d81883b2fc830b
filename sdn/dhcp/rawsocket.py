"""DHCPv4 server on a Linux raw (AF_PACKET) socket: sdn's responder without OpenFlow.

Used standalone (benchmarks, a Linux backend with ``dhcp_driver = scapy``): it listens on one
interface that carries a whole segment (nova's network-host model), so a request is bound to a
VIF by its ``chaddr`` among the VIFs of the networks it serves -- not by ingress port as the
OpenFlow path does. Decisions are ``sdn.dhcp.server.DhcpResponder``'s, unchanged.

Lease durability (write-ahead): frames are handled in batches (whatever the socket has queued,
up to ``BATCH_MAX``). OFFERs and NAKs go out at once; the lease events of a batch are recorded
in **one** call to ``record`` (one database transaction) and only after it returns are the
batch's ACKs sent. So an ACK on the wire always has its lease committed, and a crash loses at
most leases that were never acknowledged (the client retries its REQUEST).
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Callable, Iterable, Mapping

from sdn.dhcp.server import DhcpBinding, DhcpResponder, LeaseEvent
from sdn.view import StateView

LOG = logging.getLogger("sdn.dhcp.rawsocket")

ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
BATCH_MAX = 256
_MAC_LEN = 6


def bindings_by_chaddr(view: StateView,
                       network_ids: Iterable[int] | None = None) -> dict[bytes, DhcpBinding]:
    """6-byte MAC -> DhcpBinding for every VIF (with a fixed address) of the given networks
    (all networks of ``view`` when None)."""
    wanted = set(view.networks) if network_ids is None else set(network_ids)
    out: dict[bytes, DhcpBinding] = {}
    for vif in view.vifs:
        network = view.networks.get(vif.network_id)
        if network is None or vif.network_id not in wanted or not vif.addresses:
            continue
        mac = bytes.fromhex(vif.mac.replace(":", "").replace("-", ""))
        out[mac] = DhcpBinding(mac=vif.mac, address=vif.addresses[0], hostname=vif.hostname,
                               network=network)
    return out


def chaddr_of(frame: bytes) -> bytes | None:
    """The 6-byte chaddr of an untagged IPv4/UDP BOOTP frame, without a full parse."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    off = 14 + (frame[14] & 0x0F) * 4 + 8 + 28
    return frame[off:off + _MAC_LEN] if len(frame) >= off + _MAC_LEN else None


def is_dhcp_request(frame: bytes) -> bool:
    """IPv4, UDP, destination port 67 (untagged)."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return False
    off = 14 + (frame[14] & 0x0F) * 4
    return frame[off + 2:off + 4] == b"\x00\x43"


class BatchHandler:
    """Socket-free core: frames in, (immediate replies, lease events, replies after commit)."""

    def __init__(self, bindings: Mapping[bytes, DhcpBinding], responder: DhcpResponder | None = None):
        self.bindings = bindings
        self.responder = responder or DhcpResponder()
        self.unknown = 0        #: requests from a chaddr that is no VIF of these networks

    def handle(self, frames: Iterable[bytes], now: float
               ) -> tuple[list[bytes], list[LeaseEvent], list[bytes]]:
        now_out: list[bytes] = []
        events: list[LeaseEvent] = []
        after_commit: list[bytes] = []
        get = self.bindings.get
        handle = self.responder.handle
        for frame in frames:
            binding = get(chaddr_of(frame))
            if binding is None:
                self.unknown += 1
                continue          # not a VIF of these networks: no answer (as on a VIF port)
            decision = handle(frame, binding, now)
            if decision.event is not None:
                events.append(decision.event)
                if decision.reply is not None:
                    after_commit.append(decision.reply)
            elif decision.reply is not None:
                now_out.append(decision.reply)
        return now_out, events, after_commit


class RawSocketServer:
    """Serve DHCP on ``iface``. ``record(events)`` must make the events durable (one
    transaction) before returning; it may be None (leases not recorded, e.g. a dry run)."""

    def __init__(self, iface: str, bindings: Mapping[bytes, DhcpBinding],
                 record: Callable[[list[LeaseEvent]], object] | None = None, sock=None):
        self.iface = iface
        self.handler = BatchHandler(bindings)
        self.record = record
        if sock is None:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind((iface, 0))
            sock.setblocking(False)
        self.sock = sock
        self.served = 0

    def set_bindings(self, bindings: Mapping[bytes, DhcpBinding]) -> None:
        self.handler.bindings = bindings

    def _read_batch(self, timeout: float | None) -> list[bytes]:
        """Wait up to ``timeout`` for a frame, then take whatever else is queued (no waiting:
        the socket is non-blocking; a socket *timeout* would make CPython poll before every
        recv and turn the drain into a wait)."""
        sock = self.sock
        if not select.select([sock], [], [], timeout)[0]:
            return []
        frames: list[bytes] = []
        recv = sock.recvfrom
        while len(frames) < BATCH_MAX:
            try:
                data, addr = recv(2048)
            except (BlockingIOError, InterruptedError):
                break
            if addr[2] != PACKET_OUTGOING and is_dhcp_request(data):
                frames.append(data)
        return frames

    def serve_once(self, timeout: float | None = 0.5) -> int:
        """Handle one batch; returns the number of frames read."""
        frames = self._read_batch(timeout)
        if not frames:
            return 0
        now_out, events, after_commit = self.handler.handle(frames, time.time())
        send = self.sock.send
        for reply in now_out:
            send(reply)
        if events and self.record is not None:
            try:
                self.record(events)
            except Exception:  # keep serving; the client's retry gets another chance
                LOG.exception("could not record %d lease events; their ACKs are not sent",
                              len(events))
                after_commit = []
        for reply in after_commit:
            send(reply)
        self.served += len(now_out) + len(after_commit)
        return len(frames)

    def serve_forever(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        while not should_stop():
            self.serve_once()

    def close(self) -> None:
        self.sock.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m sdn.dhcp.rawsocket --config-file F IFACE [--network-id N ...]``: serve the
    VIFs of state on IFACE, recording leases in state (used by the benchmarks)."""
    import argparse
    import signal

    from sdn import config
    from sdn.apps.state import StateSource

    ap = argparse.ArgumentParser(prog="sdn-dhcp-raw")
    ap.add_argument("iface")
    ap.add_argument("--config-file", required=True)
    ap.add_argument("--network-id", type=int, action="append")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    conf = config.load(["--config-file", args.config_file])
    state = StateSource.from_conf(conf)
    server = RawSocketServer(args.iface, bindings_by_chaddr(state.load(), args.network_id),
                             None if args.no_record else state.apply_lease_events)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    LOG.info("serving DHCP on %s for %d VIFs", args.iface, len(server.handler.bindings))
    server.serve_forever(lambda: bool(stop))
    LOG.info("served %d replies; %d requests from unknown clients", server.served, server.handler.unknown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
