"""Port security proven by attack: crafted frames from one instance, captured where they would land.

Each attack is sent from instance a1 (project alpha) with Scapy-built frames. Captures run at
the neighbour a2 (alpha), at b1 (project beta) and on the far side of the trunk. Every test
also sends a legitimate marker frame first and requires the capture to see it, so a capture
that saw nothing really means the attack was stopped.
"""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_RA, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from tests.integration.netlab import random_suffix, wait_for
from tests.integration.test_controller import lease_state

SEND = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for line in sys.stdin:
    s.send(bytes.fromhex(line.strip()))
"""


def send_frames(host, frames):
    """Write raw Ethernet frames onto ``host``'s eth0 from inside its namespace."""
    data = "".join(bytes(f).hex() + "\n" for f in frames)
    subprocess.run(["ip", "netns", "exec", host.name, sys.executable, "-c", SEND],
                   input=data.encode(), check=True, timeout=60)


def link_local(mac):
    from sdn.flows.port_security import link_local as ll
    return ll(mac)


class Lab:
    """a1 attacks; a2 is its neighbour; b1 is in another project; upstream sits on the trunk
    (OVS) or on a1's network bridge (Linux: an untagged uplink, since VLANs cannot be made here)."""

    def __init__(self, backend, netns_host):
        self.backend = backend
        trunk = "sdntk" + random_suffix(6)
        self.env = backend.env(trunk_interfaces=[trunk] if backend.name == "ovs" else (),
                               config={"DEFAULT": {"network_manager": "vlan"},
                                       "ovs": {"dhcp_rate_limit": 50}})
        self.env.cli("network", "create", "--label", "tenants", "--fixed_range_v4",
                     "10.33.0.0/24", "--num_networks", "2", "--network_size", "64",
                     "--vlan", "300")
        self.a1, self.h_a1 = backend.launch(self.env, "a1", "alpha")
        self.a2, self.h_a2 = backend.launch(self.env, "a2", "alpha")
        self.b1, self.h_b1 = backend.launch(self.env, "b1", "beta")
        self.upstream = netns_host(port_name=trunk)
        if backend.name == "ovs":
            backend.attach_uplink(self.env, self.upstream, self.a1)
            backend.start(self.env)
        else:
            backend.start(self.env)
            backend.attach_uplink(self.env, self.upstream, self.a1)
        clients = [host.dhclient(wait=False) for host in (self.h_a1, self.h_a2, self.h_b1)]
        for client in clients:
            client.wait_bound()
        self.gw_mac = "0a:58:" + ":".join(f"{int(o):02x}" for o in self.a1["gateway"].split("."))

    def control(self, dst_host, dst, marker):
        """A legitimate frame a1 -> ``dst`` (alloc) carrying ``marker``."""
        return (Ether(src=self.a1["mac"], dst=dst["mac"]) /
                IP(src=self.a1["address"], dst=dst["address"]) /
                UDP(sport=40000, dport=40000) / Raw(marker))


def arrived(packets, predicate):
    return [p for p in packets if predicate(p)]


def has_marker(marker):
    return lambda p: Raw in p and marker in bytes(p[Raw].load)


@pytest.fixture
def lab(backend, netns_host):
    return Lab(backend, netns_host)


def antispoof_rules_text(lab) -> str:
    """What implements port security now: the OVS flows, or the hypervisor's ebtables."""
    if lab.backend.name == "ovs":
        return "\n".join(lab.env.bridge.dump_flows())
    return lab.env.hv.ebtables_save()


