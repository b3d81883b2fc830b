"""``sdn trace`` and ``sdn flows`` on real userspace OVS, programmed by the sdn controller.

One deployment for the module (the L3 set-up of test_l3.py, OVS only): alpha's a1 and a2 on
one VLAN, beta's b1 on another, the outside on the public port; a1 and b1 each have a floating
IP; alpha's default group is open to icmp/tcp/udp, beta's admits nothing inbound. Each test
runs ``sdn trace`` (``ovs-appctl ofproto/trace`` underneath) and asserts the explanation's
sentence; the allowed ping and the floating IP are also tried for real, so a verdict of
"delivered" is checked against the data plane.
"""

from __future__ import annotations

import ipaddress

import pytest

from tests.integration import netlab
from tests.integration.backends import OvsBackend
from tests.integration.conftest import module_factories
from tests.integration.netlab import wait_for
from tests.integration.peers import probe, serve
from tests.integration.test_l3 import GATEWAY, INTERNET, RSIP, L3Lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory, integration_ready):
    with module_factories(tmp_path_factory.mktemp("trace")) as (bridges, envs, hosts):
        lab = L3Lab(OvsBackend(envs, hosts), hosts)
        lab.g1 = lab.floating("beta", "b1")   # b1's group admits nothing inbound
        lab.bridges = bridges
        lab.backend.wait_synced(lab.env)
        yield lab


def trace(lab, *args) -> dict:
    return lab.env.cli_json("trace", "--bridge", lab.env.bridge.name, *args)


def public_port(lab) -> str:
    return lab.outside.port_name


def test_spoofed_source_is_dropped_by_port_security(lab):
    spoof = str(ipaddress.IPv4Address(lab.a1["address"]) + 20)
    out = trace(lab, "--from", "a1", "--dst", "a2", "--src-ip", spoof)
    assert out["outcome"] == "dropped"
    assert out["verdict"] == (f"dropped by port security: port {lab.a1['port_name']} (instance "
                              f"a1) may send from {lab.a1['address']} only; this packet's "
                              f"source is {spoof}")
    assert [(s["table_name"], s["feature"]) for s in out["steps"]] == [
        ("classify", "classifier"), ("port_security", "pipeline")]
    mac = trace(lab, "--from", "a1", "--dst", "a2", "--src-mac", "fa:16:3e:00:00:99")
    assert mac["verdict"].endswith(f"may send from MAC {lab.a1['mac']} only; this packet's "
                                   f"source MAC is fa:16:3e:00:00:99")


def test_allowed_ping_is_delivered(lab):
    out = trace(lab, "--from", "a1", "--dst", "a2")
    assert out["outcome"] == "delivered"
    assert out["verdict"] == f"delivered to a2 on {lab.a2['port_name']}"
    tables = [s["table_name"] for s in out["steps"]]
    assert tables[-3:] == ["ingress_acl_rules", "ingress_acl_accept", "output"]
    assert out["assumptions"] == ["conntrack state new connection (trk|new) assumed "
                                  "(OVS's default for a trace)"]
    assert lab.h_a1.ping(lab.a2["address"])      # and so it is on the data plane


def test_cross_project_packet_is_dropped(lab):
    out = trace(lab, "--from", "a1", "--dst", "b1")
    assert out["verdict"] == (f"cross-project: VLAN {lab.a1['vlan']} and VLAN {lab.b1['vlan']} "
                              f"do not meet (the router does not route between tenant "
                              f"networks; a floating IP does)")
    # the packet went to a1's gateway MAC (b1 is on another network), so the router decided
    assert "services" in [s["table_name"] for s in out["steps"]]
    assert out["steps"][-1]["table_name"] == "l3_snat"
    assert not lab.h_a1.ping(lab.b1["address"], count=1, timeout=1)


def test_floating_ip_inbound_is_dnated_and_delivered(lab):
    out = trace(lab, "--in-port", public_port(lab), "--dst", lab.f1, "--proto", "tcp",
                "--dport", "2222")
    assert out["verdict"] == (f"DNAT {lab.f1} to {lab.a1['address']} (a1's fixed IP), then "
                              f"delivered to a1 on {lab.a1['port_name']}")
    commit = [s for s in out["steps"] if s["table_name"] == "l3_dnat_commit"]
    assert commit and commit[0]["feature"] == "router"
    assert commit[0]["note"] == f"new connection: DNAT to {lab.a1['address']}, committed"
    server = serve(lab.h_a1, "tcp-server", 2222)
    try:
        assert probe(lab.outside, "tcp", lab.f1, 2222, 3) == f"ok 2222 {GATEWAY}"
    finally:
        server.kill()


