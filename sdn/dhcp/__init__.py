"""DHCPv4 responder for VIFs: pure RFC 2131 decisions over a fast struct-based codec.

    responder = DhcpResponder()
    decision = responder.handle(frame, DhcpBinding(mac, address, hostname, network), now)
    if decision.reply: packet-out decision.reply to the VIF's port
    if decision.event: record decision.event (LeaseEvent "lease"/"release"/"decline")
"""

from sdn.dhcp.server import Decision, DhcpBinding, DhcpResponder, LeaseEvent

__all__ = ["Decision", "DhcpBinding", "DhcpResponder", "LeaseEvent"]