def run_attack(lab, watch, attack_frames, is_attack, control_to=None):
    """Capture on ``watch`` hosts, send a control frame then the attack; return what arrived.

    ``control_to`` is (host, alloc) receiving the positive control (default a2).
    """
    marker = f"CONTROL-{random_suffix(6)}".encode()
    ctl_host, ctl_alloc = control_to or (lab.h_a2, lab.a2)
    caps = {h.name: h.capture() for h in set(watch) | {ctl_host}}
    send_frames(lab.h_a1, [lab.control(ctl_host, ctl_alloc, marker)])
    wait_for(lambda: arrived(caps[ctl_host.name].packets(), has_marker(marker)), timeout=10,
             what="the positive-control frame at its receiver")
    send_frames(lab.h_a1, attack_frames)
    # Let the attack cross the switch, then prove the path is still live with a 2nd control.
    marker2 = marker + b"-after"
    send_frames(lab.h_a1, [lab.control(ctl_host, ctl_alloc, marker2)])
    wait_for(lambda: arrived(caps[ctl_host.name].packets(), has_marker(marker2)), timeout=10,
             what="the second control frame")
    for cap in caps.values():
        cap.stop()
    return {name: arrived(cap.packets(), is_attack) for name, cap in caps.items() if
            name in {h.name for h in watch}}


def test_spoofed_source_mac(lab):
    fake = "fa:16:3e:de:ad:01"
    frame = (Ether(src=fake, dst=lab.a2["mac"]) / IP(src=lab.a1["address"], dst=lab.a2["address"])
             / ICMP())
    got = run_attack(lab, [lab.h_a2, lab.upstream], [frame], lambda p: p[Ether].src == fake)
    assert got == {lab.h_a2.name: [], lab.upstream.name: []}


def test_spoofed_source_ipv4(lab):
    frame = (Ether(src=lab.a1["mac"], dst=lab.a2["mac"]) / IP(src="10.33.0.50", dst=lab.a2["address"])
             / ICMP())
    got = run_attack(lab, [lab.h_a2], [frame], lambda p: IP in p and p[IP].src == "10.33.0.50")
    assert got[lab.h_a2.name] == []


def test_arp_reply_claiming_the_gateway(lab):
    frame = (Ether(src=lab.a1["mac"], dst=lab.a2["mac"]) /
             ARP(op=2, hwsrc=lab.a1["mac"], psrc=lab.a1["gateway"], hwdst=lab.a2["mac"],
                 pdst=lab.a2["address"]))
    got = run_attack(lab, [lab.h_a2], [frame],
                     lambda p: ARP in p and p[ARP].psrc == lab.a1["gateway"])
    assert got[lab.h_a2.name] == []
    neigh = lab.h_a2.run(["ip", "neigh", "show", lab.a1["gateway"]]).stdout
    assert lab.a1["mac"] not in neigh


def test_gratuitous_arp_claiming_a_neighbour(lab):
    frame = (Ether(src=lab.a1["mac"], dst="ff:ff:ff:ff:ff:ff") /
             ARP(op=1, hwsrc=lab.a1["mac"], psrc=lab.a2["address"], hwdst="00:00:00:00:00:00",
                 pdst=lab.a2["address"]))
    got = run_attack(lab, [lab.h_a2, lab.upstream], [frame],
                     lambda p: ARP in p and p[ARP].psrc == lab.a2["address"]
                     and p[ARP].hwsrc == lab.a1["mac"])
    assert got == {lab.h_a2.name: [], lab.upstream.name: []}


def test_ipv6_na_claiming_a_neighbour(lab):
    if lab.backend.name == "linux":
        pytest.skip("Linux backend: ebtables cannot match an ICMPv6 NA's target address "
                    "(libvirt's nwfilter had no NA anti-spoofing either)")
    target = link_local(lab.a2["mac"])
    frame = (Ether(src=lab.a1["mac"], dst="33:33:00:00:00:01") /
             IPv6(src=link_local(lab.a1["mac"]), dst="ff02::1", hlim=255) /
             ICMPv6ND_NA(tgt=target, R=0, S=0, O=1))
    got = run_attack(lab, [lab.h_a2], [frame],
                     lambda p: ICMPv6ND_NA in p and p[ICMPv6ND_NA].tgt == target)
    assert got[lab.h_a2.name] == []


def test_ipv6_router_advertisement(lab):
    frame = (Ether(src=lab.a1["mac"], dst="33:33:00:00:00:01") /
             IPv6(src=link_local(lab.a1["mac"]), dst="ff02::1", hlim=255) / ICMPv6ND_RA())
    got = run_attack(lab, [lab.h_a2, lab.upstream], [frame], lambda p: ICMPv6ND_RA in p)
    assert got == {lab.h_a2.name: [], lab.upstream.name: []}


