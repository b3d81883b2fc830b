"""An os-ken ``Datapath`` whose receive loop hands sdn's DHCP packet-ins straight to sdn.

Profiled under perfdhcp load, os-ken's per-message path was the DHCP bottleneck: two
``recv`` calls per message (header, then body), a full ``OFPPacketIn`` parse (OXM objects),
and a hand-off of every event to the app's thread through a queue, then of every reply to
the send thread through another. Here the receive loop reads whatever the socket holds,
decodes packet-ins with ``struct`` (OpenFlow 1.3 §7.4.1) and offers each to
``packet_in_hook`` on the receive thread; the replies of one read are written at once as one
buffer (``send_now``: the calling thread writes, under the lock the send thread also writes
under, so whole messages never interleave) rather than handed to the send thread: each
hand-off cost a thread wake-up per DHCP reply. Everything else (and any packet-in the hook
declines) takes os-ken's own path.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import struct
import threading
from collections.abc import Callable
from socket import timeout as SocketTimeout

from os_ken.base import app_manager  # noqa: F401  (os-ken's import order: app_manager first)
from os_ken.controller import controller as osken_controller
from os_ken.controller.handler import DEAD_DISPATCHER
from os_ken.lib import hub
from os_ken.ofproto import ofproto_common, ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp

from sdn.apps.datapath import Liveness

LOG = logging.getLogger("sdn.fastdp")

_HEADER = struct.Struct("!BBHI")                 # version, type, length, xid
_PACKET_IN = struct.Struct("!IHBBQHH")           # buffer_id, total_len, reason, table, cookie,
                                                 # match type, match length
_OXM = struct.Struct("!I")
_U32 = struct.Struct("!I")
_PACKET_IN_FIXED = _HEADER.size + _PACKET_IN.size - 4     # up to the match's OXM fields
_OXM_IN_PORT = (ofp.OFPXMC_OPENFLOW_BASIC << 16) | (ofp.OFPXMT_OFB_IN_PORT << 9) | 4
_READ_SIZE = 1 << 18
_YIELD_EVERY = 2048      # as os-ken: let other greenlets/threads run on long bursts

#: hook(datapath, cookie, in_port, frame) -> bytes to send (b"": consumed, nothing to send
#: now) or None (not ours: os-ken parses and dispatches the message as usual).
PacketInHook = Callable[[object, int, "int | None", bytes], "bytes | None"]


def parse_packet_in(buf, off: int, length: int) -> tuple[int, int | None, bytes] | None:
    """(cookie, in_port or None, frame) of the OpenFlow 1.3 packet-in at ``buf[off:off+length]``;
    None if it is not a well-formed OXM packet-in (os-ken's parser then has its say)."""
    if length < _PACKET_IN_FIXED + 4:
        return None
    _buffer_id, _total, _reason, _table, cookie, mtype, mlen = _PACKET_IN.unpack_from(
        buf, off + _HEADER.size)
    if mtype != ofp.OFPMT_OXM or mlen < 4:
        return None
    fields, fields_end = off + _PACKET_IN_FIXED + 4, off + _PACKET_IN_FIXED + mlen
    data = fields_end + (-mlen % 8) + 2          # match padded to 8 bytes, then 2 pad bytes
    if data > off + length:
        return None
    in_port = None
    while fields + 4 <= fields_end:
        (header,) = _OXM.unpack_from(buf, fields)
        if header == _OXM_IN_PORT:
            (in_port,) = _U32.unpack_from(buf, fields + 4)
            break
        fields += 4 + (header & 0xFF)
    return cookie, in_port, bytes(buf[data:off + length])


class FastDatapath(osken_controller.Datapath):
    """os-ken's Datapath with a batched receive loop and a packet-in fast path."""

    packet_in_hook: PacketInHook | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._write_lock = threading.Lock()
        self.liveness = Liveness(self.max_unreplied_echo_requests)

    def send_now(self, buf: bytes) -> bool:
        """Write ``buf`` (whole OpenFlow messages) on this thread, between the send thread's
        writes; queued for the send thread instead while that one is busy writing (never
        waits for it) or when the write fails. Returns whether it was written or queued."""
        if self._write_lock.acquire(blocking=False):
            try:
                if self.send_q is not None:
                    self.socket.sendall(buf)
                    return True
            except (OSError, SocketTimeout):
                return False      # the connection is going down: the receive loop ends it
            finally:
                self._write_lock.release()
        return self.send(buf)

    def _send_loop(self):
        """os-ken's send loop, each write under ``_write_lock`` (see ``send_now``)."""
        try:
            while self.state != DEAD_DISPATCHER:
                buf, close_socket = self.send_q.get()
                self._send_q_sem.release()
                with self._write_lock:
                    self.socket.sendall(buf)
                if close_socket:
                    break
        except (SocketTimeout, OSError) as err:
            LOG.debug("send to switch at %s failed: %s", self.address, err)
        finally:
            q = self.send_q
            self.send_q = None
            try:
                while q.get(block=False):
                    self._send_q_sem.release()
            except hub.QueueEmpty:
                pass
            self._close_write()

    def _echo_request_loop(self):
        """os-ken's echo loop, with misses counted by ``Liveness``: echoes left unanswered
        while this switch commits one of our bundles do not count."""
        if not self.max_unreplied_echo_requests:
            return
        while self.send_q and self.liveness.alive():
            echo_req = self.ofproto_parser.OFPEchoRequest(self)
            self.liveness.echo_sent(self.set_xid(echo_req))
            self.send_msg(echo_req)
            hub.sleep(self.echo_request_interval)
        if self.send_q:
            LOG.warning("datapath %s: %d echo requests unanswered, dropping it",
                        "%016x" % self.id if self.id is not None else self.address,
                        self.liveness.misses)
        self.close()

    def acknowledge_echo_reply(self, xid):
        self.liveness.echo_answered(xid)

    @osken_controller._deactivate
    def _recv_loop(self):
        buf = bytearray()
        count = 0
        header = _HEADER.unpack_from
        min_len = ofproto_common.OFP_HEADER_SIZE
        while self.state != DEAD_DISPATCHER:
            try:
                ret = self.socket.recv(_READ_SIZE)
            except (SocketTimeout, ssl.SSLError):
                continue
            except (EOFError, OSError):
                break
            if not ret:
                break
            buf += ret
            off, end = 0, len(buf)
            replies = []
            hook = self.packet_in_hook
            while end - off >= min_len:
                version, msg_type, msg_len, xid = header(buf, off)
                msg_len = max(msg_len, min_len)
                if end - off < msg_len:
                    break
                if hook is not None and msg_type == ofp.OFPT_PACKET_IN and version == ofp.OFP_VERSION:
                    parsed = parse_packet_in(buf, off, msg_len)
                    reply = hook(self, *parsed) if parsed else None
                    if reply is not None:
                        if reply:
                            replies.append(reply)
                        off += msg_len
                        continue
                self._dispatch(version, msg_type, msg_len, xid, bytes(buf[off:off + msg_len]))
                off += msg_len
                count += 1
                if count > _YIELD_EVERY:
                    count = 0
                    hub.sleep(0)
            del buf[:off]
            if replies:
                self.send_now(b"".join(replies))

    def _dispatch(self, version, msg_type, msg_len, xid, data: bytes) -> None:
        """os-ken's own path for one message: parse, events to observers, brick handlers."""
        msg = ofproto_parser.msg(self, version, msg_type, msg_len, xid, data)
        if not msg or self.ofp_brick is None:
            return
        ev = osken_controller.ofp_event.ofp_msg_to_ev(msg)
        self.ofp_brick.send_event_to_observers(ev, self.state)
        for handler in self.ofp_brick.get_handlers(ev):
            if self.state in handler.callers[ev.__class__].dispatchers:
                handler(ev)


def _connection_factory(sock, address) -> None:
    """os-ken's datapath_connection_factory, creating a FastDatapath."""
    with contextlib.closing(FastDatapath(sock, address)) as datapath:
        try:
            datapath.serve()
        except Exception:
            LOG.exception("error in the connection of datapath %s from %s",
                          "%016x" % datapath.id if datapath.id is not None else None, address)
            raise


def install(hook: PacketInHook) -> None:
    """Make os-ken serve every switch connection with a FastDatapath that offers packet-ins
    to ``hook``. Call before os-ken starts listening."""
    FastDatapath.packet_in_hook = staticmethod(hook)
    osken_controller.datapath_connection_factory = _connection_factory
