"""Router advertisements and DHCPv6 of the Linux backend: sdn's codec on raw sockets.

The network host is every /64's router (the bridge holds ``gateway_v6`` and ``gateway_lla``,
``sdn.linux.interface``; the kernel answers neighbour solicitations for them and forwards).
What a guest learns from it comes from this module: per VIF tap port (``Ipv6Port``) one
AF_PACKET socket that

* sends the network's router advertisement (``sdn.dhcp.ra.router_advertisement``) to all-nodes
  when the port appears and then every ``ra_interval`` seconds (RFC 4861 §6.2.4),
* answers router solicitations (``sdn.dhcp.ra.answer``: unicast to the soliciting host) and
* answers DHCPv6 (``sdn.dhcp.dhcpv6.handle``: INFORMATION-REQUEST on stateless networks;
  SOLICIT/REQUEST/RENEW/REBIND/CONFIRM/RELEASE/DECLINE with the VIF's derived address on
  stateful ones).

Why sdn's codec rather than radvd per bridge (nova's ``update_ra``) or dnsmasq's RA/DHCPv6:
the guests of both backends then get byte-for-byte the same router advertisements and DHCPv6
replies from one tested encoder (the OpenFlow controller sends the same bytes by packet-out);
no extra daemon, package, config file or SIGHUP per network; and DHCPv6 is bound to the port
as sdn's DHCPv4 responder is (``sdn.dhcp.rawsocket``): a socket on the tap *is* the VIF, so a
guest can only ever obtain its own derived address, whatever DUID or MAC it claims, which
neither radvd nor dnsmasq on the bridge could tell. Frames go out of the tap only, to that
guest (an RA per port rather than one on the bridge: uplinks get none, as on OVS).

A kernel BPF filter queues only what is answered: untagged IPv6 whose next header is ICMPv6
type 133 (router solicitation) or UDP to port 547, without extension headers; frames this host
sends are skipped. Answers are rate limited per port (``ANSWERS_PER_SECOND``, a token bucket):
a guest flooding solicitations costs its own answers, not the thread. Decoding is total (the
codec never raises); a failing socket (ENXIO when the tap goes, ENETDOWN) is closed and
reopened while its port is wanted, never ending the thread.
"""

from __future__ import annotations

import logging
import selectors
import time
from collections.abc import Callable, Mapping

from sdn.dhcp import dhcpv6, ra
from sdn.dhcp.rawsocket import PACKET_OUTGOING, open_socket

LOG = logging.getLogger("sdn.linux.ipv6_router")

#: answers (RAs to solicitations, DHCPv6 replies) per second per port, and the burst
ANSWERS_PER_SECOND = 10.0
ANSWER_BURST = 20.0
BATCH_MAX = 64

# Classic BPF: untagged IPv6 with next header ICMPv6 type 133, or UDP destination port 547.
_SOLICITATION_FILTER = [
    (0x28, 0, 0, 12),           # 0  ldh [12]          ethertype
    (0x15, 0, 8, 0x86DD),       # 1  jne IPv6 -> drop
    (0x30, 0, 0, 20),           # 2  ldb [20]          next header
    (0x15, 0, 2, 58),           # 3  jne ICMPv6 -> 6
    (0x30, 0, 0, 54),           # 4  ldb [54]          ICMPv6 type
    (0x15, 3, 4, 133),          # 5  RS -> accept, else drop
    (0x15, 0, 3, 17),           # 6  jne UDP -> drop
    (0x28, 0, 0, 56),           # 7  ldh [56]          UDP destination port
    (0x15, 0, 1, dhcpv6.SERVER_PORT),  # 8  jne 547 -> drop
    (0x06, 0, 0, 0x40000),      # 9  accept
    (0x06, 0, 0, 0),            # 10 drop
]


def respond(frame: bytes, port) -> bytes | None:
    """The answer to one frame received on ``port`` (an ``Ipv6Port``: network and VIF): a
    router advertisement to a router solicitation, a DHCPv6 reply to a client message, or
    None. Pure and total (the codec never raises)."""
    if len(frame) > 20 and frame[20] == ra.IPPROTO_ICMPV6:
        return ra.answer(frame, port.network)
    reply, reason = dhcpv6.answer(frame, port.network, port.vif)
    LOG.debug("DHCPv6 on %s: %s", port.vif.port_name, reason)
    return reply