def test_rogue_dhcp_offer_to_a_neighbour(lab):
    frame = (Ether(src=lab.a1["mac"], dst="ff:ff:ff:ff:ff:ff") /
             IP(src=lab.a1["address"], dst="255.255.255.255") / UDP(sport=67, dport=68) /
             BOOTP(op=2, yiaddr="10.33.0.60", chaddr=bytes.fromhex(lab.a2["mac"].replace(":", "")))
             / DHCP(options=[("message-type", "offer"), ("server_id", lab.a1["address"]), "end"]))
    got = run_attack(lab, [lab.h_a2, lab.upstream], [frame],
                     lambda p: UDP in p and p[UDP].sport == 67 and p[Ether].src == lab.a1["mac"])
    assert got == {lab.h_a2.name: [], lab.upstream.name: []}


def test_vlan_tagged_frame_aimed_at_the_other_project(lab):
    frame = (Ether(src=lab.a1["mac"], dst=lab.b1["mac"]) / Dot1Q(vlan=lab.b1["vlan"]) /
             IP(src=lab.a1["address"], dst=lab.b1["address"]) / ICMP())
    qinq = (Ether(src=lab.a1["mac"], dst=lab.b1["mac"], type=0x88A8) / Dot1Q(vlan=lab.b1["vlan"])
            / IP(src=lab.a1["address"], dst=lab.b1["address"]) / ICMP())
    got = run_attack(lab, [lab.h_b1, lab.upstream], [frame, qinq],
                     lambda p: p[Ether].src == lab.a1["mac"] and ICMP in p)
    assert got == {lab.h_b1.name: [], lab.upstream.name: []}


def test_unicast_and_broadcast_to_the_other_project(lab):
    uni = (Ether(src=lab.a1["mac"], dst=lab.b1["mac"]) /
           IP(src=lab.a1["address"], dst=lab.b1["address"]) / ICMP())
    bcast = (Ether(src=lab.a1["mac"], dst="ff:ff:ff:ff:ff:ff") /
             IP(src=lab.a1["address"], dst="255.255.255.255") / UDP(dport=9) / Raw(b"x"))
    got = run_attack(lab, [lab.h_b1], [uni, bcast], lambda p: p[Ether].src == lab.a1["mac"])
    assert got[lab.h_b1.name] == []
    # the broadcast does reach the attacker's own project (positive control for flooding)
    cap = lab.h_a2.capture(f"ether src {lab.a1['mac']} and udp port 9")
    send_frames(lab.h_a1, [bcast])
    cap.wait_count(1)


def test_dhcp_starvation_from_one_vif(lab):
    rnd = random.Random(7)
    macs = [bytes([0x02] + [rnd.randrange(256) for _ in range(5)]) for _ in range(300)]
    discovers = [Ether(src=lab.a1["mac"], dst="ff:ff:ff:ff:ff:ff") /
                 IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) /
                 BOOTP(chaddr=mac, xid=rnd.randrange(1 << 32), flags=0x8000) /
                 DHCP(options=[("message-type", "discover"), "end"]) for mac in macs]
    offers = lab.h_a1.capture("udp src port 67")
    send_frames(lab.h_a1, discovers)
    # Other VIFs still get their leases after the flood (a2 restarts its client: INIT-REBOOT).
    lab.h_a2.dhclient()
    assert lab.h_a2.ips() == [lab.a2["address"]]
    assert lab.h_a1.ping(lab.a2["address"])
    offers.stop()
    fake = {m.hex() for m in macs}
    answered = [p for p in offers.packets() if BOOTP in p and bytes(p[BOOTP].chaddr)[:6].hex() in fake]
    assert answered == []
    rows = lab.env.cli_json("fixed", "list")
    leased = {r["address"] for r in rows if r["leased"]}
    assert leased <= {lab.a1["address"], lab.a2["address"], lab.b1["address"]}
    if lab.backend.name == "ovs":
        assert lease_state(lab.env, lab.a2["address"])
    else:   # dnsmasq records the lease with dhcp-bridge after its ACK
        wait_for(lambda: lease_state(lab.env, lab.a2["address"]), timeout=10, what="a2's lease in state")


