"""``make fuzz``: mutated DHCP frames through every path a guest's bytes reach (issue 10).

    python benchmarks/fuzz_dhcp.py [--frames N] [--seed S] [--workers W]

Each frame goes through
  * the controller's own packet-in handler, ``sdn.apps.dhcp_punt.DhcpPunt.on_packet_in`` (no
    os-ken: a stand-in datapath, the lease committer capturing what it is given): from a VIF
    port (binding by port) and from a relay port (giaddr picks the network, chaddr the VIF),
    down to the packet-out bytes;
  * the responder alone (``DhcpResponder.handle``) with another binding and with none;
  * the raw-socket server's ``BatchHandler`` with a per-port binding.
Counted: escapes (an exception out of any of them), hangs (a frame taking > 1 s), oversize
replies (IP datagram above the MTU or the client's maximum message size, RFC 2131 §2) and lease
corruption (a lease event for an address or MAC that is not the binding's, or for a frame whose
chaddr is not the binding's MAC). Prints one summary line; exits 1 if any count is not zero.

Mutations (fixed seed, so a run is reproducible): bit flips, byte overwrites of header fields
(Ethernet type, IP version/IHL/lengths/protocol/fragment, UDP port/length, BOOTP op/htype/hlen,
magic cookie, option codes/lengths), truncation, extension with random bytes up to 65,535,
option 82 / client-id stuffing to MTU-sized and 65,535-byte requests (lengths fixed up so
they decode), random junk, and valid seeds as they are.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import struct
import sys
import time
import traceback

from sdn.apps import ofmsgs
from sdn.apps.dhcp_punt import DhcpPunt, LeaseCommitter
from sdn.dhcp import packet as p
from sdn.dhcp.rawsocket import BatchHandler
from sdn.dhcp.relay import RelayBindings, request_fields, with_tag
from sdn.flows.context import Binding
from sdn.dhcp.server import DhcpBinding, DhcpResponder, mac_bytes
from sdn.view import NetworkView, StateView, VifView

HANG_S = 1.0
NET = NetworkView(id=1, label="fuzz", cidr="10.0.0.0/24", netmask="255.255.255.0",
                  gateway="10.0.0.1", broadcast="10.0.0.255", dns=("8.8.8.8", "8.8.4.4"),
                  domain="novalocal", lease_time=120, mtu=1500)
VIFS = (VifView(uuid="0a000000-0000-4000-8000-000000000005", mac="fa:16:3e:00:00:05", network_id=1,
                instance="a", hostname="vm-a", addresses=("10.0.0.5",)),
        VifView(uuid="0b000000-0000-4000-8000-000000000006", mac="fa:16:3e:00:00:06", network_id=1,
                instance="b", hostname="vm-b", addresses=("10.0.0.6",)))
VIEW = StateView(revision=1, networks={1: NET}, vifs=VIFS)
BINDINGS = [DhcpBinding.for_vif(v, NET) for v in VIFS]
MACS = [mac_bytes(v.mac) for v in VIFS]


def _seed_frames() -> list[bytes]:
    """Valid requests of every type, untagged and 802.1Q, direct and relayed (built with
    sdn's own encoder conventions by hand, so the fuzzer needs no Scapy)."""
    seeds = []
    for mac in MACS + [bytes.fromhex("020000000099")]:
        for mtype, extra in ((p.DISCOVER, b""),
                             (p.REQUEST, p.tlv(p.OPT_SERVER_ID, bytes([10, 0, 0, 1]))
                              + p.tlv(p.OPT_REQUESTED_IP, bytes([10, 0, 0, 5]))),
                             (p.REQUEST, p.tlv(p.OPT_REQUESTED_IP, bytes([10, 0, 0, 6]))),
                             (p.RELEASE, b""), (p.DECLINE, p.tlv(p.OPT_REQUESTED_IP, bytes([10, 0, 0, 5]))),
                             (p.INFORM, p.tlv(p.OPT_PARAM_REQUEST, bytes([1, 3, 6, 121, 15]))),
                             (p.DISCOVER, p.tlv(p.OPT_MAX_MESSAGE_SIZE, struct.pack("!H", 1500))
                              + p.tlv(p.OPT_CLIENT_ID, b"\x01" + mac)
                              + p.tlv(p.OPT_RELAY_AGENT, b"\x01\x04eth0"))):
            for ciaddr in (p.ZERO_IP, bytes([10, 0, 0, 5])):
                for giaddr in (p.ZERO_IP, bytes([10, 0, 0, 9])):
                    opts = bytes((p.OPT_MESSAGE_TYPE, 1, mtype)) + extra + b"\xff"
                    seeds.append(request(mac, ciaddr, giaddr, opts))
    seeds += [with_tag(f, b"\x81\x00\x00\x64") for f in seeds[::3]]
    return seeds


def request(mac: bytes, ciaddr: bytes, giaddr: bytes, options: bytes) -> bytes:
    """An Ethernet/IPv4/UDP BOOTREQUEST with ``options`` (TLVs incl. END) after the cookie."""
    bootp = (struct.pack("!BBBBIHH4s4s4s4s16s", 1, 1, 6, 0, 0x1234, 0, 0, ciaddr, p.ZERO_IP,
                         p.ZERO_IP, giaddr, mac.ljust(16, b"\0"))
             + bytes(192) + p.MAGIC_COOKIE + options)
    bootp += bytes(max(0, 300 - len(bootp)))
    return fix_lengths(b"\xff" * 6 + mac + b"\x08\x00" + struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0, 64, 17, 0, p.ZERO_IP, p.BROADCAST_IP)
        + struct.pack("!HHHH", 68, 67, 0, 0) + bootp)


