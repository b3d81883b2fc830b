"""Metrics and logs of the running services, as an operator sees them: the Prometheus
endpoint scraped with a real HTTP client while a real dhclient leases an address, the
controller's log file written through ``sdn --debug --log-file F controller``, and a CLI
that prints nothing but its answer.

One controller for the module (``lab``): VLAN manager, a1 leased by dhclient (its own script,
lease and pid files: netlab's ``dhclient``); the tests read the counters before and after
what they do.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration import netlab
from tests.integration.conftest import module_factories
from tests.integration.netlab import wait_for
from tests.integration.test_attacks import send_frames


class Scrape:
    """One GET of a /metrics endpoint, parsed (Prometheus text format)."""

    def __init__(self, port: int):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.status == 200
            text = resp.read().decode()
        self.samples = [s for family in text_string_to_metric_families(text)
                        for s in family.samples]

    def value(self, name: str, **labels) -> float:
        """The sample ``name`` whose labels include ``labels``; summed over the others."""
        return sum(s.value for s in self.samples if s.name == name
                   and all(s.labels.get(k) == v for k, v in labels.items()))

    def labelled(self, name: str, label: str) -> dict[str, float]:
        return {s.labels[label]: s.value for s in self.samples if s.name == name}


def sdn_flows_per_feature(bridge: str) -> dict[str, int]:
    """Flows on the bridge by the feature byte of their sdn cookie (``0x5d<feature>...``)."""
    from sdn.flows.model import Feature

    counts: dict[str, int] = {}
    for line in netlab.dump_flows(bridge):
        cookie = line.split(",")[0].strip()
        if cookie.startswith("cookie=0x5d"):
            value = int(cookie.removeprefix("cookie="), 16)
            name = Feature((value >> 48) & 0xFF).name.lower()
            counts[name] = counts.get(name, 0) + 1
    return counts


class Lab:
    def __init__(self, envs, hosts):
        self.port = netlab.free_tcp_port()
        self.env = envs(config={"DEFAULT": {"network_manager": "vlan"},
                                "metrics": {"controller_port": self.port}})
        self.env.cli("network", "create", "--label", "tenants", "--fixed_range_v4",
                     "10.33.0.0/24", "--num_networks", "1", "--network_size", "64", "--vlan",
                     "230")
        self.hosts = hosts
        self.a1, self.h_a1, _ = self.launch("a1")
        self.log_file = self.env.workdir / "sdn-controller.log"
        self.env.start_controller(global_args=("--debug", "--log-file", str(self.log_file)))
        dpid = netlab.sh(["ovs-vsctl", "get", "bridge", self.env.bridge.name, "datapath_id"])
        self.dpid = dpid.stdout.strip().strip('"')      # 16 hex digits, as the metrics say

    def launch(self, name):
        alloc = self.env.cli_json("instance", "launch", name, "--project", "alpha")
        host = self.hosts(port_name=alloc["port_name"], mac=alloc["mac"])
        plug = self.env.cli("instance", "plug", name, "--bridge", self.env.bridge.name)
        return alloc, host, plug

    def scrape(self) -> Scrape:
        return Scrape(self.port)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


@pytest.fixture(scope="module")
def lab(tmp_path_factory, integration_ready):
    with module_factories(tmp_path_factory.mktemp("metrics")) as (_bridges, envs, hosts):
        lab = Lab(envs, hosts)
        yield lab
        assert "Traceback" not in lab.log(), lab.log()[-4000:]


def test_datapath_and_flows_per_feature_gauges_match_the_switch(lab):
    scrape = lab.scrape()
    assert scrape.value("sdn_datapaths_connected") == 1
    assert scrape.value("sdn_datapath_connections_total", dpid=lab.dpid) >= 1
    # what the switch holds, by cookie feature, is what the gauges say (after the last sync)
    on_switch = sdn_flows_per_feature(lab.env.bridge.name)
    assert on_switch.get("dhcp", 0) > 0 and on_switch.get("l2", 0) > 0, on_switch
    wait_for(lambda: {k: int(v) for k, v in lab.scrape().labelled("sdn_flows", "feature").items()
                      if v} == on_switch, timeout=10,
             what=f"sdn_flows per feature to equal the switch's {on_switch}")
    assert scrape.value("sdn_sync_duration_seconds_count", dpid=lab.dpid, type="full") >= 1
    assert scrape.value("sdn_flow_mods_sent_total", dpid=lab.dpid, type="add") >= sum(
        on_switch.values())
    # audits run every second on a connected switch
    wait_for(lambda: lab.scrape().value("sdn_audit_duration_seconds_count", dpid=lab.dpid) >= 2,
             timeout=10, what="two audits counted")


def test_a_dhclient_lease_moves_the_dhcp_counters_and_logs_the_ack(lab):
    before = lab.scrape()
    lab.h_a1.dhclient()
    assert lab.h_a1.ips() == [lab.a1["address"]]
    after = lab.scrape()

    def moved(name, **labels):
        return after.value(name, **labels) - before.value(name, **labels)

    assert moved("sdn_dhcp_messages_total", type="DISCOVER", outcome="offer") >= 1
    assert moved("sdn_dhcp_messages_total", type="REQUEST", outcome="ack") >= 1
    assert moved("sdn_dhcp_lease_commits_total", outcome="committed") >= 1
    assert moved("sdn_dhcp_lease_commit_seconds_count") >= 1
    assert moved("sdn_packet_ins_total", dpid=lab.dpid, feature="dhcp") >= 2
    # the INFO line of the ACK, in the file given by --log-file; --debug adds the OFFER's line
    mac = lab.a1["mac"].lower()
    wait_for(lambda: f"INFO sdn.dhcp [-] DHCP ACK {lab.a1['address']} to {mac} (lease recorded)"
             in lab.log(), timeout=5, what="the ACK's INFO line in the log file")
    assert f"DEBUG sdn.dhcp [-] DHCP on {lab.dpid} port" in lab.log()
    # nothing of it went to stdout/stderr: the log file has it all (and no "Logging error")
    assert "DHCP ACK" not in lab.env.controller_log()
    assert "Traceback" not in lab.env.controller_log(), lab.env.controller_log()[-3000:]


def test_an_ignored_request_is_counted_and_logged_with_its_reason(lab):
    from scapy.layers.dhcp import BOOTP, DHCP
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    spoofed = "fa:16:3e:de:ad:01"
    before = lab.scrape()
    discover = (Ether(src=lab.a1["mac"], dst="ff:ff:ff:ff:ff:ff")
                / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67)
                / BOOTP(op=1, chaddr=bytes.fromhex(spoofed.replace(":", "")), xid=0x5d5d)
                / DHCP(options=[("message-type", "discover"), "end"]))
    send_frames(lab.h_a1, [discover] * 3)
    wait_for(lambda: lab.scrape().value("sdn_dhcp_messages_total", type="DISCOVER",
                                        outcome="ignored", reason="chaddr_mismatch")
             - before.value("sdn_dhcp_messages_total", type="DISCOVER", outcome="ignored",
                            reason="chaddr_mismatch") == 3, timeout=10,
             what="three ignored DISCOVERs counted")
    # one INFO line for the three (rate-limited per client), with the reason
    lines = [line for line in lab.log().splitlines()
             if f"DHCP ignored: DISCOVER chaddr {spoofed} is not the VIF's MAC" in line]
    assert len(lines) == 1 and " INFO " in lines[0], lines


def test_instance_plug_prints_no_warning(lab):
    alloc, host, plug = lab.launch("a2")
    assert plug.returncode == 0 and plug.stderr == "", plug.stderr
    assert plug.stdout.startswith(f"plugged {alloc['port_name']} (a2) into")
    # positive control: the port really is on the bridge
    ports = netlab.sh(["ovs-vsctl", "list-ports", lab.env.bridge.name]).stdout.split()
    assert alloc["port_name"] in ports
    unplug = lab.env.cli("instance", "unplug", "a2", "--bridge", lab.env.bridge.name)
    assert unplug.stderr == "", unplug.stderr


def test_cli_debug_keeps_stdout_the_answer_and_a_bad_log_file_is_one_line(lab):
    out = lab.env.cli("--debug", "network", "list", "--json")
    assert json.loads(out.stdout)[0]["label"].startswith("tenants")
    positive = subprocess.run([lab.env.sdn_exe, "--config-file", str(lab.env.config_file),
                               "--log-file", "/nonexistent/dir/x.log", "network", "list"],
                              capture_output=True, text=True, timeout=60)
    assert positive.returncode == 2
    assert positive.stderr.startswith("sdn: error: cannot open log file /nonexistent/dir/x.log")
    assert "Traceback" not in positive.stderr


# --------------------------------------------------------------------------- the Linux agent

FETCH = r"""
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
    sys.stdout.write(r.read().decode())
