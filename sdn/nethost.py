"""Network hosts (nova's ``set_network_host``): which networks a network host claims and which
it routes. Pure rules on a ``StateView``, shared by the OpenFlow controller
(``sdn.apps.controller``) and the Linux agent (``sdn.linux.agent``), so both backends claim and
serve by the same state.

A network starts with no host (``networks.host`` NULL). As in nova, where the first fixed IP
allocated on a network without a host made the network topic ``set_network_host`` and whichever
network host took the message won, the first network host that sees a VIF on an unclaimed
network claims it (``NetworkManager.claim_networks``: one transaction, one winner).
"""

from __future__ import annotations

from sdn.view import StateView


def networks_to_claim(view: StateView, host: str | None) -> list[int]:
    """Ids of the networks network host ``host`` should claim now: those with at least one VIF
    and no host, ascending. ``host`` None or empty (not a network host): none."""
    if not host:
        return []
    return sorted({vif.network_id for vif in view.vifs if vif.network_id in view.networks
                   and view.networks[vif.network_id].host is None})


def hosted_networks(view: StateView, host: str | None) -> set[int]:
    """Ids of the networks whose network host is ``host`` (what its router serves: gateway,
    DHCP server, floating IPs, SNAT). ``host`` None or empty (a compute host only): none."""
    if not host:
        return set()
    return {nid for nid, net in view.networks.items() if net.host == host}
