"""DHCPv4 server on a Linux raw (AF_PACKET) socket: sdn's responder without OpenFlow.

Used standalone (benchmarks, a Linux backend with ``dhcp_driver = scapy``): it listens on one
interface that carries a whole segment (nova's network-host model), so a request is bound to a
VIF by its ``chaddr`` among the VIFs of the networks it serves -- not by ingress port as the
OpenFlow path does. Decisions are ``sdn.dhcp.server.DhcpResponder``'s, unchanged.

Lease durability (write-ahead): frames are handled in batches (whatever the socket has queued,
up to ``BATCH_MAX``). OFFERs and NAKs go out at once; lease events are recorded in **one** call
to ``record`` (one database transaction) per group and only after it returns are the group's
ACKs sent. So an ACK on the wire always has its lease committed, and a crash loses at most
leases that were never acknowledged (the client retries its REQUEST). ``serve_forever`` commits
on a thread of its own (group commit): while one transaction is being made durable, the loop
goes on answering and the next group collects every batch's events meanwhile, so an fsync
never stalls the OFFERs (``serve_once`` alone commits inline).
"""

from __future__ import annotations

import ctypes
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from sdn.dhcp.server import DhcpBinding, DhcpResponder, LeaseEvent
from sdn.view import StateView

LOG = logging.getLogger("sdn.dhcp.rawsocket")

ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23     # Linux >= 4.20
SO_ATTACH_FILTER = 26
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


# Classic BPF (struct sock_filter: code, jt, jf, k): keep untagged, unfragmented IPv4/UDP to
# port 67 carrying a BOOTREQUEST (op 1, so never our own replies); what is_dhcp_request checks,
# in the kernel, so the loop reads no other frame.
_BOOTREQUEST_FILTER = [
    (0x28, 0, 0, 12),           # 0  ldh [12]            ethertype
    (0x15, 0, 10, ETH_P_IP),    # 1  jne #0x0800, drop
    (0x30, 0, 0, 23),           # 2  ldb [23]            IP protocol
    (0x15, 0, 8, 17),           # 3  jne #17 (UDP), drop
    (0x28, 0, 0, 20),           # 4  ldh [20]            flags + fragment offset
    (0x45, 6, 0, 0x1FFF),       # 5  jset #0x1fff (a fragment), drop
    (0xB1, 0, 0, 14),           # 6  ldxb 4*([14]&0xf)   IP header length
    (0x48, 0, 0, 16),           # 7  ldh [x+16]          UDP destination port
    (0x15, 0, 3, 67),           # 8  jne #67, drop
    (0x50, 0, 0, 22),           # 9  ldb [x+22]          BOOTP op
    (0x15, 0, 1, 1),            # 10 jne #1 (BOOTREQUEST), drop
    (0x06, 0, 0, 0x40000),      # 11 ret #262144         accept
    (0x06, 0, 0, 0),            # 12 drop: ret #0
]


def _attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    """SO_ATTACH_FILTER ``program``; struct sock_fprog holds a pointer, hence ctypes."""
    code = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(code, len(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                    struct.pack("HL", len(program), ctypes.addressof(buf)))


def open_socket(iface: str) -> tuple[socket.socket, bool]:
    """A non-blocking AF_PACKET socket on ``iface`` that receives only DHCP requests (the
    filter is attached before the bind, so nothing else is ever queued), and whether it also
    skips frames this host sends (then ``recv`` needs no address to tell them apart)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)   # protocol 0: receives nothing yet
    try:
        _attach_filter(sock, _BOOTREQUEST_FILTER)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            ignores_outgoing = True
        except OSError:
            ignores_outgoing = False
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind((iface, ETH_P_IP))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, ignores_outgoing


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
        answer = self.responder.answer
        for frame in frames:
            # chaddr of an untagged frame without IP options (chaddr_of for the rest)
            binding = get(frame[70:76] if frame[14:15] == b"\x45" else chaddr_of(frame))
            if binding is None:
                self.unknown += 1
                continue          # not a VIF of these networks: no answer (as on a VIF port)
            reply, event, _reason = answer(frame, binding)
            if event is not None:
                events.append(event)
                if reply is not None:
                    after_commit.append(reply)
            elif reply is not None:
                now_out.append(reply)
        return now_out, events, after_commit


class _Committer:
    """Group commit on a thread: ``submit(events, acks)`` from the loop; the thread records
    everything submitted since its last commit in one ``record`` call, then sends those ACKs
    (none of them if ``record`` raised)."""

    def __init__(self, record: Callable[[list[LeaseEvent]], object], send: Callable[[bytes], object]):
        self.record, self.send = record, send
        self.acked = 0
        self._cond = threading.Condition()
        self._events: list[LeaseEvent] = []
        self._acks: list[bytes] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="dhcp-lease-commit", daemon=True)
        self._thread.start()

    def submit(self, events: list[LeaseEvent], acks: list[bytes]) -> None:
        with self._cond:
            self._events += events
            self._acks += acks
            self._cond.notify()

    def close(self) -> None:
        """Commit what is pending, send its ACKs, stop the thread."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._events and not self._stop:
                    cond.wait()
                events, acks = self._events, self._acks
                self._events, self._acks = [], []
                if not events and self._stop:
                    return
            try:
                self.record(events)
            except Exception:  # keep serving; the client's retry gets another chance
                LOG.exception("could not record %d lease events; their ACKs are not sent",
                              len(events))
                continue
            send = self.send
            for reply in acks:
                send(reply)
            self.acked += len(acks)


class RawSocketServer:
    """Serve DHCP on ``iface``. ``record(events)`` must make the events durable (one
    transaction) before returning; it may be None (leases not recorded, e.g. a dry run)."""

    def __init__(self, iface: str, bindings: Mapping[bytes, DhcpBinding],
                 record: Callable[[list[LeaseEvent]], object] | None = None, sock=None):
        self.iface = iface
        self.handler = BatchHandler(bindings)
        self.record = record
        # a socket of our own is filtered in the kernel; one passed in (tests) is not
        self._filtered = False
        if sock is None:
            sock, self._filtered = open_socket(iface)
        self.sock = sock
        self.served = 0
        self._committer: _Committer | None = None

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
        if self._filtered:
            recv = sock.recv
            append = frames.append
            for _ in range(BATCH_MAX):
                try:
                    append(recv(2048))
                except (BlockingIOError, InterruptedError):
                    break
            return frames
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
        self.served += len(now_out)
        if events and self._committer is not None:
            self._committer.submit(events, after_commit)
            return len(frames)
        if events and self.record is not None:
            try:
                self.record(events)
            except Exception:  # keep serving; the client's retry gets another chance
                LOG.exception("could not record %d lease events; their ACKs are not sent",
                              len(events))
                after_commit = []
        for reply in after_commit:
            send(reply)
        self.served += len(after_commit)
        return len(frames)

    def serve_forever(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Serve until ``should_stop()``, committing leases on a thread (group commit); what
        is pending when it stops is committed and acknowledged before this returns."""
        if self.record is not None:
            self._committer = _Committer(self.record, self.sock.send)
        try:
            while not should_stop():
                self.serve_once()
        finally:
            committer, self._committer = self._committer, None
            if committer is not None:
                committer.close()
                self.served += committer.acked

    def close(self) -> None:
        self.sock.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m sdn.dhcp.rawsocket --config-file F IFACE [--network-id N ...]``: serve the
    VIFs of state on IFACE, recording leases in state (used by the benchmarks)."""
    import argparse
    import signal

    from sdn import config
    from sdn.state import StateSource

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
