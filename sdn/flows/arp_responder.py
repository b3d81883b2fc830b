"""Table SERVICES: answer ARP requests for each network's gateway address in the switch.

The reply is built from the request in place (Nicira reg_move), so no packet reaches the
controller. Instances need it to route off-subnet and to unicast DHCP renewals to the server
address, which is the gateway (nova's dnsmasq listened there).
"""

from __future__ import annotations

import ipaddress

from sdn.flows.context import DatapathContext
from sdn.flows.model import (OFPP_IN_PORT, EthType, Feature, Flow, Move, Output, Reg, SetField,
                             Table, flow)
from sdn.view import NetworkView

PRIO_ARP = 200
ARP_REQUEST, ARP_REPLY = 1, 2


def reply_actions(address: str, mac: str) -> list:
    """Turn an ARP request for ``address`` into the reply from ``mac``, back out of its port."""
    return [Move("eth_src", "eth_dst", 48), SetField("eth_src", mac),
            SetField("arp_op", ARP_REPLY), Move("arp_sha", "arp_tha", 48),
            Move("arp_spa", "arp_tpa", 32), SetField("arp_sha", mac),
            SetField("arp_spa", str(ipaddress.IPv4Address(address))), Output(OFPP_IN_PORT)]


def compile(dp: DatapathContext) -> list[Flow]:
    """Feature entry point: every network present on the datapath."""
    return [f for network in dp.networks for f in compile_network(network)]


def compile_network(network: NetworkView) -> list[Flow]:
    """Reply to ``who-has <gateway>`` from any port of ``network`` with its gateway MAC."""
    return [flow(Feature.GATEWAY_ARP, Table.SERVICES, PRIO_ARP,
                 {Reg.NET: network.key, "eth_type": EthType.ARP, "arp_op": ARP_REQUEST,
                  "arp_tpa": network.gateway},
                 reply_actions(network.gateway, network.gateway_mac))]
