"""The router's external gateway: find its MAC by ARP from the public port (and keep it fresh).

Until the MAC is known nothing is routed outside (``RouterSettings.external_gateway_mac`` is
None); the answer comes back as a packet-in of the router's ARP punt (feature ROUTER).

IPv6 the same way with neighbour discovery (RFC 4861 §7.2): a neighbour solicitation for
``external_gateway_v6`` from ``public_ip_v6``, its advertisement punted back. The router's
own ``public_ip_v6`` is announced the same way: solicitations for it are punted and answered
here (``sdn.dhcp.ra.neighbor_advertisement``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Callable, Iterable

from sdn.apps import ofmsgs
from sdn.dhcp import ra
from sdn.flows.context import RouterSettings
from sdn.view import NetworkView

LOG = logging.getLogger("sdn.gateway")

ARP_RETRY = 2.0           # seconds between ARPs for the external gateway until it answers
ARP_REFRESH = 60.0        # ... and between refreshes once known


def arp_request(src_mac: str, src_ip: str, target_ip: str) -> bytes:
    """Broadcast ARP who-has ``target_ip`` tell ``src_ip`` (RFC 826), as an Ethernet frame."""
    mac = bytes.fromhex(src_mac.replace(":", ""))
    return (b"\xff" * 6 + mac + b"\x08\x06" + b"\x00\x01\x08\x00\x06\x04\x00\x01" + mac
            + ipaddress.IPv4Address(src_ip).packed + b"\x00" * 6
            + ipaddress.IPv4Address(target_ip).packed)


def parse_arp_reply(frame: bytes) -> tuple[str, str] | None:
    """(sender MAC, sender IP) of an untagged Ethernet ARP reply; None for anything else."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x06" or frame[14:22] != \
            b"\x00\x01\x08\x00\x06\x04\x00\x02":
        return None
    return (":".join(f"{b:02x}" for b in frame[22:28]), str(ipaddress.IPv4Address(frame[28:32])))


def neighbor_solicitation(src_mac: str, src_ip: str, target_ip: str) -> bytes:
    """Multicast neighbour solicitation for ``target_ip`` from ``src_ip``/``src_mac`` with a
    source link-layer address option (RFC 4861 §4.3), as an Ethernet frame."""
    target = ipaddress.IPv6Address(target_ip).packed
    dst = ra.solicited_node(target)
    mac = bytes.fromhex(src_mac.replace(":", ""))
    message = (bytes((ra.NEIGHBOR_SOLICITATION, 0, 0, 0)) + bytes(4) + target
               + bytes((ra.OPT_SOURCE_LLADDR, 1)) + mac)
    return ra.ipv6_frame(eth_dst=ra.multicast_mac(dst), eth_src=mac,
                         src=ipaddress.IPv6Address(src_ip).packed, dst=dst,
                         next_header=ra.IPPROTO_ICMPV6, message=message, checksum_at=2)


def parse_neighbor_advertisement(frame: bytes) -> tuple[str, str] | None:
    """(target link-layer address, target address) of a neighbour advertisement carrying a
    target link-layer option (RFC 4861 §4.4); None for anything else."""
    try:
        packet = ra.parse_ipv6(frame)
        if (packet is None or packet.next_header != ra.IPPROTO_ICMPV6
                or len(packet.payload) < 24 or packet.payload[0] != ra.NEIGHBOR_ADVERTISEMENT):
            return None
        message, i = packet.payload, 24
        while i + 8 <= len(message) and message[i + 1]:
            if message[i] == ra.OPT_TARGET_LLADDR:
                return (message[i + 2:i + 8].hex(":"),
                        str(ipaddress.IPv6Address(message[8:24])))
            i += message[i + 1] * 8
    except Exception:   # any bytes in, never an exception out
        return None
    return None


