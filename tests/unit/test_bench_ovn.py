"""The OVN comparison's arithmetic (benchmarks/bench_ovn.py, benchmarks/ovn.py) without OVN:
a ratio only from >= 3 alternating pairs, "1 run" otherwise, verdicts against the issue's
targets, the port and OVSDB helpers' errors."""

import json
import socket
import threading

import pytest

from benchmarks import bench_ovn, lib, ovn


def _run(seconds, rss, port_up=None, restart=None):
    r = {"wiring": {"vifs": 1000, "seconds": seconds, "flows": 1, "flows_per_port": 32.0,
                    "rss_mb": rss}}
    if port_up:
        r["port_up"] = {"ack": bench_ovn._percentiles(port_up),
                        "installed": bench_ovn._percentiles(port_up)}
    if restart:
        r["restart"] = restart
    return r


def _ovn_rss(total):
    return {"northd": 1, "controller": 2, "nb": 3, "sb": 4, "total": total}


def test_ratio_only_from_three_pairs_median_and_spread():
    entry = {"ovn": [_run(12.0, _ovn_rss(250)), _run(11.0, _ovn_rss(251)), _run(13.0, _ovn_rss(252))],
             "sdn": [_run(1.0, 100), _run(2.0, 101), _run(1.0, 99)]}
    s = bench_ovn.summarize(entry)
    assert s["wiring_ratio"] == {"runs": [12.0, 5.5, 13.0], "median": 12.0, "min": 5.5, "max": 13.0}
    assert "wiring_ratio_one_run" not in s
    assert s["ovn_rss_mb"]["median"] == 251 and s["sdn_rss_mb"]["median"] == 100


def test_one_pair_is_reported_as_one_run_not_a_median():
    s = bench_ovn.summarize({"ovn": [_run(200.0, _ovn_rss(1000))], "sdn": [_run(10.0, 150)]})
    assert s["wiring_ratio_one_run"] == 20.0 and "wiring_ratio" not in s
    rows = bench_ovn.table_rows({"sizes": {"5000": {"ovn": [], "sdn": [], "summary": s}}, "seconds": 1})
    wiring = rows[0]
    assert "(1 run)" in wiring[1] and "(1 run)" in wiring[3] and wiring[4] == ">=10 MET"


def test_failed_ovn_run_is_not_met_and_keeps_the_sdn_numbers():
    entry = {"ovn": [{"error": "TimeoutError: flow count still changing"}], "sdn": [_run(10.0, 150)]}
    entry["summary"] = bench_ovn.summarize(entry)
    rows = bench_ovn.table_rows({"sizes": {"5000": entry}, "seconds": 1})
    assert rows[0][2].startswith("error: TimeoutError") and "NOT MET" in rows[0][4]
    assert rows[0][1] == "10.0 s (1 run)"


def test_port_up_p99_target_at_10k_and_ratio_to_ovn():
    fast = [0.02] * 9 + [0.09]
    entry = {"ovn": [_run(12.0, _ovn_rss(250), port_up=[0.5] * 10)],
             "sdn": [_run(1.0, 100, port_up=fast)]}
    entry["summary"] = bench_ovn.summarize(entry)
    rows = bench_ovn.table_rows({"sizes": {"1000": entry}, "seconds": 1})
    up = next(r for r in rows if "first DHCPACK" in r[0])
    assert up[3] == f"{0.5 / 0.09:.1f}" and up[4] == ">=5x MET"
    entry = {"ovn": [], "sdn": [_run(1.0, 100, port_up=[0.02] * 9 + [0.15])]}
    entry["summary"] = bench_ovn.summarize(entry)
    up = next(r for r in bench_ovn.table_rows({"sizes": {"10000": entry}, "seconds": 1})
              if "first DHCPACK" in r[0])
    assert up[4] == "p99<=100 ms NOT MET"


def test_restart_rows_compare_with_ovn():
    ovn_r = {"lost": 85, "lost_seconds": 0.85, "resync_seconds": 1.6, "ping_sent": 1200}
    sdn_r = {"lost": 0, "lost_seconds": 0.0, "resync_seconds": 0.8, "ping_sent": 1200}
    sizes = {"1000": {"ovn": [_run(12.0, _ovn_rss(250), restart=ovn_r)], "sdn": [_run(1.0, 100)]},
             "10000": {"ovn": [], "sdn": [_run(5.0, 180, restart=sdn_r)]}}
    for e in sizes.values():
        e["summary"] = bench_ovn.summarize(e)
    rows = bench_ovn.table_rows({"sizes": sizes, "seconds": 1})
    lost = next(r for r in rows if r[0].startswith("kill -9"))
    assert lost[4] == "0 MET" and "@1,000: lost 85" in lost[2]
    resync = next(r for r in rows if "resynced" in r[0])
    assert resync[4] == "faster MET" and resync[3] == "2.0"


def test_percentiles_nearest_rank():
    p = bench_ovn._percentiles([0.3, 0.1, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert (p["p50"], p["p99"], p["max"], p["n"]) == (0.55, 1.0, 1.0, 10)


def test_ports_refuse_a_too_small_network():
    assert ovn.ports(2, "10.90.0.0/24")[1] == ovn.LogicalPort("lp1", "lpv1", "0a:00:00:00:00:01", "10.90.0.11")
    with pytest.raises(ValueError, match="room for 245 ports"):
        ovn.ports(300, "10.90.0.0/24")
    with pytest.raises(ValueError, match="lab name"):
        ovn.OvnLab(lib.Cleanup(), "/nonexistent", name="Bad-Name")


def _one_reply_server(path, reply):
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def serve():
        conn, _ = srv.accept()
        conn.recv(1 << 16)
        for part in reply:
            conn.sendall(part)
        conn.close()
        srv.close()
    threading.Thread(target=serve, daemon=True).start()


def test_transact_reads_a_split_reply_and_names_the_failing_operation(tmp_path):
    ok = json.dumps({"id": 0, "result": [{"uuid": ["uuid", "x"]}], "error": None}).encode()
    _one_reply_server(tmp_path / "a.sock", [b'{"method":"echo","params":[],"id":"echo"}', ok[:7], ok[7:]])
    assert ovn.transact(tmp_path / "a.sock", "db", [{"op": "insert"}]) == [{"uuid": ["uuid", "x"]}]
    bad = json.dumps({"id": 0, "result": [{}, {"error": "constraint violation", "details": "dup"}],
                      "error": None}).encode()
    _one_reply_server(tmp_path / "b.sock", [bad])
    with pytest.raises(RuntimeError, match=r"operation 1 \(mutate\) failed: constraint violation: dup"):
        ovn.transact(tmp_path / "b.sock", "db", [{"op": "insert"}, {"op": "mutate"}])