class _Served:
    """One tap: its socket, binding, next unsolicited RA and answer budget."""

    __slots__ = ("name", "sock", "filtered", "port", "next_ra", "tokens", "stamp")

    def __init__(self, name: str, sock, filtered: bool, port, now: float):
        self.name, self.sock, self.filtered, self.port = name, sock, filtered, port
        self.next_ra = now              # an RA as soon as the port is served
        self.tokens, self.stamp = ANSWER_BURST, now

    def take(self, now: float) -> bool:
        """Spend one answer from the bucket; False when the port is over its rate."""
        self.tokens = min(ANSWER_BURST, self.tokens + (now - self.stamp) * ANSWERS_PER_SECOND)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Ipv6RouterServer:
    """RAs and DHCPv6 on every tap of ``ports`` ({tap name: Ipv6Port}). ``sockets`` ({name:
    socket}) replaces opening them (tests; not filtered in the kernel, so frames are checked
    here). ``clock`` is monotonic seconds.

    Counters: ``advertised`` (unsolicited RAs), ``answered``, ``limited`` (over the rate),
    ``send_errors``, ``recv_errors``."""

    RETRY_S = 1.0

    def __init__(self, ports: Mapping[str, object], sockets: Mapping[str, object] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.served: dict[str, _Served] = {}
        # epoll, not select(): a host may serve more VIF ports than select's 1,024 descriptors
        self._selector = selectors.DefaultSelector()
        self._given = dict(sockets or {})
        self._wanted = dict(ports)
        self._changed = True
        self._retry_at = 0.0
        self.advertised = self.answered = self.limited = 0
        self.send_errors = self.recv_errors = 0
        self._sync()

    def set_ports(self, ports: Mapping[str, object]) -> None:
        """Serve ``ports`` from now on (thread-safe: the loop applies it before its next wait;
        a port whose network changed advertises the new contents at its next RA)."""
        self._wanted = dict(ports)
        self._changed = True

    def _open(self, name: str):
        if name in self._given:
            return self._given[name], False
        return open_socket(name, _SOLICITATION_FILTER)

    def _sync(self) -> None:
        now = self.clock()
        if not self._changed and now < self._retry_at:
            return
        self._changed = False
        wanted = self._wanted
        for name in [n for n in self.served if n not in wanted]:
            self._close(self.served.pop(name))
        missing = False
        for name, port in wanted.items():
            served = self.served.get(name)
            if served is None:
                try:
                    sock, filtered = self._open(name)
                except OSError as err:
                    LOG.debug("IPv6 socket on %s not open: %s", name, err)
                    missing = True
                    continue
                served = self.served[name] = _Served(name, sock, filtered, port, now)
                self._selector.register(sock, selectors.EVENT_READ, served)
            served.port = port
        self._retry_at = now + self.RETRY_S if missing else float("inf")

    def _close(self, served: _Served) -> None:
        try:
            self._selector.unregister(served.sock)
        except (KeyError, ValueError):
            pass
        served.sock.close()

    def _drop(self, served: _Served, err: OSError) -> None:
        LOG.warning("IPv6 socket on %s failed (%s); reopening while it is wanted", served.name, err)
        self.served.pop(served.name, None)
        self._close(served)
        self._retry_at = min(self._retry_at, self.clock() + self.RETRY_S)

    def _send(self, served: _Served, frame: bytes) -> bool:
        try:
            served.sock.send(frame)
            return True
        except OSError as err:
            self.send_errors += 1
            LOG.warning("IPv6 frame of %d bytes not sent on %s: %s", len(frame), served.name, err)
            return False

    def _advertise(self, now: float) -> None:
        for served in list(self.served.values()):
            if now < served.next_ra:
                continue
            net = served.port.network
            served.next_ra = now + net.ra_interval
            try:
                frame = ra.router_advertisement(net)
            except ValueError as err:        # state without a usable prefix: nothing to send
                LOG.warning("no router advertisement on %s: %s", served.name, err)
                continue
            if self._send(served, frame):
                self.advertised += 1

    def _read(self, served: _Served) -> list[bytes]:
        frames: list[bytes] = []
        try:
            while len(frames) < BATCH_MAX:
                try:
                    data, addr = served.sock.recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    break
                if served.filtered or addr[2] != PACKET_OUTGOING:
                    frames.append(data)
        except OSError as err:
            self.recv_errors += 1
            self._drop(served, err)
        return frames

    def serve_once(self, timeout: float = 0.5) -> int:
        """Send the RAs that are due, wait up to ``timeout`` seconds (less when an RA falls
        due sooner) for solicitations and DHCPv6, answer what is queued; returns the number of
        frames read."""
        self._sync()
        now = self.clock()
        self._advertise(now)
        if not self.served:
            time.sleep(timeout)
            return 0
        timeout = max(0.0, min([timeout] + [s.next_ra - now for s in self.served.values()]))
        try:
            ready = [key.data for key, _ in self._selector.select(timeout)]
        except OSError as err:              # EINTR aside, a broken selector: rebuild it
            LOG.warning("IPv6 selector failed (%s); reopening every socket", err)
            for served in list(self.served.values()):
                self._drop(served, err)
            self._selector.close()
            self._selector = selectors.DefaultSelector()
            self._changed = True
            return 0
        total = 0
        for s in ready:
            if self.served.get(s.name) is not s:
                continue
            frames = self._read(s)
            total += len(frames)
            for frame in frames:
                reply = respond(frame, s.port)
                if reply is None:
                    continue
                if not s.take(self.clock()):
                    self.limited += 1
                    continue
                if self._send(s, reply):
                    self.answered += 1
        return total

    def serve_forever(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        while not should_stop():
            self.serve_once()

    def close(self) -> None:
        for served in list(self.served.values()):
            self._close(served)
        self.served.clear()
        self._selector.close()
