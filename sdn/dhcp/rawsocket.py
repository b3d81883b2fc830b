"""DHCPv4 server on Linux raw (AF_PACKET) sockets: sdn's responder without OpenFlow.

A server listens on a set of interfaces, each with the bindings it may answer
(``{interface: {6-byte chaddr: DhcpBinding}}``); a request is answered only if its chaddr is
one of the bindings *of the interface it arrived on*, so a client is bound by chaddr **and**
ingress port. Decisions are ``sdn.dhcp.server.DhcpResponder``'s, unchanged.

Two ways to use it:

* per VIF port (``sdn agent`` with ``dhcp_driver = scapy``; ``bindings_by_port``): one socket
  on each VIF's tap port (``VifView.port_name``) with only that VIF's binding. A guest can then
  only ever obtain, renew, RELEASE or DECLINE its own lease, as on the OpenFlow path where the
  punt's in_port picks the VIF. Why per-port sockets rather than one socket on the bridge:
  a frame read on the bridge device does not say which bridge port it entered by
  (``sockaddr_ll.sll_ifindex`` is the bridge, and PACKET_AUXDATA carries only VLAN and
  checksum data); looking the Ethernet source up in the bridge FDB afterwards is racy (the
  entry may have aged or moved) and trusts a source MAC that a VIF without port security may
  forge. A socket bound to the tap *is* the port. The socket is bound to ETH_P_ALL, the only
  kind of packet socket a bridge port delivers to before the bridge consumes the frame
  (protocol-specific handlers run after the bridge's rx_handler), with frames this host sends
  ignored (PACKET_IGNORE_OUTGOING, or ``PACKET_OUTGOING`` filtered by address) -- so another
  guest's broadcast flooded *out of* a tap is never taken for this VIF's. Replies go out of
  the same tap, i.e. to that guest only.
* one segment interface (the benchmarks, ``bindings_by_chaddr``): nova's network-host model,
  every VIF of the served networks on one interface, bound by chaddr alone -- only for a
  segment whose hosts are trusted not to forge each other's chaddr.

Containment: decoding and deciding are total (``DhcpResponder.answer``), and a failing
``send`` or ``recv`` (EMSGSIZE, ENETDOWN, ENXIO when a tap goes away ...) is logged, counted
in ``send_errors`` / ``recv_errors`` and costs that packet (or closes that one socket, reopened
while the interface is wanted) -- never the server or its commit thread.

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

from sdn.dhcp.server import DhcpBinding, DhcpResponder, LeaseEvent, mac_bytes
from sdn.view import StateView

LOG = logging.getLogger("sdn.dhcp.rawsocket")

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23     # Linux >= 4.20
SO_ATTACH_FILTER = 26
BATCH_MAX = 256
#: seconds the commit thread waits after the first lease event for more to join its
#: transaction (group commit): at 1,000 DORA/s one fsync'd SQLite transaction per REQUEST cost
#: ~3x the CPU of the rest of the exchange; a DHCP client retransmits after 4 s (RFC 2131 §4.1)
COMMIT_LINGER_S = 0.01
#: ... only while fewer events than this are pending: a backlog already makes a big group
LINGER_BELOW = 32
_MAC_LEN = 6


def _vif_bindings(view: StateView, network_ids: Iterable[int] | None):
    """(VifView, DhcpBinding) of every VIF with a fixed address on the given networks (all
    networks of ``view`` when None)."""
    wanted = set(view.networks) if network_ids is None else set(network_ids)
    for vif in view.vifs:
        network = view.networks.get(vif.network_id)
        if network is not None and vif.network_id in wanted and vif.addresses:
            yield vif, DhcpBinding.for_vif(vif, network)


def bindings_by_chaddr(view: StateView,
                       network_ids: Iterable[int] | None = None) -> dict[bytes, DhcpBinding]:
    """6-byte MAC -> DhcpBinding for every VIF (with a fixed address) of the given networks
    (all networks of ``view`` when None): the bindings of one segment interface."""
    return {mac_bytes(vif.mac): binding for vif, binding in _vif_bindings(view, network_ids)}


def bindings_by_port(view: StateView, network_ids: Iterable[int] | None = None
                     ) -> dict[str, dict[bytes, DhcpBinding]]:
    """VIF port name (``VifView.port_name``) -> {its 6-byte MAC: its DhcpBinding} for every
    VIF (with a fixed address) of the given networks: the interfaces of a per-port server."""
    return {vif.port_name: {mac_bytes(vif.mac): binding}
            for vif, binding in _vif_bindings(view, network_ids)}


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


def open_socket(iface: str, program: list[tuple[int, int, int, int]] | None = None
                ) -> tuple[socket.socket, bool]:
    """A non-blocking AF_PACKET socket on ``iface`` that receives only DHCP requests (the
    filter, or the classic BPF ``program`` given, is attached before the bind, so nothing else
    is ever queued), and whether it also skips frames this host sends (then ``recv`` needs no
    address to tell them apart).

    Bound to ETH_P_ALL so that it also works on a bridge port (see the module docstring).
    Raises OSError when ``iface`` does not exist (ENODEV) or privileges are missing (EPERM)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)   # protocol 0: receives nothing yet
    try:
        _attach_filter(sock, program or _BOOTREQUEST_FILTER)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            ignores_outgoing = True
        except OSError:
            ignores_outgoing = False
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind((iface, ETH_P_ALL))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, ignores_outgoing


