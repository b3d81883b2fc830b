"""Relayed DHCP on real userspace OVS: a relay agent on a relay trunk port gets OFFER/ACK for
the VIF with the client's MAC in the network its giaddr names, tagged for the right VLAN,
and nothing for a MAC that is no VIF of that network."""

from __future__ import annotations

import ipaddress

from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether

from tests.integration.netlab import random_suffix, wait_for
from tests.integration.test_attacks import send_frames
from tests.integration.test_controller import lease_state

RELAY_MAC = "02:5d:00:00:0e:01"


def relayed(vlan: int, giaddr: str, chaddr: str, xid: int, kind: str, **opts):
    options = [("message-type", kind)] + list(opts.items()) + ["end"]
    return (Ether(src=RELAY_MAC, dst="ff:ff:ff:ff:ff:ff") / Dot1Q(vlan=vlan) /
            IP(src=giaddr, dst="255.255.255.255") / UDP(sport=67, dport=67) /
            BOOTP(chaddr=bytes.fromhex(chaddr.replace(":", "")), giaddr=giaddr, xid=xid,
                  hops=1) / DHCP(options=options))


def replies(capture, xid):
    return [p for p in capture.packets() if BOOTP in p and p[BOOTP].xid == xid and p[BOOTP].op == 2]


def test_relay_agent_gets_offer_and_ack_for_the_vif_with_its_clients_mac(make_sdn_env, netns_host):
    relay_port = "sdnrl" + random_suffix(6)
    env = make_sdn_env(trunk_interfaces=[relay_port],
                       config={"DEFAULT": {"network_manager": "vlan"},
                               "ovs": {"dhcp_relay_interfaces": [relay_port]}})
    env.cli("network", "create", "--label", "tenants", "--fixed_range_v4", "10.35.0.0/24",
            "--num_networks", "2", "--network_size", "64", "--vlan", "350")
    # instances in state only: bare-metal hosts behind the relay, no VIF port on this bridge
    a1 = env.cli_json("instance", "launch", "a1", "--project", "alpha")
    b1 = env.cli_json("instance", "launch", "b1", "--project", "beta")
    relay = netns_host(port_name=relay_port, mac=RELAY_MAC)
    relay.attach(env.bridge.name)
    env.start_controller()
    wait_for(lambda: [f for f in env.bridge.dump_flows() if "tp_src=67,tp_dst=67" in f],
             timeout=10, what="the relay punt flow")
    cap = relay.capture("udp dst port 67")
    gi_a = str(ipaddress.ip_network(a1["cidr"]).network_address + 60)
    gi_b = str(ipaddress.ip_network(b1["cidr"]).network_address + 60)

    send_frames(relay, [relayed(a1["vlan"], gi_a, a1["mac"], 0x1001, "discover"),
                        relayed(b1["vlan"], gi_a, b1["mac"], 0x1002, "discover"),  # not in alpha
                        relayed(b1["vlan"], gi_b, b1["mac"], 0x1003, "discover")])
    offer_a = wait_for(lambda: replies(cap, 0x1001), timeout=10, what="OFFER for a1")[0]
    offer_b = wait_for(lambda: replies(cap, 0x1003), timeout=10, what="OFFER for b1")[0]
    for offer, alloc, gi in ((offer_a, a1, gi_a), (offer_b, b1, gi_b)):
        assert offer[Dot1Q].vlan == alloc["vlan"]          # back on the client's segment
        assert offer[Ether].dst == RELAY_MAC
        assert (offer[IP].dst, offer[UDP].dport) == (gi, 67)  # RFC 2131 4.1: to the relay
        assert offer[BOOTP].yiaddr == alloc["address"]
        assert offer[BOOTP].giaddr == gi
        assert ("message-type", 2) in offer[DHCP].options

    server = dict(o for o in offer_a[DHCP].options if isinstance(o, tuple))["server_id"]
    send_frames(relay, [relayed(a1["vlan"], gi_a, a1["mac"], 0x1004, "request",
                                server_id=server, requested_addr=a1["address"])])
    ack = wait_for(lambda: replies(cap, 0x1004), timeout=10, what="ACK for a1")[0]
    assert ("message-type", 5) in ack[DHCP].options and ack[BOOTP].yiaddr == a1["address"]
    assert lease_state(env, a1["address"])               # recorded before the ACK was sent
    cap.stop()
    assert replies(cap, 0x1002) == []                    # b1's MAC is no VIF of alpha's network
