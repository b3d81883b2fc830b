"""Fast paths added for the benchmarks (issue 6): packet-out bytes equal os-ken's, batched lease
writes keep nova semantics in one transaction, and the raw-socket server binds by chaddr and
sends ACKs only after their leases are recorded."""

from __future__ import annotations

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser
from scapy.layers.dhcp import DHCP

from sdn import leases
from sdn.apps import ofmsgs
from sdn.state import StateSource
from sdn.db import api
from sdn.dhcp import LeaseEvent
from sdn.dhcp import rawsocket
from sdn.dhcp.server import DhcpBinding
from tests.unit.test_dhcp_packet import MAC, craft, dissect
from tests.unit.test_dhcp_server import BINDING, NET
from tests.unit.test_manager import fixed

pytestmark = pytest.mark.both_databases  # every test using the database runs on SQLite and PostgreSQL


class _FakeDp:
    ofproto = ofp
    ofproto_parser = parser
    id = 1


@pytest.mark.parametrize("port,xid,size", [(1, 0, 300), (0xFFFFFF00, 7, 1), (42, 0xFFFFFFFF, 1500)])
def test_packet_out_bytes_equal_os_ken(port, xid, size):
    data = bytes(range(256)) * 6
    data = data[:size]
    msg = ofmsgs.packet_out(_FakeDp(), port, data)
    msg.set_xid(xid)
    msg.serialize()
    assert ofmsgs.packet_out_bytes(port, data, xid) == bytes(msg.buf)


def _state(engine, mgr):
    return StateSource(engine, mgr, domain="novalocal", lease_time=120, mtu=None)


def _two_instances(make_manager, engine):
    """A FlatDHCP network with instances a and b allocated: (manager, a, b, StateSource)."""
    mgr = make_manager("flatdhcp")
    mgr.create_networks("f", "10.5.0.0/24")
    a = mgr.allocate_for_instance("a", "p")
    b = mgr.allocate_for_instance("b", "p")
    return mgr, a, b, _state(engine, mgr)


def test_batch_lease_events_one_transaction(make_manager, engine):
    mgr, a, b, state = _two_instances(make_manager, engine)
    before = api.current_revision(engine)
    results = state.apply_lease_events([
        LeaseEvent("lease", a["address"], a["mac"]),
        LeaseEvent("lease", "10.5.0.200", a["mac"]),          # not associated: rejected alone
        LeaseEvent("lease", b["address"], "02:00:00:00:00:99"),  # MAC mismatch: rejected alone
        LeaseEvent("lease", b["address"], b["mac"]),
    ])
    assert [type(r).__name__ if r else None for r in results] == [
        None, "FixedIpNotAssociated", "FixedIpMacMismatch", None]
    assert fixed(engine, a["address"]).leased and fixed(engine, b["address"]).leased
    # leases change nothing a view shows: no revision bump, so no controller reloads state
    assert api.current_revision(engine) == before
    # release after deallocation disassociates, as NetworkManager.release_fixed_ip does
    mgr.deallocate_for_instance("a")
    before = api.current_revision(engine)
    assert state.apply_lease_events([LeaseEvent("release", a["address"], a["mac"])]) == [None]
    assert api.current_revision(engine) == before + 1           # the view lost a1's address
    ip = fixed(engine, a["address"])
    assert (ip.leased, ip.instance_uuid) == (False, None)


@pytest.mark.parametrize("path", ["_record_leases_sqlite", "_record_leases_core", "_orm"])
def test_lease_batch_paths_agree(make_manager, engine, path):
    """The pysqlite and Core lease paths (PostgreSQL takes Core) and the ORM path of mixed
    batches give the same results and rows: leased, updated_at a datetime of now, one
    transaction, no revision bump; unknown addresses are rejected alone."""
    import datetime
    if path == "_record_leases_sqlite" and engine.dialect.name != "sqlite":
        pytest.skip("the pysqlite path runs on SQLite only")

    mgr, a, b, state = _two_instances(make_manager, engine)
    before = api.current_revision(engine)
    events = [LeaseEvent("lease", a["address"], a["mac"].upper()),
              LeaseEvent("lease", "10.9.9.9", a["mac"]),                # no such fixed IP
              LeaseEvent("lease", a["address"], a["mac"]),              # repeated in the batch
              LeaseEvent("lease", b["address"], "02:00:00:00:00:99")]   # MAC mismatch
    t0 = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    if path == "_orm":   # a release of an unknown address sends the batch down the ORM path
        results = state.apply_lease_events(events + [LeaseEvent("release", "10.9.9.8", "")])[:-1]
    else:
        results = getattr(leases, path)(engine, events)
    assert [type(r).__name__ if r else None for r in results] == [
        None, "FixedIpNotFound", None, "FixedIpMacMismatch"]
    ip = fixed(engine, a["address"])
    assert ip.leased and t0 <= ip.updated_at <= t0 + datetime.timedelta(seconds=30)
    assert not fixed(engine, b["address"]).leased
    assert api.current_revision(engine) == before