def fix_lengths(frame: bytes) -> bytes:
    """Set IP total and UDP length to the frame's size (when they fit 16 bits)."""
    off = 18 if frame[12:14] == b"\x81\x00" else 14
    ip_len = len(frame) - off
    if ip_len > 0xFFFF or len(frame) < off + 28:
        return frame
    return (frame[:off + 2] + struct.pack("!H", ip_len) + frame[off + 4:off + 24]
            + struct.pack("!H", ip_len - 20) + frame[off + 26:])


# header fields (offset in an untagged frame, size) worth overwriting
_FIELDS = [(12, 2), (14, 1), (16, 2), (20, 2), (23, 1), (36, 2), (38, 2), (42, 1), (43, 1),
           (44, 1), (54, 4), (58, 4), (66, 4), (70, 6), (278, 4), (282, 1), (283, 1), (284, 1),
           (285, 1), (286, 1), (287, 1)]
_EDGE = [0, 1, 2, 4, 6, 16, 17, 0x43, 0x44, 0x45, 0x7F, 0x80, 0xFE, 0xFF]


def mutate(rng: random.Random, seed: bytes) -> bytes:
    kind = rng.randrange(9)
    f = bytearray(seed)
    if kind == 0:                                   # bit flips
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(f) * 8)
            f[i >> 3] ^= 1 << (i & 7)
        return bytes(f)
    if kind == 1:                                   # field overwrites, edge values
        for _ in range(rng.randint(1, 3)):
            off, size = rng.choice(_FIELDS)
            if off + size <= len(f):
                f[off:off + size] = bytes(rng.choice(_EDGE) for _ in range(size))
        return bytes(f)
    if kind == 2:                                   # truncation
        return bytes(f[:rng.randrange(len(f) + 1)])
    if kind == 3:                                   # extension up to 65,535, lengths fixed or not
        n = rng.choice([1, 100, 1200, 1500 - len(f), 65535 - len(f), rng.randrange(65535 - len(f))])
        g = bytes(f) + rng.randbytes(max(0, n))
        return fix_lengths(g) if rng.random() < 0.5 else g
    if kind in (4, 5):                              # option 82 / client-id stuffing to a size
        code = p.OPT_RELAY_AGENT if kind == 4 else p.OPT_CLIENT_ID
        size = rng.choice([1508, 1514, 1518, 65000, 65500, 65535, rng.randrange(300, 65536)])
        body = bytes(f).rstrip(b"\0")
        if body.endswith(b"\xff"):
            body = body[:-1]
        room = size - len(body) - 1
        if room < 0:
            return bytes(f)
        stuff = bytearray()
        while room - len(stuff) >= 257:
            stuff += bytes((code, 255)) + rng.randbytes(255)
        return fix_lengths(body + bytes(stuff) + b"\xff" + bytes(room - len(stuff)))
    if kind == 6:                                   # option area garbage with right lengths
        start = 282 if f[12:14] == b"\x08\x00" else 286
        g = bytes(f[:start]) + rng.randbytes(rng.randrange(0, 1400))
        return fix_lengths(g)
    if kind == 7:                                   # random junk
        return rng.randbytes(rng.choice([0, 13, 14, 42, 60, 300, 342, 600, 1514]))
    return bytes(f)                                 # valid seed


def ip_len_of(reply: bytes) -> int:
    off = 18 if reply[12:14] == b"\x81\x00" else 14
    return struct.unpack_from("!H", reply, off + 2)[0]


def limit_of(frame: bytes) -> int:
    """Largest reply IP datagram for ``frame``: option 57 (>= 576) capped by the MTU."""
    try:
        raw = p.parse_request(frame).options.get(p.OPT_MAX_MESSAGE_SIZE)
    except p.MalformedFrame:
        return 576
    size = struct.unpack("!H", raw)[0] if raw is not None else 576
    return min(max(size, 576), NET.mtu)