class BatchHandler:
    """Socket-free core of one interface: frames in, (immediate replies, lease events, replies
    after commit). Answers only chaddrs in ``bindings`` (6-byte MAC -> DhcpBinding)."""

    def __init__(self, bindings: Mapping[bytes, DhcpBinding], responder: DhcpResponder | None = None):
        self.bindings = bindings
        self.responder = responder or DhcpResponder()
        self.unknown = 0        #: requests from a chaddr that is no binding of this interface
        self.errors = 0         #: frames whose handling raised (a bug; logged, frame dropped)

    def handle(self, frames: Iterable[bytes], now: float
               ) -> tuple[list[bytes], list[LeaseEvent], list[tuple[LeaseEvent, bytes]]]:
        """(replies to send now, lease events to record, (event, reply) to send once that
        event is recorded)."""
        now_out: list[bytes] = []
        events: list[LeaseEvent] = []
        after_commit: list[tuple[LeaseEvent, bytes]] = []
        get = self.bindings.get
        answer = self.responder.answer
        for frame in frames:
            try:
                # chaddr of an untagged frame without IP options (chaddr_of for the rest)
                binding = get(frame[70:76] if frame[14:15] == b"\x45" else chaddr_of(frame))
                if binding is None:
                    self.unknown += 1
                    continue      # not a VIF of this interface: no answer (as on a VIF port)
                reply, event, _reason = answer(frame, binding)
            except Exception:  # answer() is total; this is a bug here: cost one frame
                self.errors += 1
                LOG.exception("DHCP frame of %d bytes dropped", len(frame))
                continue
            if event is not None:
                events.append(event)
                if reply is not None:
                    after_commit.append((event, reply))
            elif reply is not None:
                now_out.append(reply)
        return now_out, events, after_commit


def _send(send: Callable[[bytes], object], reply: bytes, where: str) -> bool:
    """``send(reply)``; a failure (EMSGSIZE, ENOBUFS, ENXIO ...) is logged and costs this reply
    only. Returns whether it was sent."""
    try:
        send(reply)
        return True
    except OSError as err:
        LOG.warning("DHCP reply of %d bytes not sent on %s: %s", len(reply), where, err)
        return False


def _refused(events: list[LeaseEvent], results) -> set[int]:
    """ids of the events ``record`` returned an error for (``results``: an error or None per
    event, or None when the recorder reports no per-event outcome)."""
    if not isinstance(results, list):
        return set()
    return {id(e) for e, err in zip(events, results) if err is not None}