class GatewayLearner:
    """Learns the external gateway's MAC for ``base`` (configured settings).

    ``public_ports()`` yields (datapath, public ofport) pairs to ARP from; ``changed()`` is
    called when the MAC is learned or changes (the flows must be recompiled).
    """

    def __init__(self, base: RouterSettings | None,
                 public_ports: Callable[[], Iterable[tuple[object, int]]],
                 changed: Callable[[], None]):
        self.base = base
        self.mac: str | None = None
        self.mac_v6: str | None = None
        self._public_ports = public_ports
        self._changed = changed
        self._last_arp = float("-inf")
        self._last_ns = float("-inf")
        self.public_v6 = base.public_address_v6 if base is not None else None
        self._public_net: NetworkView | None = None

    @property
    def needed(self) -> bool:
        b = self.base
        return b is not None and bool(b.external_gateway) and not b.external_gateway_mac

    @property
    def needed_v6(self) -> bool:
        b = self.base
        return (b is not None and bool(self.public_v6) and bool(b.external_gateway_v6)
                and not b.external_gateway_v6_mac)

    def settings(self) -> RouterSettings | None:
        """Router settings with the external gateways' MACs (configured, else learned)."""
        learned = {}
        if self.needed and self.mac:
            learned["external_gateway_mac"] = self.mac
        if self.needed_v6 and self.mac_v6:
            learned["external_gateway_v6_mac"] = self.mac_v6
        return dataclasses.replace(self.base, **learned) if learned else self.base

    def probe(self, now: float) -> None:
        """ARP (and ND) from every public port, until the gateway answers, then now and then."""
        self._probe_v6(now)
        if not self.needed:
            return
        if now - self._last_arp < (ARP_REFRESH if self.mac else ARP_RETRY):
            return
        self._last_arp = now
        b = self.base
        frame = arp_request(b.mac, b.routing_source_ip, b.external_gateway)
        for dp, port in self._public_ports():
            # xid 0, like DHCP's packet-outs: an error it provokes is never taken for a sync's
            dp.send(ofmsgs.packet_out_bytes(port, frame))

    def _probe_v6(self, now: float) -> None:
        if not self.needed_v6:
            return
        if now - self._last_ns < (ARP_REFRESH if self.mac_v6 else ARP_RETRY):
            return
        self._last_ns = now
        frame = neighbor_solicitation(self.base.mac, self.public_v6, self.base.external_gateway_v6)
        for dp, port in self._public_ports():
            dp.send(ofmsgs.packet_out_bytes(port, frame))

    def _public_side(self) -> NetworkView:
        """The router's public side as the ND codec's network: its gateway address is
        ``public_ip_v6`` and its gateway MAC the router's (``0a:58:`` + routing_source_ip)."""
        if self._public_net is None:
            b = self.base
            self._public_net = NetworkView(0, "public", f"{b.routing_source_ip}/32",
                                           "255.255.255.255", b.routing_source_ip,
                                           b.routing_source_ip, cidr_v6=b.public_ip_v6,
                                           gateway_v6=self.public_v6)
        return self._public_net

    def on_packet_in(self, dp, in_port, frame: bytes) -> None:
        if self.public_v6 and frame[12:14] == b"\x86\xdd":
            self._on_nd(dp, in_port, frame)
            return
        reply = parse_arp_reply(frame)
        if not reply or not self.needed or reply[1] != self.base.external_gateway:
            return
        if reply[0] != self.mac:
            LOG.info("external gateway %s is at %s", reply[1], reply[0])
            self.mac = reply[0]
            self._changed()

    def _on_nd(self, dp, in_port, frame: bytes) -> None:
        """A solicitation for the router's public address (answered), or the external
        gateway's advertisement (its MAC learned)."""
        answer = ra.neighbor_advertisement(frame, self._public_side())
        if answer is not None:
            if in_port is not None:
                dp.send(ofmsgs.packet_out_bytes(in_port, answer))
            return
        advert = parse_neighbor_advertisement(frame)
        if not advert or not self.needed_v6:
            return
        mac, target = advert
        if ipaddress.IPv6Address(target) != ipaddress.IPv6Address(self.base.external_gateway_v6):
            return
        if mac != self.mac_v6:
            LOG.info("external IPv6 gateway %s is at %s", target, mac)
            self.mac_v6 = mac
            self._changed()