def test_batch_handler_binds_by_chaddr_and_holds_acks():
    other = DhcpBinding(mac="02:00:00:00:00:02", address="10.0.0.6", hostname="vm-2", network=NET)
    handler = rawsocket.BatchHandler({bytes.fromhex(MAC.replace(":", "")): BINDING,
                                      bytes.fromhex("020000000002"): other})
    frames = [craft("discover"),
              craft("discover", chaddr="02:00:00:00:00:02"),
              craft("discover", chaddr="02:00:00:00:00:77"),   # unknown client: silence
              craft("request", options=[("server_id", "10.0.0.1"), ("requested_addr", "10.0.0.5")])]
    now, events, after = handler.handle(frames, 0.0)
    offers = [dissect(f) for f in now]
    assert [o["BOOTP"].yiaddr for o in offers] == ["10.0.0.5", "10.0.0.6"]
    assert events == [LeaseEvent("lease", "10.0.0.5", MAC.lower())]
    assert len(after) == 1
    assert after[0][0] == events[0]
    assert ("message-type", 5) in dissect(after[0][1])[DHCP].options   # ACK


def test_bindings_by_chaddr_only_vifs_with_addresses(make_manager, engine):
    mgr = make_manager("flatdhcp")
    mgr.create_networks("f", "10.5.0.0/24")
    a = mgr.allocate_for_instance("a", "p")
    view = api.load_views(engine)
    got = rawsocket.bindings_by_chaddr(view)
    assert got[bytes.fromhex(a["mac"].replace(":", ""))].address == a["address"]
    assert rawsocket.bindings_by_chaddr(view, [999]) == {}


def test_chaddr_of_and_filter():
    frame = craft("discover")
    assert rawsocket.chaddr_of(frame) == bytes.fromhex(MAC.replace(":", ""))
    assert rawsocket.is_dhcp_request(frame)
    assert not rawsocket.is_dhcp_request(frame[:20])
    assert rawsocket.chaddr_of(b"\x00" * 10) is None


class _FakeSock:
    def __init__(self, frames, log):
        import os
        self.frames, self.log = list(frames), log
        self.r, w = os.pipe()       # readable, so select() returns at once
        os.write(w, b"x")

    def fileno(self):
        return self.r

    def recvfrom(self, _n, _flags=0):
        if not self.frames:
            raise BlockingIOError
        return self.frames.pop(0), ("veth", 0x0800, 0, 1, b"")

    def send(self, data):
        self.log.append(("send", dissect(data)[DHCP].options[0][1]))


def test_raw_server_sends_acks_only_after_commit():
    log = []
    frames = [craft("request", options=[("server_id", "10.0.0.1"), ("requested_addr", "10.0.0.5")]),
              craft("discover")]
    server = rawsocket.RawSocketServer(
        {"veth": {bytes.fromhex(MAC.replace(":", "")): BINDING}},
        record=lambda events: log.append(("commit", len(events))),
        sockets={"veth": _FakeSock(frames, log)})
    assert server.serve_once() == 2
    assert log == [("send", 2), ("commit", 1), ("send", 5)]   # OFFER now, ACK after commit


def test_raw_server_withholds_acks_when_commit_fails():
    log = []

    def broken(_events):
        raise RuntimeError("database is locked")
    frames = [craft("request", options=[("server_id", "10.0.0.1"), ("requested_addr", "10.0.0.5")])]
    server = rawsocket.RawSocketServer({"veth": {bytes.fromhex(MAC.replace(":", "")): BINDING}},
                                       record=broken, sockets={"veth": _FakeSock(frames, log)})
    server.serve_once()
    assert log == []


