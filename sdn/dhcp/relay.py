"""Relayed DHCP (BOOTP relay agents, RFC 1542 / RFC 2131 §4.1, §4.3.1) for a network host.

Hosts that are no VIF on this datapath -- bare-metal servers, another segment -- reach sdn's
responder through a relay agent on a port listed in ``[ovs] dhcp_relay_interfaces``. The
relay sets ``giaddr`` to its address on the client's segment and sends from udp 67 to 67.
As RFC 2131 §4.3.1 says, ``giaddr`` selects the network; the client is then bound by its
``chaddr`` among that network's VIFs (nova's network-host model: one fixed IP per VIF, wherever
the VIF is plugged). Decisions stay ``DhcpResponder``'s; the reply goes to the relay (giaddr,
port 67, the relay's MAC) with the request's 802.1Q tag, if it had one.

Pure: no I/O.
"""

from __future__ import annotations

import struct

from sdn.dhcp.server import DhcpBinding, mac_bytes
from sdn.view import StateView

_TPID_8021Q = b"\x81\x00"
_U32 = struct.Struct("!I")


class RelayBindings:
    """(giaddr, chaddr) -> DhcpBinding for every VIF with a fixed IP, built once per state view.

    ``networks`` is a list of (network address, netmask, {6-byte MAC: binding}) as integers;
    nova's networks never overlap, so at most one contains a giaddr.
    """

    def __init__(self, view: StateView):
        import netaddr

        by_net: dict[int, dict[bytes, DhcpBinding]] = {}
        for vif in view.vifs:
            network = view.networks.get(vif.network_id)
            if network is None or not vif.addresses:
                continue
            by_net.setdefault(network.id, {})[mac_bytes(vif.mac)] = DhcpBinding.for_vif(vif, network)
        self.networks: list[tuple[int, int, dict[bytes, DhcpBinding]]] = []
        for nid, macs in sorted(by_net.items()):
            cidr = netaddr.IPNetwork(view.networks[nid].cidr)
            self.networks.append((int(cidr.network), int(cidr.netmask), macs))

    def lookup(self, giaddr: bytes, chaddr: bytes) -> DhcpBinding | None:
        """The binding of ``chaddr`` (6 bytes) in the network containing ``giaddr`` (4 bytes)."""
        (address,) = _U32.unpack(giaddr)
        for net, mask, macs in self.networks:
            if address & mask == net:
                return macs.get(chaddr)
        return None


def request_fields(frame: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(802.1Q tag or b"", giaddr, chaddr) of a BOOTP frame, without a full parse; None when the
    frame is too short to hold them. The responder validates everything else."""
    tag = b""
    off = 14
    if frame[12:14] == _TPID_8021Q:
        tag, off = frame[12:16], 18
    if len(frame) < off + 20:
        return None
    bootp = off + (frame[off] & 0x0F) * 4 + 8
    if len(frame) < bootp + 34:
        return None
    return tag, frame[bootp + 24:bootp + 28], frame[bootp + 28:bootp + 34]


def with_tag(frame: bytes, tag: bytes) -> bytes:
    """``frame`` with the 4-byte 802.1Q ``tag`` inserted after the MAC addresses (or as is)."""
    return frame[:12] + tag + frame[12:] if tag else frame
