"""The raw-socket DHCP responder (``dhcp_driver = scapy``) under a hostile guest (issue 10).

Real ``sdn agent`` in a hypervisor namespace, guests in namespaces of their own: a guest that
forges another VIF's chaddr cannot RELEASE or DECLINE its lease (clients are bound by chaddr
and the tap port the request arrived on), and requests stuffed with relay information up to
the MTU get replies that fit it, without stopping the server.
"""

from __future__ import annotations

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.integration.netlab import wait_for
from tests.integration.test_controller import backend_vlan_env, lease_state

pytestmark = pytest.mark.integration

_SEND = ("import socket, sys; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); "
         "s.bind(('eth0', 0)); [s.send(bytes.fromhex(h)) for h in sys.argv[1:]]")


def _send(host, *frames: bytes) -> None:
    """Send raw Ethernet frames out of ``host``'s eth0 (inside its namespace only)."""
    import sys
    host.run([sys.executable, "-c", _SEND, *(f.hex() for f in frames)])


def _request(mtype: str, *, eth_src: str, chaddr: str, ciaddr: str = "0.0.0.0", options=(),
             size: int | None = None) -> bytes:
    opts = [("message-type", mtype), *options]
    frame = bytes(Ether(src=eth_src, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
                  / UDP(sport=68, dport=67)
                  / BOOTP(op=1, chaddr=bytes.fromhex(chaddr.replace(":", "")), ciaddr=ciaddr, xid=0x5d10)
                  / DHCP(options=opts + ["end"]))
    if size is None:
        return frame
    room, stuffing = size - len(frame), []
    while room >= 3:
        chunk = min(255, room - 2)
        stuffing.append(("relay_agent_information", b"R" * chunk))
        room -= chunk + 2
    return _request(mtype, eth_src=eth_src, chaddr=chaddr, ciaddr=ciaddr,
                    options=[*options, *stuffing, *(["pad"] * room)])


def _two_guests(backend):
    """A VLAN network with guests a1 and a2 of one project, the agent running:
    (env, (a1, host of a1), (a2, host of a2))."""
    env = backend_vlan_env(backend)
    guests = [backend.launch(env, name, "alpha") for name in ("a1", "a2")]
    backend.start(env)
    return env, *guests


@pytest.mark.parametrize("backend", ["linux-scapy"], indirect=True)
def test_release_and_decline_of_another_vifs_lease_are_ignored(backend):
    env, (a1, h_a1), (a2, h_a2) = _two_guests(backend)
    h_a1.dhclient()
    wait_for(lambda: lease_state(env, a1["address"]), timeout=10, what="a1's lease in state")

    # a2 forges a1's chaddr (its own Ethernet source, so even anti-spoofing would let it pass)
    forged = [_request("release", eth_src=a2["mac"], chaddr=a1["mac"], ciaddr=a1["address"]),
              _request("decline", eth_src=a2["mac"], chaddr=a1["mac"],
                       options=[("requested_addr", a1["address"]), ("server_id", a1["gateway"])])]
    _send(h_a2, *forged)
    # positive control first on a2's own port: its DISCOVER is answered, so the server reads
    # a2's tap (the forged frames were read before it, on the same socket)
    cap = h_a2.capture("udp dst port 68")
    _send(h_a2, _request("discover", eth_src=a2["mac"], chaddr=a2["mac"]))
    cap.wait_count(1)
    assert lease_state(env, a1["address"]) is True

    # the same RELEASE from a1's own port ends the lease
    _send(h_a1, _request("release", eth_src=a1["mac"], chaddr=a1["mac"], ciaddr=a1["address"]))
    wait_for(lambda: lease_state(env, a1["address"]) is False, timeout=10,
             what="a1's own RELEASE to be recorded")


@pytest.mark.parametrize("backend", ["linux-scapy"], indirect=True)
def test_mtu_sized_requests_stuffed_with_option_82_get_replies_within_the_mtu(backend):
    env, (a1, h_a1), (a2, h_a2) = _two_guests(backend)
    cap = h_a1.capture("udp dst port 68")
    discover = _request("discover", eth_src=a1["mac"], chaddr=a1["mac"], size=1514)
    request = _request("request", eth_src=a1["mac"], chaddr=a1["mac"], size=1508,
                       options=[("server_id", a1["gateway"]), ("requested_addr", a1["address"])])
    assert (len(discover), len(request)) == (1514, 1508)    # the sizes of issue 10
    _send(h_a1, discover, request)
    replies = cap.wait_count(2)
    types = sorted(dict(o for o in r[DHCP].options if isinstance(o, tuple))["message-type"]
                   for r in replies)
    assert types == [2, 5]                                    # OFFER and ACK
    assert all(len(r[IP]) <= 576 for r in replies), [len(r[IP]) for r in replies]
    # the server and its commit thread still serve: the ACK's lease is in state, and the other
    # guest gets its lease with dhclient
    wait_for(lambda: lease_state(env, a1["address"]), timeout=10, what="a1's lease in state")
    h_a2.dhclient()
    assert h_a2.ips() == [a2["address"]]
    assert "Traceback" not in env.hv.log()