def test_serve_forever_commits_on_a_thread_and_acks_after_commit():
    import threading
    log = []
    frames = [craft("request", options=[("server_id", "10.0.0.1"), ("requested_addr", "10.0.0.5")]),
              craft("discover")]
    sock = _FakeSock(frames, log)
    threads = []

    def record(events):
        threads.append(threading.current_thread())
        log.append(("commit", len(events)))
    server = rawsocket.RawSocketServer({"veth": {bytes.fromhex(MAC.replace(":", "")): BINDING}},
                                       record=record, sockets={"veth": sock})
    server.serve_forever(lambda: not sock.frames)
    # the OFFER went out from the loop; the ACK only after its commit, from the commit thread
    assert log == [("send", 2), ("commit", 1), ("send", 5)]
    assert threads[0] is not threading.current_thread()
    assert server.served == 2


def test_committer_groups_what_queues_during_a_commit_and_drops_acks_of_a_failed_one():
    import threading
    first_in, release = threading.Event(), threading.Event()
    commits, sent = [], []

    def record(events):
        commits.append(list(events))
        if len(commits) == 1:
            first_in.set()
            release.wait(5)
        if "fail" in events:
            raise RuntimeError("disk full")
    committer = rawsocket._Committer(record)
    committer.submit(["a"], [(sent.append, b"A", None)])
    assert first_in.wait(5)
    committer.submit(["b"], [(sent.append, b"B", None)])
    committer.submit(["c"], [])          # a RELEASE: an event without a reply
    assert sent == []                    # nothing acknowledged before its commit returned
    release.set()
    committer.close()
    assert commits == [["a"], ["b", "c"]]            # one transaction for all that queued
    assert sent == [b"A", b"B"]
    committer = rawsocket._Committer(record)
    committer.submit(["fail"], [(sent.append, b"F", None)])
    committer.close()
    assert sent == [b"A", b"B"]                      # failed commit: its ACK is never sent


def test_events_arriving_within_the_linger_share_one_transaction():
    """Group commit: what is submitted during the linger after the first event is recorded in
    the same ``record`` call, on both commit threads (raw socket and OpenFlow); with no
    linger each arrives alone (the positive control)."""
    import threading
    import time

    from sdn.apps.dhcp_punt import LeaseCommitter
    from sdn.dhcp.server import LeaseEvent
    for linger, expected in ((0.3, [["a", "b", "c"]]), (0, [["a"], ["b"], ["c"]])):
        commits, sent = [], []
        committer = rawsocket._Committer(lambda events: commits.append(list(events)), linger=linger)
        for name in "abc":
            committer.submit([name], [(sent.append, name.upper().encode(), None)])
            time.sleep(0.05)
        committer.close()
        assert commits == expected and sent == [b"A", b"B", b"C"]

        batches, done = [], threading.Event()

        def record(events, batches=batches, done=done):
            batches.append([e.address for e in events])
            if sum(map(len, batches)) == 3:
                done.set()
            return [None] * len(events)
        punt = LeaseCommitter(record, linger=linger)
        for name in "abc":
            punt.submit(LeaseEvent("lease", name, "02:00:00:00:00:01"), None, None)
            time.sleep(0.05)
        assert done.wait(5)
        assert batches == expected


def test_packet_out_bytes_refuses_what_no_openflow_message_can_carry():
    assert len(ofmsgs.packet_out_bytes(1, bytes(ofmsgs.PACKET_OUT_MAX_DATA))) == 0xFFFF
    with pytest.raises(ValueError, match="does not fit one OpenFlow message"):
        ofmsgs.packet_out_bytes(1, bytes(ofmsgs.PACKET_OUT_MAX_DATA + 1))


class _FailingSock(_FakeSock):
    """A socket whose send fails as the kernel does for an oversize frame (EMSGSIZE) while
    ``fail`` holds, and whose recv may fail as for a vanished interface (ENETDOWN)."""

    def __init__(self, frames, log, fail_send=True, fail_recv=False):
        super().__init__(frames, log)
        self.fail_send, self.fail_recv, self.closed = fail_send, fail_recv, False

    def recvfrom(self, n, flags=0):
        if self.fail_recv:
            raise OSError(100, "Network is down")
        return super().recvfrom(n, flags)

    def send(self, data):
        if self.fail_send:
            raise OSError(90, "Message too long")
        super().send(data)

    def close(self):
        self.closed = True


SELECT = [("server_id", "10.0.0.1"), ("requested_addr", "10.0.0.5")]