"""
AGENT_PORT = 9303    # the default; the agent listens in its own hypervisor namespace


def scrape_agent(env) -> Scrape:
    """GET the agent's /metrics inside the hypervisor namespace it runs in."""
    import sys

    text = env.hv.run([sys.executable, "-c", FETCH,
                       f"http://127.0.0.1:{AGENT_PORT}/metrics"]).stdout
    scrape = Scrape.__new__(Scrape)
    scrape.samples = [s for family in text_string_to_metric_families(text)
                      for s in family.samples]
    return scrape


def test_agent_metrics_on_the_linux_backend(make_sdn_env, netns_host, tmp_path):
    from tests.integration.backends import LinuxBackend

    linux = LinuxBackend(make_sdn_env, netns_host, tmp_path, dhcp_driver="scapy")
    try:
        env = linux.env(config={"DEFAULT": {"network_manager": "flatdhcp"},
                                "metrics": {"agent_port": AGENT_PORT}})
        bridge = linux.flat_bridge(env)
        env.cli("network", "create", "--label", "flat", "--fixed_range_v4", "10.39.0.0/26",
                "--network_size", "64", "--bridge", bridge)
        alloc, host = linux.launch(env, "m1", "p")
        linux.start(env)
        wait_for(lambda: "agent metrics on http://127.0.0.1:9303/metrics" in env.hv.log(),
                 timeout=10, what="the agent to serve its metrics")
        first = scrape_agent(env)
        assert first.value("sdn_agent_reconciles_total", outcome="changed") >= 1
        assert first.value("sdn_agent_reconcile_duration_seconds_count") >= 1
        assert first.value("sdn_agent_rules", type="ipv4") > 0
        assert first.value("sdn_agent_rules", type="eb") > 0          # the VIF's anti-spoofing
        assert first.value("sdn_agent_table_restores_total") >= 1
        assert first.value("sdn_agent_dhcp_lease_events_total") == 0
        host.dhclient()
        assert host.ips() == [alloc["address"]]
        wait_for(lambda: scrape_agent(env).value("sdn_agent_dhcp_lease_events_total",
                                                 type="lease", outcome="recorded") >= 1,
                 timeout=10, what="the raw-socket lease counted by the agent")
    finally:
        linux.close()
