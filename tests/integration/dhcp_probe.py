"""Measure when DHCP answers: send a DHCPREQUEST (INIT-REBOOT, RFC 2131 §4.3.2: broadcast from
0.0.0.0 with the requested address in option 50) every ``--interval`` seconds on ``--iface``
until a DHCPACK with our xid comes back, then print one JSON line:
``{"ack_at": <Unix seconds>, "requests": N, "address": "..."}`` (or ``"ack_at": null`` after
``--timeout``).

Run inside the client's namespace (``ip netns exec NS python dhcp_probe.py ...``): a raw
AF_PACKET socket, standard library only, so the time measured is the network's and the
controller's, not a DHCP client's retransmission backoff (dhclient waits seconds between
tries). Used by tests/integration/test_ha.py and benchmarks/bench_failover.py.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import struct
import sys
import time

ETH_P_IP = 0x0800
MAGIC = b"\x63\x82\x53\x63"


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def request_frame(mac: bytes, xid: int, address: str) -> bytes:
    """Ethernet broadcast frame: IPv4 0.0.0.0:68 -> 255.255.255.255:67, BOOTREQUEST with
    DHCP message type 3 (REQUEST) and option 50 = ``address``."""
    options = (MAGIC + bytes([53, 1, 3]) + bytes([50, 4]) + socket.inet_aton(address)
               + bytes([55, 3, 1, 3, 6, 255]))
    bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000,
                        b"\0" * 4, b"\0" * 4, b"\0" * 4, b"\0" * 4, mac.ljust(16, b"\0"),
                        b"\0" * 64, b"\0" * 128) + options
    bootp = bootp.ljust(300, b"\0")
    udp = struct.pack("!HHHH", 68, 67, 8 + len(bootp), 0) + bootp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     b"\0" * 4, b"\xff" * 4)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return b"\xff" * 6 + mac + struct.pack("!H", ETH_P_IP) + ip + udp


def ack_for(frame: bytes, xid: int) -> str | None:
    """The yiaddr of ``frame`` if it is a DHCPACK for ``xid``, else None (any bytes in)."""
    try:
        if len(frame) < 14 + 20 + 8 + 240 or struct.unpack("!H", frame[12:14])[0] != ETH_P_IP:
            return None
        ihl = (frame[14] & 0x0F) * 4
        if frame[14 + 9] != 17:
            return None
        udp = 14 + ihl
        if struct.unpack("!H", frame[udp + 2:udp + 4])[0] != 68:
            return None
        bootp = udp + 8
        if frame[bootp] != 2 or struct.unpack("!I", frame[bootp + 4:bootp + 8])[0] != xid:
            return None
        opts = frame[bootp + 240:]
        i = 0
        while i < len(opts) and opts[i] != 255:
            if opts[i] == 0:
                i += 1
                continue
            code, length = opts[i], opts[i + 1]
            if code == 53 and opts[i + 2] == 5:
                return socket.inet_ntoa(frame[bootp + 16:bootp + 20])
            i += 2 + length
    except (IndexError, struct.error):
        return None
    return None


def probe(iface: str, address: str, interval: float, timeout: float,
          mac: bytes | None = None) -> dict:
    """``mac``: the client's MAC (default: ``iface``'s own)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    sock.bind((iface, 0))
    mac = mac or sock.getsockname()[4][:6]
    xid = int.from_bytes(os.urandom(4), "big")
    frame = request_frame(mac, xid, address)
    deadline = time.time() + timeout
    requests = 0
    next_send = 0.0
    while time.time() < deadline:
        now = time.time()
        if now >= next_send:
            sock.send(frame)
            requests += 1
            next_send = now + interval
        ready, _, _ = select.select([sock], [], [], max(0.0, min(next_send, deadline) - time.time()))
        if ready:
            got = ack_for(sock.recv(4096), xid)
            if got is not None:
                return {"ack_at": time.time(), "requests": requests, "address": got}
    return {"ack_at": None, "requests": requests, "address": None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iface", default="eth0")
    ap.add_argument("--address", required=True, help="the address to request (option 50)")
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between requests")
    ap.add_argument("--timeout", type=float, default=20.0)
    args = ap.parse_args(argv)
    print(json.dumps(probe(args.iface, args.address, args.interval, args.timeout)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
