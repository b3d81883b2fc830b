"""IPv6 services of the OpenFlow backend: router advertisements, the gateway's neighbour
advertisements and DHCPv6, from the controller (OVN's model: no radvd on a switch).

- ``on_nd`` (packet-ins of ``sdn.flows.nd``): a router solicitation gets its network's RA
  (``sdn.dhcp.ra.answer``), a neighbour solicitation for the gateway its NA
  (``sdn.dhcp.ra.neighbor_advertisement``); back out of the port it came in on.
- ``on_dhcpv6`` (packet-ins of ``sdn.flows.dhcpv6``): ``sdn.dhcp.dhcpv6.handle`` for the VIF of
  the ingress port. Derived addresses are not leases: nothing is recorded.
- ``advertise(datapaths, now)``: unsolicited RAs (RFC 4861 §6.2.4) to every VIF port of an IPv6
  network on each datapath, every ``NetworkView.ra_interval`` seconds; a port not seen before
  (newly plugged) gets one at the next call. The controller calls it every second.

Both packet-in handlers run on the switch's receive thread (``sdn.apps.fastdp``) and return
the packet-out bytes; anything unexpected costs that one packet (``PacketInDispatch``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from sdn.apps import ofmsgs
from sdn.dhcp import dhcpv6, ra
from sdn.flows.context import Binding
from sdn.view import NetworkView, StateView, VifView

LOG = logging.getLogger("sdn.ipv6")


class Ipv6Services:
    """``view()`` is the current StateView; ``binding(dpid)`` a datapath's current port binding
    (None before its first sync)."""

    def __init__(self, view: Callable[[], StateView], binding: Callable[[int], Binding | None]):
        self._view = view
        self._binding = binding
        #: (dpid, ofport) -> (network id, monotonic time of its last unsolicited RA)
        self._sent: dict[tuple[int, int], tuple[int, float]] = {}
        self._frames: tuple[StateView | None, dict[int, bytes]] = (None, {})
        self.stats = {"ra_solicited": 0, "ra_unsolicited": 0, "na": 0, "dhcpv6": 0}

    def _vif(self, dp, in_port: int | None) -> tuple[VifView, NetworkView] | tuple[None, None]:
        binding = self._binding(dp.id)
        vif = binding.vifs.get(in_port) if binding is not None and in_port is not None else None
        net = self._view().networks.get(vif.network_id) if vif is not None else None
        if net is None or not net.cidr_v6:
            return None, None
        return vif, net

    def on_nd(self, dp, in_port: int | None, frame: bytes) -> bytes:
        """RS -> RA, NS for the gateway -> NA (packet-out bytes; b"" when nothing applies)."""
        _vif, net = self._vif(dp, in_port)
        if net is None:
            return b""
        reply = ra.answer(frame, net)
        key = "ra_solicited"
        if reply is None:
            reply, key = ra.neighbor_advertisement(frame, net), "na"
        if reply is None:
            return b""
        self.stats[key] += 1
        return ofmsgs.packet_out_bytes(in_port, reply)

    def on_dhcpv6(self, dp, in_port: int | None, frame: bytes) -> bytes:
        """A DHCPv6 client message -> the reply's packet-out bytes (b"": nothing to send)."""
        vif, net = self._vif(dp, in_port)
        if net is None:
            return b""
        reply, reason = dhcpv6.answer(frame, net, vif)
        if LOG.isEnabledFor(logging.DEBUG):
            LOG.debug("DHCPv6 on %016x port %s: %s", dp.id, in_port, reason)
        if reply is None:
            return b""
        self.stats["dhcpv6"] += 1
        return ofmsgs.packet_out_bytes(in_port, reply)

    def _ra_frame(self, view: StateView, net: NetworkView) -> bytes | None:
        cached_view, frames = self._frames
        if cached_view is not view:
            frames = {}
            self._frames = (view, frames)
        if net.id not in frames:
            try:
                frames[net.id] = ra.router_advertisement(net)
            except ValueError as err:   # an address the codec cannot encode: say so once
                LOG.warning("no router advertisements on network %s: %s", net.label, err)
                frames[net.id] = None
        return frames[net.id]

    def advertise(self, datapaths: Iterable[tuple[object, Binding | None]], now: float) -> int:
        """Send the unsolicited RAs due at ``now`` (monotonic seconds) to the VIF ports of
        ``datapaths`` [(datapath, its binding)]; returns how many were sent."""
        view = self._view()
        sent, seen = 0, set()
        for dp, binding in datapaths:
            if binding is None:
                continue
            out = []
            for port, vif in sorted(binding.vifs.items()):
                net = view.networks.get(vif.network_id)
                if net is None or not net.cidr_v6:
                    continue
                key = (dp.id, port)
                seen.add(key)
                last = self._sent.get(key)
                if last is not None and last[0] == net.id and now - last[1] < net.ra_interval:
                    continue
                frame = self._ra_frame(view, net)
                if frame is None:
                    continue
                out.append(ofmsgs.packet_out_bytes(port, frame))
                self._sent[key] = (net.id, now)
            if out:
                dp.send(b"".join(out))
                sent += len(out)
        for key in set(self._sent) - seen:      # unplugged ports: a new one there gets an RA
            del self._sent[key]
        self.stats["ra_unsolicited"] += sent
        return sent