class Counts:
    def __init__(self):
        self.frames = self.escapes = self.hangs = self.oversize = self.corruption = 0
        self.replies = self.events = 0     #: positive control: the paths do answer
        self.examples: list[str] = []

    def bad(self, what: str, frame: bytes, detail: str) -> None:
        setattr(self, what, getattr(self, what) + 1)
        if len(self.examples) < 5:
            self.examples.append(f"{what}: {detail} (frame {len(frame)} bytes {frame[:64].hex()}...)")


def check_decision(c: Counts, frame: bytes, reply, event, binding, fields_chaddr) -> None:
    c.replies += reply is not None
    c.events += event is not None
    if reply is not None and ip_len_of(reply) > limit_of(frame):
        c.bad("oversize", frame, f"reply IP datagram of {ip_len_of(reply)} > {limit_of(frame)}")
    if event is not None and (binding is None or event.address != binding.address
                              or event.mac != binding.mac.lower()
                              or fields_chaddr != mac_bytes(binding.mac)):
        c.bad("corruption", frame, f"event {event} for binding {binding}")


RELAY_PORT = 9


class _Datapath:
    id = 1

    def send(self, _data: bytes) -> None:
        pass


class _Captured(LeaseCommitter):
    """The committer's input, kept instead of written (the ACK a commit would release)."""

    def __init__(self):
        super().__init__(record=lambda events: [None] * len(events), start=False)
        self.items: list = []

    def submit(self, event, send, packet) -> None:
        self.items.append((event, packet))


def _reply_of(packet_out: bytes | None) -> bytes | None:
    return packet_out[ofmsgs.PACKET_OUT_HEADER_LEN:] if packet_out else None


def run(args: tuple[int, int]) -> Counts:
    seed, n = args
    rng = random.Random(seed)
    seeds = _seed_frames()
    c = Counts()
    responder = DhcpResponder()
    relay = RelayBindings(VIEW)
    dp, captured = _Datapath(), _Captured()
    ports = Binding(vifs={1: VIFS[0], 2: VIFS[1]}, trunks=(), relays=(RELAY_PORT,))
    punt = DhcpPunt(lambda: VIEW, lambda _dpid: ports, captured)
    handlers = [BatchHandler({mac: b}, responder) for mac, b in zip(MACS, BINDINGS)]
    for i in range(n):
        frame = mutate(rng, rng.choice(seeds))
        t0 = time.perf_counter()
        try:
            f = request_fields(frame)
            chaddr = f[2] if f is not None else None
            # controller: a VIF port (binding by in_port), then a relay port
            port = i & 1
            for in_port, binding in ((port + 1, BINDINGS[port]),
                                     (RELAY_PORT, relay.lookup(f[1], chaddr) if f else None)):
                captured.items.clear()
                out = punt.on_packet_in(dp, in_port, frame)
                event, held = captured.items[0] if captured.items else (None, None)
                check_decision(c, frame, _reply_of(out or held), event, binding, chaddr)
            # responder alone, without a binding: never an answer
            d = responder.handle(frame, None, t0)
            if d.reply is not None or d.event is not None:
                c.bad("corruption", frame, f"answer without a binding: {d.reason}")
            # raw socket: the batch handler of one tap
            now, events, after = handlers[port].handle([frame], t0)
            for reply in now + [reply for _event, reply in after]:
                check_decision(c, frame, reply, None, BINDINGS[port], chaddr)
            for event in events:
                check_decision(c, frame, None, event, BINDINGS[port], chaddr)
        except Exception:
            c.bad("escapes", frame, traceback.format_exc(limit=3).strip().replace("\n", " | "))
        if time.perf_counter() - t0 > HANG_S:
            c.bad("hangs", frame, f"{time.perf_counter() - t0:.2f} s")
        c.frames += 1
    return c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="fuzz sdn's DHCP paths (issue 10)")
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=10)
    ap.add_argument("--workers", type=int, default=min(2, multiprocessing.cpu_count()))
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    shares = [(a.seed * 1000 + w, a.frames // a.workers + (w < a.frames % a.workers))
              for w in range(a.workers)]
    if a.workers == 1:
        results = [run(shares[0])]
    else:
        with multiprocessing.Pool(a.workers) as pool:
            results = pool.map(run, shares)
    total = Counts()
    for r in results:
        for k in ("frames", "escapes", "hangs", "oversize", "corruption", "replies", "events"):
            setattr(total, k, getattr(total, k) + getattr(r, k))
        total.examples += r.examples
    for line in total.examples[:10]:
        print(line, file=sys.stderr)
    print(f"fuzz_dhcp: frames={total.frames} escapes={total.escapes} hangs={total.hangs} "
          f"oversize={total.oversize} corruption={total.corruption} (replies={total.replies} "
          f"lease_events={total.events}) seed={a.seed} "
          f"workers={a.workers} seconds={time.monotonic() - t0:.0f}")
    bad = total.escapes + total.hangs + total.oversize + total.corruption
    return 1 if bad or total.frames < a.frames else 0


if __name__ == "__main__":
    raise SystemExit(main())
