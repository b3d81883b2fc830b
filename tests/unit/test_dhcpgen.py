"""benchmarks/dhcpgen (the C DORA load generator): its frames decoded by Scapy, a real
exchange with sdn's standalone responder, and its own-ceiling report.

Needs root (network namespaces, AF_PACKET) and gcc; skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("gcc"),
                                reason="needs root and gcc")

from benchmarks import bench_dora, lib  # noqa: E402

BASE_MAC = 0x02DD00000000


@pytest.fixture(scope="module")
def gen(tmp_path_factory) -> Path:
    return bench_dora.build_generator(tmp_path_factory.mktemp("dhcpgen"))


@pytest.fixture
def segment():
    """A namespace with veth bdgA <-> bdgB (both ends inside); removed afterwards."""
    cl = lib.Cleanup()
    ns = lib.netns(cl, f"bdg{uuid.uuid4().hex[:8]}")
    lib.sh(["ip", "-n", ns, "link", "add", "bdgA", "type", "veth", "peer", "name", "bdgB"])
    for dev in ("bdgA", "bdgB"):
        lib.sh(["ip", "-n", ns, "link", "set", dev, "up"])
    lib.sh(["ip", "-n", ns, "addr", "add", "10.77.0.1/24", "dev", "bdgB"])
    yield cl, ns
    cl.run()


def test_a_real_exchange_with_sdn_standalone_decodes_in_scapy(gen, segment, tmp_path):
    from scapy.all import BOOTP, DHCP, IP, UDP, Ether, rdpcap
    cl, ns = segment
    conf, engine, _mgr, net = lib.new_state(tmp_path / "state", lib.netlab.free_tcp_port(),
                                            "10.77.0.0/24")
    clients = 3
    vifs = lib.add_vifs(engine, net["id"], [lib.mac_n(BASE_MAC, i) for i in range(clients)])
    server = cl.proc(lib.popen([lib.PY, str(lib.REPO / "benchmarks" / "rawsocket_server.py"),
                                "--config-file", str(conf), "bdgB"], tmp_path / "server.out", ns))
    pcap = tmp_path / "gen.pcap"

    def exchange():
        return bench_dora.generate(gen, ns, ["bdgA"], 30, 0.3, clients, base_mac=BASE_MAC,
                                   drain_ms=500, pcap=pcap)
    report = lib.wait_for(lambda: (r := exchange())["acks"] == r["discovers"] and r, 20, 0.2,
                          what="the standalone responder answering")
    assert server.poll() is None
    assert report["discovers"] == 9 and report["acks"] == 9, report
    assert report["loss_pct"] == 0 and not report["gen_limited"]

    frames = rdpcap(str(pcap))
    by_type: dict[int, list] = {}
    for f in frames:
        opts = dict(o for o in f[DHCP].options if isinstance(o, tuple))
        by_type.setdefault(opts["message-type"], []).append((f, opts))
    discovers, offers, requests, acks = (by_type.get(t, []) for t in (1, 2, 3, 5))
    assert len(discovers) == len(offers) == len(requests) == len(acks) == 9
    address_of = {v["mac"]: v["address"] for v in vifs}
    for i, (f, opts) in enumerate(discovers):
        mac = lib.mac_n(BASE_MAC, i % clients)     # round robin over the clients
        assert f[Ether].src == mac and f[Ether].dst == "ff:ff:ff:ff:ff:ff"
        assert (f[IP].src, f[IP].dst, f[UDP].sport, f[UDP].dport) == ("0.0.0.0", "255.255.255.255", 68, 67)
        assert f[IP].chksum == IP(bytes(f[IP]))[IP].chksum     # checksum as Scapy computes it
        assert f[BOOTP].op == 1 and f[BOOTP].chaddr[:6] == bytes.fromhex(mac.replace(":", ""))
        assert opts["client_id"] == b"\x01" + bytes.fromhex(mac.replace(":", ""))
    offer_of = {f[BOOTP].xid: (f, opts) for f, opts in offers}
    for f, opts in requests:      # SELECTING: the offered address and the offering server
        offer, offer_opts = offer_of[f[BOOTP].xid]
        assert opts["requested_addr"] == offer[BOOTP].yiaddr == address_of[f[Ether].src]
        assert opts["server_id"] == offer_opts["server_id"]
    assert {f[BOOTP].yiaddr for f, _ in acks} == set(address_of.values())


def test_it_says_when_it_could_not_offer_the_rate(gen, segment):
    _cl, ns = segment
    slow = bench_dora.generate(gen, ns, ["bdgA"], 200, 0.5, 10, drain_ms=0)
    assert (slow["discovers"], slow["gen_limited"], slow["acks"]) == (100, False, 0)
    assert slow["loss_pct"] == 100
    flood = bench_dora.generate(gen, ns, ["bdgA"], 50_000_000, 0.2, 10, drain_ms=0)
    assert flood["gen_limited"] and flood["skipped"] > 0
    assert flood["sent_rate"] < 50_000_000


def test_bad_arguments_are_refused_with_usage(gen):
    p = subprocess.run([str(gen), "--iface", "bdg-none", "--rate", "10", "--duration", "1"],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "no interface bdg-none" in p.stderr
    p = subprocess.run([str(gen), "--rate", "x"], capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("usage: dhcpgen")
