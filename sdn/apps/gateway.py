"""The router's external gateway: find its MAC by ARP from the public port (and keep it fresh).

Until the MAC is known nothing is routed outside (``RouterSettings.external_gateway_mac`` is
None); the answer comes back as a packet-in of the router's ARP punt (feature ROUTER).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Callable, Iterable

from sdn.apps import ofmsgs
from sdn.flows.context import RouterSettings

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
        self._public_ports = public_ports
        self._changed = changed
        self._last_arp = float("-inf")

    @property
    def needed(self) -> bool:
        b = self.base
        return b is not None and bool(b.external_gateway) and not b.external_gateway_mac

    def settings(self) -> RouterSettings | None:
        """Router settings with the external gateway MAC (configured, else learned)."""
        if not self.needed or not self.mac:
            return self.base
        return dataclasses.replace(self.base, external_gateway_mac=self.mac)

    def probe(self, now: float) -> None:
        """ARP from every public port, until the gateway answers, then now and then."""
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

    def on_packet_in(self, _dp, _in_port, frame: bytes) -> None:
        reply = parse_arp_reply(frame)
        if not reply or not self.needed or reply[1] != self.base.external_gateway:
            return
        if reply[0] != self.mac:
            LOG.info("external gateway %s is at %s", reply[1], reply[0])
            self.mac = reply[0]
            self._changed()
