#!/usr/bin/env python3
"""Micro-benchmark: the IPv6 codec (sdn.dhcp.ra, sdn.dhcp.dhcpv6), microseconds per packet.

    .venv/bin/python benchmarks/ipv6_codec.py [--iterations 20000]

Not a test. Each line is one decision as the controller's packet-in path makes it: decode the
frame, decide, encode the whole reply frame with its checksum (no caching between calls).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scapy.layers.dhcp6 import (  # noqa: E402
    DHCP6_InfoRequest,
    DHCP6_Request,
    DHCP6_Solicit,
    DHCP6OptClientId,
    DHCP6OptElapsedTime,
    DHCP6OptIA_NA,
    DHCP6OptIAAddress,
    DHCP6OptOptReq,
    DHCP6OptServerId,
    DUID_LL,
    DUID_LLT,
)
from scapy.layers.inet import UDP  # noqa: E402
from scapy.layers.inet6 import ICMPv6ND_NS, ICMPv6ND_RS, ICMPv6NDOptSrcLLAddr, IPv6  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402

from sdn.dhcp import dhcpv6, ra  # noqa: E402
from sdn.ipv6 import link_local, to_global  # noqa: E402
from sdn.view import NetworkView, VifView  # noqa: E402

MAC = "fa:16:3e:12:34:56"
LLA = link_local(MAC)
NET = NetworkView(id=1, label="bench", cidr="10.0.0.0/24", netmask="255.255.255.0",
                  gateway="10.0.0.1", broadcast="10.0.0.255", lease_time=120, mtu=1450,
                  cidr_v6="fd00:0:0:1::/64", gateway_v6="fd00:0:0:1::1",
                  ipv6_ra_mode="dhcpv6-stateful", ipv6_address_mode="dhcpv6-stateful",
                  dns_v6=("fd00::53",))
ADDRESS = to_global(NET.cidr_v6, MAC, "p1")
VIF = VifView(uuid="u", mac=MAC, network_id=1, instance="vm-1", hostname="vm-1",
              addresses_v6=(ADDRESS,))


def frames() -> dict[str, bytes]:
    eth = Ether(src=MAC, dst="33:33:00:01:00:02")
    dhcp = eth / IPv6(src=LLA, dst="ff02::1:2") / UDP(sport=546, dport=547)
    client_id = DHCP6OptClientId(duid=DUID_LLT(lladdr=MAC))
    oro = DHCP6OptOptReq(reqopts=[23, 24])
    return {
        "RS -> RA": bytes(eth / IPv6(src=LLA, dst="ff02::2", hlim=255) / ICMPv6ND_RS()
                          / ICMPv6NDOptSrcLLAddr(lladdr=MAC)),
        "NS -> NA": bytes(eth / IPv6(src=LLA, dst="ff02::1:ff00:1", hlim=255)
                          / ICMPv6ND_NS(tgt="fd00:0:0:1::1") / ICMPv6NDOptSrcLLAddr(lladdr=MAC)),
        "SOLICIT -> ADVERTISE": bytes(dhcp / DHCP6_Solicit(trid=1) / DHCP6OptElapsedTime()
                                      / client_id / oro / DHCP6OptIA_NA(iaid=1)),
        "REQUEST -> REPLY": bytes(
            dhcp / DHCP6_Request(trid=2) / DHCP6OptElapsedTime() / client_id
            / DHCP6OptServerId(duid=DUID_LL(lladdr=NET.gateway_mac)) / oro
            / DHCP6OptIA_NA(iaid=1, ianaopts=[DHCP6OptIAAddress(addr=ADDRESS)])),
        "INFORMATION-REQUEST -> REPLY": bytes(dhcp / DHCP6_InfoRequest(trid=3)
                                              / DHCP6OptElapsedTime() / client_id / oro),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20000)
    n = parser.parse_args().iterations
    cases = [("periodic RA (build)", lambda f: ra.router_advertisement(NET), b"")]
    f = frames()
    cases += [(name, lambda f: ra.answer(f, NET), f[name]) for name in ("RS -> RA",)]
    cases += [("NS -> NA", lambda f: ra.neighbor_advertisement(f, NET), f["NS -> NA"])]
    cases += [(name, lambda f: dhcpv6.handle(f, NET, VIF), f[name])
              for name in ("SOLICIT -> ADVERTISE", "REQUEST -> REPLY",
                           "INFORMATION-REQUEST -> REPLY")]
    for name, fn, frame in cases:
        assert fn(frame) is not None, name
        start = time.perf_counter()
        for _ in range(n):
            fn(frame)
        took = time.perf_counter() - start
        print(f"{name:32s} {took / n * 1e6:8.1f} us/packet  {n / took:10.0f} packets/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