class _Committer:
    """Group commit on a thread: ``submit(events, acks)`` from the loop, ``acks`` being
    (send, reply, event) triples; the thread records everything submitted since its last
    commit in one ``record`` call, then sends the ACKs of the events it recorded (none if
    ``record`` raised; not those whose error ``record`` returned at their index). Nothing a
    packet or the database does ends the thread: only ``close``."""

    def __init__(self, record: Callable[[list[LeaseEvent]], object],
                 linger: float = COMMIT_LINGER_S):
        self.record = record
        self.linger = linger
        self.acked = 0
        self.send_errors = 0
        self._cond = threading.Condition()
        self._events: list[LeaseEvent] = []
        self._acks: list[tuple[Callable[[bytes], object], bytes]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="dhcp-lease-commit", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, events: list[LeaseEvent],
               acks: list[tuple[Callable[[bytes], object], bytes, LeaseEvent | None]]) -> None:
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
                lingering = self.linger > 0 and not self._stop and len(self._events) < LINGER_BELOW
            if lingering:
                time.sleep(self.linger)    # submit() notifies nobody meanwhile: no wake-ups
            with cond:
                events, acks = self._events, self._acks
                self._events, self._acks = [], []
                if not events and self._stop:
                    return
            try:
                results = self.record(events)
            except Exception:  # keep serving; the client's retry gets another chance
                LOG.exception("could not record %d lease events; their ACKs are not sent",
                              len(events))
                continue
            refused = _refused(events, results)
            for send, reply, event in acks:
                if event is not None and id(event) in refused:
                    continue      # write-ahead: no ACK for a lease state refused
                if _send(send, reply, "the commit thread"):
                    self.acked += 1
                else:
                    self.send_errors += 1


class _Port:
    """One interface served: its socket and its handler."""

    __slots__ = ("name", "sock", "handler", "filtered")

    def __init__(self, name: str, sock, handler: BatchHandler, filtered: bool):
        self.name, self.sock, self.handler, self.filtered = name, sock, handler, filtered