def test_failed_sends_cost_their_packet_only_and_the_commit_thread_lives_on():
    log, commits = [], []
    sock = _FailingSock([craft("discover"), craft("request", options=SELECT)], log)
    server = rawsocket.RawSocketServer({"veth": {bytes.fromhex(MAC.replace(":", "")): BINDING}},
                                       record=commits.append, sockets={"veth": sock})
    server.serve_forever(lambda: not sock.frames)     # OFFER and ACK both fail to send
    assert server.send_errors == 2 and server.served == 0 and len(commits) == 1
    sock.fail_send = False
    sock.frames = [craft("discover"), craft("request", options=SELECT)]
    server.serve_forever(lambda: not sock.frames)     # same server: serves again
    assert log == [("send", 2), ("send", 5)] and server.served == 2


def test_committer_survives_a_failing_ack_send():
    sent = []

    def broken(_reply):
        raise OSError(90, "Message too long")
    committer = rawsocket._Committer(lambda _events: None)
    committer.submit(["a"], [(broken, b"A", None)])
    committer.submit(["b"], [(sent.append, b"B", None)])
    committer.close()
    assert sent == [b"B"] and committer.send_errors == 1 and committer.acked == 1


def test_a_failing_socket_is_closed_and_the_others_keep_serving():
    log = []
    bad = _FailingSock([craft("discover")], [], fail_send=False, fail_recv=True)
    good = _FakeSock([craft("discover")], log)
    binding = {bytes.fromhex(MAC.replace(":", "")): BINDING}
    server = rawsocket.RawSocketServer({"tapbad": binding, "tapgood": binding},
                                       sockets={"tapbad": bad, "tapgood": good})
    server.RETRY_S = 3600                   # no reopening of the real (absent) interface here
    assert server.serve_once() == 1
    assert bad.closed and "tapbad" not in server.ports and server.recv_errors == 1
    assert log == [("send", 2)]


def test_batch_handler_answers_only_the_bindings_of_its_port():
    """Per-port bindings (bindings_by_port): a chaddr bound to another port gets nothing."""
    other = DhcpBinding(mac="02:00:00:00:00:02", address="10.0.0.6", hostname="vm-2", network=NET)
    on_a = rawsocket.BatchHandler({bytes.fromhex(MAC.replace(":", "")): BINDING})
    release_of_b = craft("release", chaddr=other.mac, ciaddr=other.address)
    assert on_a.handle([release_of_b], 0.0) == ([], [], [])
    assert on_a.unknown == 1
    mine = craft("release", ciaddr=BINDING.address)
    assert on_a.handle([mine], 0.0) == ([], [LeaseEvent("release", "10.0.0.5", MAC.lower())], [])


def test_bindings_by_port_keys_each_vif_by_its_tap(make_manager, engine):
    mgr = make_manager("flatdhcp")
    mgr.create_networks("f", "10.5.0.0/24")
    a = mgr.allocate_for_instance("a", "p")
    b = mgr.allocate_for_instance("b", "p")
    view = api.load_views(engine)
    got = rawsocket.bindings_by_port(view)
    by_mac = {vif.mac: vif for vif in view.vifs}
    assert set(got) == {by_mac[a["mac"]].port_name, by_mac[b["mac"]].port_name}
    only = got[by_mac[a["mac"]].port_name]
    assert list(only) == [bytes.fromhex(a["mac"].replace(":", ""))]
    assert only[bytes.fromhex(a["mac"].replace(":", ""))].address == a["address"]


def test_raw_committer_sends_no_ack_for_a_lease_state_refused():
    """Write-ahead on the raw socket too: a lease that fails nova's checks (stale binding, MAC
    mismatch) is not recorded, so its ACK must not leave; the other ACK of the batch does."""
    import time as _time
    ok, bad = LeaseEvent("lease", "10.0.0.5", MAC), LeaseEvent("lease", "10.0.0.6", MAC)
    sent: list[bytes] = []
    committer = rawsocket._Committer(lambda events: [None if e is ok else ValueError("refused")
                                                     for e in events])
    committer.submit([ok, bad], [(sent.append, b"ACK-ok", ok), (sent.append, b"ACK-bad", bad)])
    deadline = _time.monotonic() + 5
    while not sent and _time.monotonic() < deadline:
        _time.sleep(0.01)
    committer.close()
    assert sent == [b"ACK-ok"]
