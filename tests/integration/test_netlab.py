"""The integration fixtures themselves, proven without the sdn controller."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.integration import netlab
from tests.integration.conftest import BridgeFactory, NetnsFactory
from tests.integration.netlab import wait_for

TCP_ECHO_SERVER = (
    "import socket\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', 5555)); s.listen(1)\n"
    "c,_=s.accept(); data=b''\n"
    "while len(data) < 200000:\n"
    "    d=c.recv(65536)\n"
    "    if not d: break\n"
    "    data+=d\n"
    "c.sendall(str(len(data)).encode()); c.close()\n"
)
TCP_CLIENT = (
    "import socket,sys\n"
    "c=socket.create_connection((sys.argv[1], 5555), timeout=10)\n"
    "c.sendall(b'x'*200000); c.shutdown(socket.SHUT_WR)\n"
    "print(c.recv(100).decode())\n"
)


def test_wait_for_returns_value_and_times_out_clearly():
    assert wait_for(lambda: 42, timeout=1) == 42
    with pytest.raises(TimeoutError, match=r"waiting for the moon \(last value: 0\)"):
        wait_for(lambda: 0, timeout=0.2, what="the moon")


def test_bridge_properties(ovs_bridge):
    br = ovs_bridge(controller_port=netlab.free_tcp_port())
    assert len(br.name) <= 15 and br.name.startswith("sdnt")
    get = lambda col: netlab.sh(["ovs-vsctl", "get", "Bridge", br.name, col]).stdout.strip()
    assert get("datapath_type") == "netdev"
    assert get("fail_mode") == "secure"
    assert get("protocols").replace('"', "") == "[OpenFlow13]"
    target = netlab.sh(["ovs-vsctl", "get-controller", br.name]).stdout.strip()
    assert target == f"tcp:127.0.0.1:{br.controller_port}"
    assert br.dump_flows() == []  # secure mode, no controller: nothing installed
    assert not br.controller_connected()


def test_two_namespaces_ping_and_tcp_through_normal_flow(ovs_bridge, netns_host):
    br = ovs_bridge()
    h1 = netns_host(port_name=f"tapa{netlab.random_suffix(10)}", mac="02:99:00:00:00:01")
    h2 = netns_host(mac="02:99:00:00:00:02")
    assert h1.run(["cat", "/sys/class/net/eth0/address"]).stdout.strip() == "02:99:00:00:00:01"
    assert netlab.link_exists(h1.port_name) and not h1.bridge
    assert h1.attach(br) != h2.attach(br)
    assert set(br.ports()) == {h1.port_name, h2.port_name}
    br.add_flow("priority=0,actions=NORMAL")
    assert any("actions=NORMAL" in f for f in br.dump_flows())
    h1.set_ip("10.99.0.1/24")
    h2.set_ip("10.99.0.2/24")
    assert h1.addresses() == ["10.99.0.1/24"]
    assert h1.ping("10.99.0.2", count=2)
    assert h2.ping("10.99.0.1")
    assert not h1.ping("10.99.0.3", timeout=1)
    # TCP needs checksum offload off on the veths (done by the fixture)
    server = h2.popen([sys.executable, "-c", TCP_ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    wait_for(lambda: "0.0.0.0:5555" in h2.run(["ss", "-ltn"]).stdout, 5, what="TCP server listening")
    out = h1.run([sys.executable, "-c", TCP_CLIENT, "10.99.0.2"], timeout=20).stdout.strip()
    assert out == "200000"
    server.wait(timeout=5)
    tr = br.trace(f"in_port={h1.port_name},dl_src={h1.mac},dl_dst={h2.mac},dl_type=0x0800")
    assert "NORMAL" in tr
    assert br.ofport(h2.port_name) > 0


def test_factories_remove_what_they_created(tmp_path):
    bridges, hosts = BridgeFactory(), NetnsFactory(tmp_path)
    br = bridges()
    h = hosts()
    h.attach(br)
    sleeper = h.popen(["sleep", "300"])
    assert h.name in netlab.netns_list()
    bridges.close_all()
    hosts.close_all()
    assert h.name not in netlab.netns_list()
    assert not netlab.link_exists(h.port_name)
    assert netlab.sh(["ovs-vsctl", "br-exists", br.name], check=False).returncode == 2
    assert sleeper.poll() is not None  # killed by pid at close


def test_dhclient_dora_reboot_release_with_capture(ovs_bridge, netns_host, capture):
    """dhclient helper against dnsmasq (a stand-in DHCP server in another namespace)."""
    br = ovs_bridge()
    client, server = netns_host(), netns_host()
    client.attach(br)
    server.attach(br)
    br.add_flow("priority=0,actions=NORMAL")
    server.set_ip("10.99.1.1/24")
    leases = server.workdir / "dnsmasq.leases"
    server.popen(["dnsmasq", "-k", "--conf-file=/dev/null", "--port=0", "--interface=eth0",
                  "--bind-interfaces", "--no-ping", "--dhcp-range=10.99.1.50,10.99.1.60,255.255.255.0,2m",
                  f"--dhcp-leasefile={leases}", "--pid-file=", "--dhcp-option=3,10.99.1.1",
                  "--dhcp-option=26,1400"])
    wait_for(lambda: ":67 " in server.run(["ss", "-lun"]).stdout, 5, what="dnsmasq listening")
    cap = client.capture("udp port 67 or udp port 68")
    outside = capture(client.port_name, "udp port 67")  # root-namespace side of the veth

    dh = client.dhclient()
    bound = client.dhcp_events()[-1]
    assert bound["reason"] == "BOUND"
    ip = bound["new_ip_address"]
    assert ip.startswith("10.99.1.")
    assert client.addresses() == [f"{ip}/24"]
    assert client.default_route() == "10.99.1.1"
    assert client.link_mtu() == 1400
    assert client.ping("10.99.1.1")

    ev = client.renew()
    assert ev["reason"] == "REBOOT" and ev["new_ip_address"] == ip
    assert dh.proc.poll() is not None  # the first dhclient was stopped by renew()

    client.release()
    assert client.dhcp_events()[-1]["reason"] == "RELEASE"
    assert client.addresses() == []

    from scapy.layers.dhcp import DHCP
    def types(pkts):
        return [dict(o for o in p[DHCP].options if isinstance(o, tuple)).get("message-type")
                for p in pkts if p.haslayer(DHCP)]
    # discover=1 offer=2 request=3 ack=5 release=7
    def release_seen(c):
        t = types(c.packets())
        return t if 7 in t else None
    seen = wait_for(lambda: release_seen(cap), 5, what="RELEASE captured inside")
    assert seen[:4] == [1, 2, 3, 5], seen
    outside_types = wait_for(lambda: release_seen(outside), 5, what="RELEASE captured outside")
    assert outside_types[:4] == [1, 2, 3, 5], outside_types



def test_host_close_kills_dhclient(netns_host):
    h = netns_host()
    dh = h.dhclient(wait=False)  # nobody answers; it keeps trying
    wait_for(lambda: h.dhcp_events(), 5, what="dhclient PREINIT")
    h.close()
    assert dh.proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(dh.pid, 0)


def test_sdn_env_controller_connects_and_stops(sdn_env):
    assert sdn_env.config_file.exists()
    assert not sdn_env.bridge.controller_connected()
    proc = sdn_env.start_controller()
    assert sdn_env.openflow_connections() == 1 and sdn_env.pipeline_cookie()
    assert sdn_env.stop_controller() == 0  # SIGTERM is a clean exit
    assert proc.poll() is not None and sdn_env.openflow_connections() == 0
    sdn_env.start_controller()  # restart: a fresh Controller row reconnects at once
    assert sdn_env.openflow_connections() == 1
    sdn_env.stop_controller(kill=True)
    wait_for(lambda: not sdn_env.bridge.controller_connected(), 15, what="OVSDB is_connected false")


def _renamed_demo_spec(tag: str) -> dict:
    """topology/demo.toml with switch and trunk names unique to this test run, so it can run
    next to `make demo` (which owns s1/s2)."""
    sys.path.insert(0, str(REPO_MININET))
    from sdn_topo import load_topology
    spec = load_topology(REPO_MININET.parent / "topology" / "demo.toml")
    names = {s["name"]: f"d{tag}{i}" for i, s in enumerate(spec["switches"], 1)}
    for s in spec["switches"]:
        s["name"] = names[s["name"]]
        s.pop("dpid", None)
    for t in spec["trunks"]:
        t["a"], t["b"] = names[t["a"]], names[t["b"]]
        t["a_intf"], t["b_intf"] = f"{t['a']}-trunk", f"{t['b']}-trunk"
    for inst in spec["instances"]:
        inst["host"] = names[inst["host"]]
    spec["config"]["ovs"]["trunk_interfaces"] = [x for t in spec["trunks"] for x in (t["a_intf"], t["b_intf"])]
    if "outside" in spec:
        out = spec["outside"]
        out["switch"] = names[out["switch"]]
        out["interface"] = spec["config"]["DEFAULT"]["public_interface"] = f"{out['switch']}-pub"
    spec["controller"]["port"] = netlab.free_tcp_port()
    return spec


REPO_MININET = netlab.Path(__file__).resolve().parents[2] / "mininet"


def test_mininet_topology_uses_sdn_macs_and_port_names(tmp_path):
    """The Topo launches instances through the sdn CLI: hosts get sdn's MAC, the switch-side
    interface is the VIF port name, hosts have no static IP."""
    sys.path.insert(0, str(REPO_MININET))
    import run_demo
    from mininet.net import Mininet
    from mininet.node import OVSSwitch
    from sdn_topo import SdnTopo

    spec = _renamed_demo_spec(netlab.random_suffix(4))
    conf = run_demo.prepare_state(spec, tmp_path / "state")
    topo = SdnTopo(spec, config=str(conf))
    net = Mininet(topo=topo, switch=OVSSwitch, controller=None, autoSetMacs=False)
    try:
        net.start()
        for inst in spec["instances"]:
            alloc = topo.allocations[inst["name"]]
            host = net.get(inst["name"])
            assert host.defaultIntf().MAC() == alloc["mac"]
            assert host.IP() is None or host.IP() == ""
            sw_ports = netlab.sh(["ovs-vsctl", "list-ports", inst["host"]]).stdout.split()
            assert alloc["port_name"] in sw_ports
        dp = netlab.sh(["ovs-vsctl", "get", "Bridge", spec["switches"][0]["name"], "datapath_type"]).stdout
        assert dp.strip() == "netdev"
        # launch is idempotent: a second Topo gets the same allocations
        again = SdnTopo(spec, config=str(conf))
        assert again.allocations == topo.allocations
    finally:
        net.stop()
    assert not netlab.link_exists(spec["trunks"][0]["a_intf"])


def test_demo_runs_end_to_end(tmp_path, capsys):
    """The whole `make demo` story on uniquely named switches: leases match, [expect] holds."""
    sys.path.insert(0, str(REPO_MININET))
    import run_demo

    spec = _renamed_demo_spec(netlab.random_suffix(4))
    rc = run_demo.run(spec, tmp_path / "state", dhcp_timeout=30)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "DEMO OK" in out
    for s in spec["switches"]:
        assert netlab.sh(["ovs-vsctl", "br-exists", s["name"]], check=False).returncode == 2
