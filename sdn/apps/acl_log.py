"""Security group drops in the controller's log (``[ovs] acl_log_rate_limit``).

The drop tables (``egress_acl_drop``, ``ingress_acl_drop``) count every refused packet; with
logging on they also send a metered sample to the controller, and this handler writes one
line per sample: which port it came in on (the VIF's instance when it is one), and the
packet's addresses, protocol and ports. Any bytes in, a line or nothing out: never an error.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from collections.abc import Callable

LOG = logging.getLogger("sdn.acl")

_PROTOS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}


def describe(frame: bytes) -> str | None:
    """``tcp 10.0.0.5:40000 -> 10.0.0.6:22`` (``icmp 10.0.0.5 -> 10.0.0.6 type 8`` ...) for an
    untagged IPv4/IPv6 Ethernet frame; None for anything else or a truncated frame."""
    if len(frame) < 14:
        return None
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype == 0x0800 and len(frame) >= 34:
        ihl = (frame[14] & 0x0F) * 4
        proto, src, dst = frame[23], frame[26:30], frame[30:34]
        l4 = 14 + ihl
    elif ethertype == 0x86DD and len(frame) >= 54:
        proto, src, dst = frame[20], frame[22:38], frame[38:54]
        l4 = 54
    else:
        return None
    src_ip, dst_ip = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    name = _PROTOS.get(proto, f"proto {proto}")
    if proto in (6, 17, 132) and len(frame) >= l4 + 4:
        sport, dport = struct.unpack_from("!HH", frame, l4)
        return f"{name} {src_ip}:{sport} -> {dst_ip}:{dport}"
    if proto in (1, 58) and len(frame) >= l4 + 2:
        return f"{name} {src_ip} -> {dst_ip} type {frame[l4]} code {frame[l4 + 1]}"
    return f"{name} {src_ip} -> {dst_ip}"


class AclLog:
    """Packet-in handler of feature SECURITY_GROUPS; ``port_owner(dp, in_port)`` names the
    instance behind a port (or None)."""

    def __init__(self, port_owner: Callable[[object, int | None], str | None]):
        self.port_owner = port_owner
        self.logged = 0

    def on_packet_in(self, dp, in_port: int | None, frame: bytes) -> None:
        what = describe(frame)
        if what is None:
            return
        owner = self.port_owner(dp, in_port)
        via = f"port {in_port}" + (f" ({owner})" if owner else "")
        self.logged += 1
        LOG.info("security groups dropped %s, in on datapath %016x %s", what,
                 getattr(dp, "id", 0) or 0, via)