def test_security_group_drop_names_the_groups(lab):
    out = trace(lab, "--in-port", public_port(lab), "--dst", lab.g1, "--proto", "tcp",
                "--dport", "23")
    assert out["verdict"] == (f"dropped by security group: no ingress rule of b1's groups "
                              f"(default) admits tcp/23 from {GATEWAY}")
    assert out["steps"][-1]["table_name"] == "ingress_acl_drop"


def test_outbound_is_snated_out_of_the_public_port(lab):
    want = f"SNAT to {RSIP} and out of the public port {public_port(lab)}"
    # the external gateway's MAC is learned by ARP once the controller runs
    wait_for(lambda: trace(lab, "--from", "a2", "--dst", INTERNET, "--proto", "tcp",
                           "--dport", "8080")["verdict"] == want, timeout=15,
             what="the trace to leave through the public port")


def test_dhcp_request_is_answered_by_the_controller(lab):
    out = trace(lab, "--from", "a1", "--proto", "dhcp")
    assert out["outcome"] == "controller"
    assert out["verdict"] == "answered by the controller (DHCP)"
    assert out["steps"][-1]["feature"] == "dhcp"


def test_text_output_ends_with_the_verdict(lab):
    out = lab.env.cli("trace", "--bridge", lab.env.bridge.name, "--from", "a1", "--dst", "a2",
                      "--proto", "tcp", "--dport", "22").stdout.splitlines()
    assert out[0] == (f"tcp/22 from a1 ({lab.a1['port_name']}), {lab.a1['mac']} "
                      f"{lab.a1['address']} to a2 ({lab.a2['address']}) on {lab.env.bridge.name}")
    assert out[-1] == f"=> delivered to a2 on {lab.a2['port_name']}"
    assert any(" port_security " in line and "the VIF sends as itself" in line for line in out)


def test_flows_grouped_by_feature(lab):
    br = lab.env.bridge.name
    installed = netlab.dump_flows(br)
    summary = lab.env.cli_json("flows", "--bridge", br)
    assert summary["flows"] == len(installed)
    assert sum(f["count"] for f in summary["features"].values()) == len(installed)
    assert set(summary["features"]) >= {"pipeline", "classifier", "port_security", "dhcp",
                                        "gateway_arp", "l2", "router", "security_groups"}
    assert summary["features"]["gateway_arp"]["tables"] == {"services": 2}   # one per network
    text = lab.env.cli("flows", "--bridge", br, "--feature", "gateway_arp").stdout.splitlines()
    assert text[0] == f"bridge {br}: {len(installed)} flows; gateway_arp: 2"
    assert text[1] == "gateway_arp (sdn/flows/arp_responder.py): 2 flows"
    assert text[2] == "  services 2"
    flows = text[3:]
    assert len(flows) == 2 and all(line.split()[0] == "services" for line in flows)
    assert any(f"arp_tpa={lab.a1['gateway']}" in line for line in flows)
    assert any(f"arp_tpa={lab.b1['gateway']}" in line for line in flows)
    router = lab.env.cli_json("flows", "--bridge", br, "--feature", "router")["features"]
    assert list(router) == ["router"] and "l3_dnat_commit" in router["router"]["tables"]


def test_errors_are_one_line(lab):
    br = lab.env.bridge.name
    other = lab.bridges()     # a bridge the instances are not plugged into
    cases = [
        (["trace", "--bridge", br, "--from", "nosuch", "--dst", "a2"],
         "sdn: error: no instance named nosuch; see 'sdn fixed list'"),
        (["trace", "--bridge", "sdnnosuch", "--from", "a1", "--dst", "a2"],
         "sdn: error: no Open vSwitch bridge sdnnosuch;"),
        (["trace", "--bridge", other.name, "--from", "a1", "--dst", "a2"],
         f"sdn: error: instance a1 is not on bridge {other.name}"),
        (["flows", "--bridge", "sdnnosuch"], "sdn: error: no Open vSwitch bridge sdnnosuch;"),
    ]
    for argv, want in cases:
        p = lab.env.cli(*argv, check=False)
        assert p.returncode in (1, 2) and p.stdout == "", (argv, p)
        lines = p.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(want), (argv, p.stderr)
