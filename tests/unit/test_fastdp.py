"""The packet-in fast path: struct decoding agrees with os-ken, and a real TCP connection
served by FastDatapath answers a DHCP-style packet-in through the hook."""

from __future__ import annotations

import socket
import struct
import threading

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from sdn.apps import fastdp


def packet_in(cookie: int, fields: list[tuple[int, bytes]], data: bytes, xid: int = 7) -> bytes:
    """An OpenFlow 1.3 packet-in as OVS sends it (OXM match, padded, 2 pad bytes, frame)."""
    oxms = b"".join(struct.pack("!I", header) + value for header, value in fields)
    match = struct.pack("!HH", ofp.OFPMT_OXM, 4 + len(oxms)) + oxms
    match += b"\0" * (-len(match) % 8)
    body = struct.pack("!IHBBQ", ofp.OFP_NO_BUFFER, len(data), ofp.OFPR_ACTION, 20, cookie)
    body += match + b"\0\0" + data
    return struct.pack("!BBHI", ofp.OFP_VERSION, ofp.OFPT_PACKET_IN, 8 + len(body), xid) + body


IN_PORT = (0x8000 << 16) | (0 << 9) | 4
REG5 = (0x0001 << 16) | (5 << 9) | 4          # NXM_NX_REG5, as OVS adds pipeline fields
METADATA = (0x8000 << 16) | (2 << 9) | 8


@pytest.mark.parametrize("fields", [
    [(IN_PORT, struct.pack("!I", 9))],
    [(METADATA, b"\0" * 7 + b"\1"), (IN_PORT, struct.pack("!I", 0xFFFFFF00))],
    [(REG5, struct.pack("!I", 3)), (IN_PORT, struct.pack("!I", 2))],
    [(REG5, struct.pack("!I", 3))],
])
@pytest.mark.parametrize("size", [0, 1, 60, 342, 1500])
def test_parse_packet_in_agrees_with_os_ken(fields, size):
    data = bytes(range(256)) * 6
    data = data[:size]
    wire = b"junk" + packet_in(0x5D04000000000123, fields, data)
    cookie, in_port, frame = fastdp.parse_packet_in(wire, 4, len(wire) - 4)
    msg = parser.OFPPacketIn.parser(None, ofp.OFP_VERSION, ofp.OFPT_PACKET_IN, len(wire) - 4, 7,
                                    wire[4:])
    assert (cookie, in_port, frame) == (msg.cookie, msg.match.get("in_port"), bytes(msg.data))


def test_parse_packet_in_rejects_truncated():
    wire = packet_in(1, [(IN_PORT, struct.pack("!I", 1))], b"")
    assert fastdp.parse_packet_in(wire, 0, 20) is None
    bad = bytearray(wire)
    struct.pack_into("!H", bad, 26, 200)          # match length beyond the message
    assert fastdp.parse_packet_in(bytes(bad), 0, len(bad)) is None


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "connection closed"
        out += chunk
    return out


def _recv_msg(sock: socket.socket) -> bytes:
    head = _recv_exactly(sock, 8)
    return head + _recv_exactly(sock, struct.unpack("!H", head[2:4])[0] - 8)


def test_fast_datapath_answers_packet_ins_in_one_read():
    """Two packet-ins in one TCP segment: both reach the hook, their replies come back as
    one write; the hook's None sends the message on os-ken's way (here: nothing breaks)."""
    seen = []

    def hook(dp, cookie, in_port, frame):
        seen.append((cookie, in_port, frame))
        return None if cookie == 0 else b"REPLY" + bytes([in_port])

    fastdp.install(hook)
    listener = socket.create_server(("127.0.0.1", 0))
    switch = socket.create_connection(listener.getsockname())
    ctl_side, addr = listener.accept()
    thread = threading.Thread(target=fastdp._connection_factory, args=(ctl_side, addr),
                              daemon=True)
    thread.start()
    try:
        switch.settimeout(5)
        hello = _recv_msg(switch)
        assert hello[1] == ofp.OFPT_HELLO
        switch.sendall(packet_in(0x5D04000000000001, [(IN_PORT, struct.pack("!I", 3))], b"a")
                       + packet_in(0x5D04000000000001, [(IN_PORT, struct.pack("!I", 4))], b"b")
                       + packet_in(0, [(IN_PORT, struct.pack("!I", 5))], b"c"))
        assert _recv_exactly(switch, 12) == b"REPLY\x03REPLY\x04"
        assert seen == [(0x5D04000000000001, 3, b"a"), (0x5D04000000000001, 4, b"b"),
                        (0, 5, b"c")]
    finally:
        switch.close()     # os-ken's echo thread ends the daemon thread later
        listener.close()


def test_direct_and_queued_writes_never_interleave_messages():
    """send_now (receive and lease-commit threads) and os-ken's send queue write the same
    socket: every message arrives whole, none lost."""
    got_dp = []

    def hook(dp, cookie, in_port, frame):
        got_dp.append(dp)
        return b""

    fastdp.install(hook)
    listener = socket.create_server(("127.0.0.1", 0))
    switch = socket.create_connection(listener.getsockname())
    ctl_side, addr = listener.accept()
    threading.Thread(target=fastdp._connection_factory, args=(ctl_side, addr), daemon=True).start()

    def message(tag: int, size: int) -> bytes:   # an echo request carrying its tag throughout
        return struct.pack("!BBHI", ofp.OFP_VERSION, ofp.OFPT_ECHO_REQUEST, 8 + size, tag) + bytes([tag % 251]) * size

    per_thread = 300
    try:
        switch.settimeout(10)
        assert _recv_msg(switch)[1] == ofp.OFPT_HELLO
        switch.sendall(packet_in(0x5D04000000000001, [(IN_PORT, struct.pack("!I", 3))], b"a"))
        lib_wait = threading.Event()
        for _ in range(100):
            if got_dp:
                break
            lib_wait.wait(0.05)
        dp = got_dp[0]
        writers = [threading.Thread(target=lambda base=base, direct=direct: [
            (dp.send_now if direct else dp.send)(message(base + i, 2000 + i % 7)) for i in range(per_thread)])
            for base, direct in ((1000, True), (2000, True), (3000, False))]
        for w in writers:
            w.start()
        seen = set()
        while len(seen) < 3 * per_thread:
            msg = _recv_msg(switch)
            if msg[1] != ofp.OFPT_ECHO_REQUEST:
                continue
            tag = struct.unpack("!I", msg[4:8])[0]
            if tag < 1000:        # os-ken's own echo requests
                continue
            assert msg[8:] == bytes([tag % 251]) * (len(msg) - 8), f"message {tag} torn"
            seen.add(tag)
        for w in writers:
            w.join()
        assert len(seen) == 3 * per_thread
    finally:
        switch.close()
        listener.close()
