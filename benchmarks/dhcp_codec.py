#!/usr/bin/env python3
"""Micro-benchmark: DISCOVER -> OFFER handled per second, sdn.dhcp codec vs Scapy parse+build.

    .venv/bin/python benchmarks/dhcp_codec.py [--iterations 20000] [--scapy-iterations 2000]

Not a test. The Scapy side does what a Scapy-based responder must do per packet: dissect the
request and build the OFFER as Ether/IP/UDP/BOOTP/DHCP, serialised with checksums.

sdn is measured twice: "repeat" is a client asking again with a new xid (reply template of its
binding, as for every retry, renewal and perfdhcp's reused MACs), "new" a request the responder
has no template for (full parse + decision + encode + keeping the template; BOOTP hops cycles so
none repeats), "first" the same on a fresh responder (plus the binding's constants).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scapy.layers.dhcp import BOOTP, DHCP  # noqa: E402
from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402

from sdn.dhcp import DhcpBinding, DhcpResponder  # noqa: E402
from sdn.view import NetworkView  # noqa: E402

MAC = "fa:16:3e:12:34:56"
NET = NetworkView(id=1, label="bench", cidr="10.0.0.0/24", netmask="255.255.255.0",
                  gateway="10.0.0.1", broadcast="10.0.0.255", dns=("8.8.8.8", "8.8.4.4"),
                  lease_time=120, mtu=1450)
BINDING = DhcpBinding(mac=MAC, address="10.0.0.5", hostname="vm-1", network=NET)


def request(mtype: str, options=()) -> bytes:
    return bytes(Ether(src=MAC, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
                 / UDP(sport=68, dport=67)
                 / BOOTP(chaddr=bytes.fromhex(MAC.replace(":", "")), xid=0x1234)
                 / DHCP(options=[("message-type", mtype), ("param_req_list", [1, 3, 6, 12, 15, 26, 28])]
                        + list(options) + ["end"]))


def scapy_offer(frame: bytes) -> bytes:
    req = Ether(frame)
    b = req[BOOTP]
    opts = {o[0]: o[1] for o in req[DHCP].options if isinstance(o, tuple)}
    assert opts["message-type"] == 1
    reply = (Ether(src=NET.gateway_mac, dst=req.src) / IP(src=NET.gateway, dst=BINDING.address, ttl=64)
             / UDP(sport=67, dport=68)
             / BOOTP(op=2, xid=b.xid, flags=b.flags, yiaddr=BINDING.address, chaddr=b.chaddr)
             / DHCP(options=[("message-type", "offer"), ("server_id", NET.gateway),
                             ("lease_time", 120), ("renewal_time", 60), ("rebinding_time", 105),
                             ("subnet_mask", NET.netmask), ("router", NET.gateway),
                             ("name_server", *NET.dns), ("domain", NET.domain),
                             ("hostname", BINDING.hostname), ("interface-mtu", 1450),
                             ("broadcast_address", NET.broadcast), "end"]))
    return bytes(reply)


def with_xids(frame: bytes, n: int) -> list[bytes]:
    """``frame`` with n different xids (BOOTP xid at bytes 46..50 of an untagged frame)."""
    return [frame[:46] + (0x10000 + i).to_bytes(4, "big") + frame[50:] for i in range(n)]


def with_hops(frame: bytes, n: int) -> list[bytes]:
    """``frame`` with n xids and hops cycling 0..255 (hops is part of the template key)."""
    return [f[:45] + bytes((i % 256,)) + f[46:] for i, f in enumerate(with_xids(frame, n))]


def per_second(fn, frames: list[bytes]) -> float:
    t0 = time.perf_counter()
    for frame in frames:
        fn(frame)
    return len(frames) / (time.perf_counter() - t0)


def rate(fn, frame: bytes, n: int) -> float:
    fn(frame)  # warm caches
    t0 = time.perf_counter()
    for _ in range(n):
        fn(frame)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=20000)
    ap.add_argument("--scapy-iterations", type=int, default=2000)
    args = ap.parse_args()
    discover = request("discover")
    selecting = request("request", [("requested_addr", "10.0.0.5"), ("server_id", "10.0.0.1")])
    responder = DhcpResponder()
    assert responder.handle(discover, BINDING, 0.0).reason.startswith("OFFER")
    assert responder.handle(selecting, BINDING, 0.0).reason.startswith("ACK")

    n = args.iterations
    ours = per_second(lambda f: responder.handle(f, BINDING, 0.0), with_xids(discover, n))
    ours_ack = per_second(lambda f: responder.handle(f, BINDING, 0.0), with_xids(selecting, n))
    new = per_second(lambda f: responder.handle(f, BINDING, 0.0), with_hops(discover, n))
    new_ack = per_second(lambda f: responder.handle(f, BINDING, 0.0), with_hops(selecting, n))
    first = per_second(lambda f: DhcpResponder().handle(f, BINDING, 0.0), with_xids(discover, n))
    first_ack = per_second(lambda f: DhcpResponder().handle(f, BINDING, 0.0),
                           with_xids(selecting, n))
    theirs = rate(scapy_offer, discover, args.scapy_iterations)
    print(f"sdn.dhcp  DISCOVER->OFFER repeat: {ours:10.0f}/s  ({1e6 / ours:7.1f} us/packet, "
          f"{n} iterations)")
    print(f"sdn.dhcp  REQUEST->ACK    repeat: {ours_ack:10.0f}/s  ({1e6 / ours_ack:7.1f} us/packet)")
    print(f"sdn.dhcp  DISCOVER->OFFER new:    {new:10.0f}/s  ({1e6 / new:7.1f} us/packet)")
    print(f"sdn.dhcp  REQUEST->ACK    new:    {new_ack:10.0f}/s  ({1e6 / new_ack:7.1f} us/packet)")
    print(f"sdn.dhcp  DISCOVER->OFFER first:  {first:10.0f}/s  ({1e6 / first:7.1f} us/packet)")
    print(f"sdn.dhcp  REQUEST->ACK    first:  {first_ack:10.0f}/s  ({1e6 / first_ack:7.1f} us/packet)")
    print(f"scapy     DISCOVER->OFFER:        {theirs:10.0f}/s  ({1e6 / theirs:7.1f} us/packet, "
          f"{args.scapy_iterations} iterations)")
    print(f"ratio sdn.dhcp / scapy (first):   {first / theirs:10.1f}x")
    print(f"full DORA (2 handled packets) with sdn.dhcp: {1 / (1 / ours + 1 / ours_ack):.0f}/s "
          f"repeat, {1 / (1 / new + 1 / new_ack):.0f}/s new, {1 / (1 / first + 1 / first_ack):.0f}/s first")


if __name__ == "__main__":
    main()