def test_legitimate_traffic_works_after_every_attack_kind(lab):
    send_frames(lab.h_a1, [Ether(src="fa:16:3e:de:ad:02", dst="ff:ff:ff:ff:ff:ff") / ARP(),
                           Ether(src=lab.a1["mac"], dst="33:33:00:00:00:01") /
                           IPv6(src=link_local(lab.a1["mac"]), dst="ff02::1") / ICMPv6ND_RA()])
    assert lab.h_a1.ping(lab.a2["address"], count=2)
    assert lab.h_a2.ping(lab.a1["address"], count=2)
    v6 = lab.h_a2.run(["ping", "-6", "-c", "1", "-W", "2", f"{link_local(lab.a1['mac'])}%eth0"],
                      check=False)
    assert v6.returncode == 0, v6.stdout


def _arrives_eventually(lab, receiver, frame, predicate, timeout=10):
    """Resend ``frame`` from a1 until ``receiver`` captures it (flows change asynchronously)."""
    cap = receiver.capture()
    try:
        def seen():
            send_frames(lab.h_a1, [frame])
            return arrived(cap.packets(), predicate)
        return wait_for(seen, timeout=timeout, interval=0.2, what="the frame at the receiver")
    finally:
        cap.stop()


def test_allowed_address_pairs_are_honoured_mac_included(lab):
    pair_mac, pair_ip = "fa:16:3e:77:77:77", "10.33.0.41"
    marker = b"PAIR-" + random_suffix(6).encode()
    frame = (Ether(src=pair_mac, dst=lab.a2["mac"]) / IP(src=pair_ip, dst=lab.a2["address"]) /
             UDP(sport=40001, dport=40001) / Raw(marker))
    got = run_attack(lab, [lab.h_a2], [frame], has_marker(marker))
    assert got[lab.h_a2.name] == []                      # not allowed yet
    lab.env.cli("instance", "allow-address", "a1", "--ip", pair_ip, "--mac", pair_mac)
    _arrives_eventually(lab, lab.h_a2, frame, has_marker(marker))
    # a pair on the VIF's own MAC: a real secondary address, used by the kernel
    lab.env.cli("instance", "allow-address", "a1", "--ip", "10.33.0.48/29")
    lab.h_a1.run(["ip", "addr", "add", "10.33.0.50/26", "dev", "eth0"])
    wait_for(lambda: lab.h_a1.run(["ping", "-c", "1", "-W", "1", "-I", "10.33.0.50",
                                   lab.a2["address"]], check=False).returncode == 0,
             timeout=10, what="ping from the allowed secondary address")
    lab.env.cli("instance", "disallow-address", "a1", "--ip", pair_ip, "--mac", pair_mac)
    wait_for(lambda: pair_mac not in antispoof_rules_text(lab), timeout=10,
             what="the removed pair's flows/rules to go")


def test_port_security_off_is_explicit_per_vif_and_reversible(lab):
    fake_mac, fake_ip = "fa:16:3e:de:ad:03", "10.33.0.60"
    marker = b"OPEN-" + random_suffix(6).encode()
    frame = (Ether(src=fake_mac, dst=lab.a2["mac"]) / IP(src=fake_ip, dst=lab.a2["address"]) /
             UDP(sport=40002, dport=40002) / Raw(marker))
    lab.env.cli("instance", "port-security", "a1", "off")
    _arrives_eventually(lab, lab.h_a2, frame, has_marker(marker))
    lab.env.cli("instance", "port-security", "a1", "on")
    if lab.backend.name == "ovs":
        wait_for(lambda: not [f for f in lab.env.bridge.dump_flows()
                              if "priority=100,reg5=" in f and "port_security" in f], timeout=10,
                 what="the open port-security flow to go")
    else:
        wait_for(lambda: f"-i {lab.a1['port_name']} -j" in antispoof_rules_text(lab), timeout=10,
                 what="a1's ebtables chain to come back")
    got = run_attack(lab, [lab.h_a2], [frame], has_marker(marker))
    assert got[lab.h_a2.name] == []
