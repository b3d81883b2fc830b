"""Bandwidth limits per VIF (issue 15), on both backends: iperf3 through a 20 Mbit/s limit
measures 20 Mbit/s ± 10 % in each direction; an unlimited instance is not held to it; removing
the limit lifts it.

OVS: kbit/s meters (``sdn.flows.qos``); Linux: tc on the tap (``sdn.linux.tc``). Rates are the
receiver's (``sum_received``), the median of ``RUNS`` short runs, the first second of each
omitted (TCP's start, the policer's burst). The measured medians are printed (``-s``).
"""

from __future__ import annotations

import json
import statistics
import subprocess

from tests.integration.netlab import wait_for

LIMIT_KBPS = 20_000
RUNS = 3
SECONDS = 3
FIXED = "10.77.0.0/24"


def _iperf(client, server_ip: str, reverse: bool) -> float:
    """Mbit/s received in one run from ``client`` to ``server_ip`` (``reverse``: to client)."""
    out = client.run(["iperf3", "-c", server_ip, "-t", str(SECONDS), "-O", "1", "-J"]
                     + (["-R"] if reverse else []), timeout=SECONDS + 20)
    return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6


def _median(client, server_ip: str, reverse: bool, runs: int = RUNS) -> float:
    return statistics.median(_iperf(client, server_ip, reverse) for _ in range(runs))


class QosLab:
    """Flat network; q1 limited to 20 Mbit/s both ways, q2 the iperf3 server, q3 unlimited."""

    def __init__(self, backend):
        self.backend = backend
        self.env = env = backend.env(config={"DEFAULT": {"network_manager": "flatdhcp"}})
        env.cli("network", "create", "--label", "qos", "--fixed_range_v4", FIXED,
                "--bridge", backend.flat_bridge(env))
        self.alloc, self.host = {}, {}
        for name in ("q1", "q2", "q3"):
            extra = (["--rx-kbps", str(LIMIT_KBPS), "--tx-kbps", str(LIMIT_KBPS)]
                     if name == "q1" else [])
            alloc = env.cli_json("instance", "launch", name, "--project", "alpha", *extra)
            self.alloc[name], self.host[name] = backend.plug(env, alloc)
            self.host[name].set_ip(f"{alloc['address']}/24")
        backend.start(env)
        self.ip = {n: a["address"] for n, a in self.alloc.items()}
        wait_for(lambda: all(self.host[n].ping(self.ip["q2"]) for n in ("q1", "q3")), 20,
                 what="q1 and q3 to reach q2")
        self.server = self.host["q2"].popen(["iperf3", "-s"], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
        wait_for(lambda: self.host["q2"].run(["ss", "-ltn", "sport", "= :5201"]).stdout.count("LISTEN"),
                 10, what="iperf3 server")

    def rates(self, name: str, runs: int = RUNS) -> tuple[float, float]:
        """(sends, receives) medians of instance ``name`` with q2, Mbit/s."""
        return (_median(self.host[name], self.ip["q2"], False, runs),
                _median(self.host[name], self.ip["q2"], True, runs))

    def close(self):
        self.server.terminate()
        self.server.wait(timeout=10)


def test_twenty_mbits_each_way_and_unlimited_unaffected(backend):
    lab = QosLab(backend)
    try:
        assert lab.env.cli_json("instance", "show", "q1")["rx_kbps"] == LIMIT_KBPS
        sends, receives = lab.rates("q1")
        free_sends, free_receives = lab.rates("q3", runs=1)   # far from the limit: one run
        print(f"\n[{backend.name}] limited 20 Mbit/s: sends {sends:.1f}, receives {receives:.1f}; "
              f"(medians of {RUNS}); unlimited: sends {free_sends:.1f}, receives "
              f"{free_receives:.1f} Mbit/s")
        assert 18 <= sends <= 22, f"q1 sends {sends:.1f} Mbit/s through a 20 Mbit/s limit"
        assert 18 <= receives <= 22, f"q1 receives {receives:.1f} Mbit/s through a 20 Mbit/s limit"
        assert free_sends > 40 and free_receives > 40, (free_sends, free_receives)
        # the limit removed: q1 is as free as q3
        lab.env.cli("instance", "set-bandwidth", "q1", "--rx-kbps", "0", "--tx-kbps", "0")
        backend.wait_synced(lab.env)
        lifted = _median(lab.host["q1"], lab.ip["q2"], False, runs=1)
        print(f"[{backend.name}] limit removed: sends {lifted:.1f} Mbit/s")
        assert lifted > 40, lifted
    finally:
        lab.close()