class RawSocketServer:
    """Serve DHCP on each interface of ``interfaces`` ({name: {6-byte chaddr: DhcpBinding}}),
    answering on an interface only the chaddrs bound to it. ``record(events)`` must make the
    events durable (one transaction) before returning; it may be None (leases not recorded,
    e.g. a dry run). ``sockets`` ({name: socket}) replaces opening them (tests); such a socket
    is not filtered in the kernel, so frames are checked here.

    An interface whose socket cannot be opened (not there yet) or fails is retried every
    ``RETRY_S`` seconds while it is wanted (``set_interfaces``)."""

    RETRY_S = 1.0

    def __init__(self, interfaces: Mapping[str, Mapping[bytes, DhcpBinding]],
                 record: Callable[[list[LeaseEvent]], object] | None = None,
                 sockets: Mapping[str, object] | None = None):
        self.record = record
        self.responder = DhcpResponder()
        self.ports: dict[str, _Port] = {}
        for name, sock in (sockets or {}).items():
            self.ports[name] = _Port(name, sock, BatchHandler({}, self.responder), False)
        self.served = 0
        self.send_errors = 0
        self.recv_errors = 0
        self._wanted: dict[str, Mapping[bytes, DhcpBinding]] = dict(interfaces)
        self._changed = True
        self._retry_at = 0.0
        self._committer: _Committer | None = None
        self._sync()

    @property
    def unknown(self) -> int:
        """Requests from a chaddr not bound to the interface they arrived on."""
        return sum(port.handler.unknown for port in self.ports.values())

    def set_interfaces(self, interfaces: Mapping[str, Mapping[bytes, DhcpBinding]]) -> None:
        """Serve ``interfaces`` from now on (thread-safe: the serving loop opens and closes
        sockets before its next read)."""
        self._wanted = dict(interfaces)
        self._changed = True

    def alive(self) -> bool:
        """False once the commit thread of ``serve_forever`` has died (it should never)."""
        committer = self._committer
        return committer is None or committer.alive()

    def _sync(self) -> None:
        """Open sockets of wanted interfaces, close the others, update every handler's bindings."""
        now = time.monotonic()
        if not self._changed and now < self._retry_at:
            return
        self._changed = False
        wanted = self._wanted
        for name in [n for n in self.ports if n not in wanted]:
            self.ports.pop(name).sock.close()
        missing = False
        for name, bindings in wanted.items():
            port = self.ports.get(name)
            if port is None:
                try:
                    sock, filtered = open_socket(name)
                except OSError as err:
                    LOG.debug("DHCP socket on %s not open: %s", name, err)
                    missing = True
                    continue
                port = self.ports[name] = _Port(name, sock, BatchHandler({}, self.responder),
                                                filtered)
            port.handler.bindings = bindings
        self._retry_at = now + self.RETRY_S if missing else float("inf")

    def _drop(self, port: _Port, err: OSError) -> None:
        """A socket failed (its interface went away?): close it; reopened while wanted."""
        self.recv_errors += 1
        LOG.warning("DHCP socket on %s failed (%s); reopening while it is wanted", port.name, err)
        self.ports.pop(port.name, None)
        port.sock.close()
        self._retry_at = min(self._retry_at, time.monotonic() + self.RETRY_S)

    def _read_batch(self, port: _Port) -> list[bytes]:
        """Whatever is queued on ``port`` (no waiting: the socket is non-blocking; a socket
        *timeout* would make CPython poll before every recv and turn the drain into a wait)."""
        sock = port.sock
        frames: list[bytes] = []
        try:
            if port.filtered:
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
        except OSError as err:
            self._drop(port, err)
        return frames

    def serve_once(self, timeout: float | None = 0.5) -> int:
        """Wait up to ``timeout`` seconds for requests, handle what is queued on every ready
        interface; returns the number of frames read."""
        self._sync()
        ports = list(self.ports.values())
        if not ports:
            time.sleep(timeout or 0)
            return 0
        try:
            ready = select.select([p.sock for p in ports], [], [], timeout)[0]
        except (OSError, ValueError):   # a socket closed under us: find it by the next sync
            self._changed = True
            return 0
        ready = set(ready)
        total = 0
        for port in ports:
            if port.sock in ready:
                total += self._serve_port(port)
        return total

    def _serve_port(self, port: _Port) -> int:
        frames = self._read_batch(port)
        if not frames:
            return 0
        now_out, events, after_commit = port.handler.handle(frames, time.time())
        send = port.sock.send
        for reply in now_out:
            if _send(send, reply, port.name):
                self.served += 1
            else:
                self.send_errors += 1
        if events and self._committer is not None:
            self._committer.submit(events, [(send, reply, event) for event, reply in after_commit])
            return len(frames)
        refused: set[int] = set()
        if events and self.record is not None:
            try:
                refused = _refused(events, self.record(events))
            except Exception:  # keep serving; the client's retry gets another chance
                LOG.exception("could not record %d lease events; their ACKs are not sent",
                              len(events))
                after_commit = []
        for event, reply in after_commit:
            if id(event) in refused:
                continue
            if _send(send, reply, port.name):
                self.served += 1
            else:
                self.send_errors += 1
        return len(frames)

    def serve_forever(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Serve until ``should_stop()``, committing leases on a thread (group commit); what
        is pending when it stops is committed and acknowledged before this returns."""
        if self.record is not None:
            self._committer = _Committer(self.record)
        try:
            while not should_stop():
                self.serve_once()
        finally:
            committer, self._committer = self._committer, None
            if committer is not None:
                committer.close()
                self.served += committer.acked
                self.send_errors += committer.send_errors

    def close(self) -> None:
        for port in list(self.ports.values()):
            port.sock.close()
        self.ports.clear()
