"""The sdn demo story on the Linux backend (network_driver = linux), FlatDHCP mode, no OVS.

    .venv/bin/python demo/linux_demo.py            # `make demo-linux`; needs root

Story: fresh state in var/linux-demo, ``sdn db sync``, one flat network on Linux bridge
``brflat``, floating IPs; a *hypervisor* network namespace runs ``sdn agent`` (Linux bridge,
dnsmasq with ``sdn dhcp-bridge``, nova's iptables, ebtables anti-spoof); instances of projects
alpha and beta are namespaces whose veth lands in the hypervisor; an *outside* namespace sits
on the public interface. Checks: every instance leased its address with a real dhclient (and
state shows it leased), instances ping each other (flat: one shared network), a spoofed
source address from an instance is dropped while a control gets through, the outside reaches a
floating IP and sees instances without one as routing_source_ip. Prints a report and the
hypervisor's iptables-save, removes everything it made (by name and pid) and exits 1 if an
expectation failed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from tests.integration.backends import Hypervisor  # noqa: E402
from tests.integration.netlab import (NetnsHost, find_sdn_exe, random_suffix, sh, wait_for,  # noqa: E402
                                      write_sdn_conf)

RSIP, OUTSIDE, INTERNET = "172.29.0.2", "172.29.0.1", "172.29.0.10"  # OUTSIDE is metadata_host (never SNATed)
FIXED, FLOATING = "10.29.0.0/24", "172.29.0.64/28"


def log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def main() -> int:
    if os.geteuid() != 0:
        log("needs root (network namespaces)")
        return 2
    work = REPO_ROOT / "var" / "linux-demo"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    pub = "sdnpub" + random_suffix(4)
    conf = write_sdn_conf(work / "sdn.conf", {
        "DEFAULT": {"network_manager": "flatdhcp", "network_driver": "linux", "state_path": str(work),
                    "public_interface": pub, "routing_source_ip": RSIP, "metadata_host": OUTSIDE,
                    "floating_range": FLOATING, "fixed_range": FIXED, "dnsmasq_user": "root",
                    "agent_poll_interval": 0.2},
        "database": {"connection": f"sqlite:///{work / 'sdn.sqlite'}"}})
    exe = find_sdn_exe(REPO_ROOT)

    def cli(*args):
        return sh([exe, "--config-file", str(conf), *args]).stdout

    hv, hosts, outside = None, [], None
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        log(f"{'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            failures.append(what)

    try:
        cli("db", "sync")
        cli("network", "create", "--label", "flat", "--fixed_range_v4", FIXED, "--bridge", "brflat")
        cli("floating", "create", FLOATING)
        hv = Hypervisor(work)
        outside = NetnsHost(port_name=pub, name=f"sdnout-{random_suffix(4)}", workdir=work / "outside")
        sh(["ip", "link", "set", pub, "netns", hv.name])
        hv.run(["ip", "addr", "add", f"{RSIP}/24", "dev", pub])
        hv.run(["ip", "link", "set", pub, "up"])
        outside.set_ip(f"{OUTSIDE}/24")
        outside.set_ip(f"{INTERNET}/24")
        outside.run(["ip", "route", "add", FIXED, "via", RSIP])
        instances = {}
        for name, project in (("a1", "alpha"), ("a2", "alpha"), ("b1", "beta")):
            alloc = json.loads(cli("instance", "launch", name, "--project", project, "--json"))
            host = NetnsHost(port_name=alloc["port_name"], mac=alloc["mac"], name=f"sdndemo-{name}-{random_suffix(4)}",
                             workdir=work / name)
            hosts.append(host)
            sh(["ip", "link", "set", alloc["port_name"], "netns", hv.name])
            instances[name] = (alloc, host)
        hv.start_agent(exe, conf)
        wait_for(lambda: all(hv.master_of(a["port_name"]) == "brflat" for a, _ in instances.values()),
                 timeout=20, what="the agent to plug every instance")
        for name, (alloc, host) in instances.items():
            host.dhclient()
            check(host.ips() == [alloc["address"]], f"{name} leased {alloc['address']} from dnsmasq")
        wait_for(lambda: {r["address"] for r in json.loads(cli("fixed", "list", "--json")) if r["leased"]}
                 >= {a["address"] for a, _ in instances.values()}, timeout=10, what="leases in state")
        check(True, "sdn dhcp-bridge recorded every lease in state")
        (a1, h1), (a2, h2), (b1, hb) = instances.values()
        check(h1.ping(a2["address"]) and h1.ping(b1["address"]), "flat: a1 pings a2 and b1")
        # anti-spoof: a1 pretends to be 10.29.0.200; only the control arrives
        h1.run(["ip", "addr", "add", "10.29.0.200/24", "dev", "eth0"])
        check(not h1.run(["ping", "-c", "1", "-W", "1", "-I", "10.29.0.200", a2["address"]],
                         check=False).returncode == 0, "a spoofed source address from a1 is dropped")
        check(h1.ping(a2["address"]), "a1's own address still works")
        h1.run(["ip", "addr", "del", "10.29.0.200/24", "dev", "eth0"])
        fip = cli("floating", "allocate", "--project", "alpha").strip()
        cli("floating", "associate", fip, "--instance", "a1", "--project", "alpha")
        wait_for(lambda: outside.ping(fip, count=1, timeout=1), timeout=15, what="the floating IP")
        check(True, f"outside pings a1 at floating IP {fip}")
        tcpdump = outside.capture(f"icmp and src host {RSIP}")
        check(h2.ping(INTERNET), "a2 (no floating IP) reaches the outside")
        seen = tcpdump.wait_count(1)
        check(bool(seen), f"the outside sees a2 as routing_source_ip {RSIP} (default SNAT)")
        log("hypervisor iptables-save:")
        print(hv.iptables_save(), flush=True)
    except Exception as err:  # noqa: BLE001 - report, clean up, exit 2
        log(f"demo could not run: {err}")
        if hv is not None:
            print(hv.log()[-3000:])
        return 2
    finally:
        for host in hosts:
            host.close()
        if outside is not None:
            outside.close()
        if hv is not None:
            hv.close()
    log(f"{'all checks passed' if not failures else f'{len(failures)} checks FAILED'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
