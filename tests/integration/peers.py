"""Tiny network peers the integration tests run inside namespaces they made: servers, probes
and streams as one Python program (``PEER``), started with :func:`serve` or :func:`probe`.

Modes: ``tcp-server P...`` answers each connection with "<port> <peer address>";
``tcp-stream P...`` sends "<port> <n>" every 100 ms per connection until it breaks;
``udp-echo P [ADDR]`` echoes "<sender> <data>"; ``tcp-probe HOST PORT TIMEOUT`` /
``udp-probe ...`` print "ok <reply>" or why not (:data:`NOT_ADMITTED`); ``tcp-recv HOST PORT``
prints "connected", each line received, then "closed"; ``udp-listen P`` prints
"<sender> <data>" per datagram; ``udp-bcast ADDR PORT DATA`` sends five broadcasts.
"""

from __future__ import annotations

import subprocess
import sys

#: What a refused probe may print: dropped (timeout) or rejected (refused/reset).
NOT_ADMITTED = ("timeout", "refused", "reset", "unreachable")

PEER = r"""
import socket, sys, threading, time
mode = sys.argv[1]

def listener(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(16)
    return s

def serve(port, handle):
    s = listener(port)
    def loop():
        while True:
            c, addr = s.accept()
            threading.Thread(target=handle, args=(c, addr, port), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()

def answer(c, addr, port):
    try:
        c.sendall(f"{port} {addr[0]}".encode()); c.close()
    except OSError:
        pass

def stream(c, addr, port):
    n = 0
    try:
        while True:
            c.sendall(f"{port} {n}\n".encode()); n += 1; time.sleep(0.1)
    except OSError:
        pass

def why(err):
    if isinstance(err, socket.timeout): return "timeout"
    if isinstance(err, ConnectionRefusedError): return "refused"
    if isinstance(err, ConnectionResetError): return "reset"
    if getattr(err, "errno", None) in (113, 101): return "unreachable"
    return f"error {err!r}"

if mode in ("tcp-server", "tcp-stream"):
    for p in sys.argv[2:]:
        serve(int(p), answer if mode == "tcp-server" else stream)
    print("ready", flush=True)
    threading.Event().wait()
elif mode == "udp-echo":   # optional 3rd argument: the address to answer from
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[3] if len(sys.argv) > 3 else "0.0.0.0", int(sys.argv[2])))
    print("ready", flush=True)
    while True:
        data, addr = s.recvfrom(2048); s.sendto(addr[0].encode() + b" " + data, addr)
elif mode == "tcp-probe":
    try:
        c = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=float(sys.argv[4]))
        print("ok " + c.recv(100).decode())
    except OSError as err:
        print(why(err))
elif mode == "udp-probe":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(float(sys.argv[4]))
    s.connect((sys.argv[2], int(sys.argv[3])))
    try:
        s.send(b"probe"); print("ok " + s.recv(2048).decode())
    except OSError as err:
        print(why(err))
elif mode == "tcp-recv":
    try:
        c = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=3)
    except OSError as err:
        print("failed " + why(err), flush=True); sys.exit(1)
    c.settimeout(None)
    print("connected", flush=True)
    for line in c.makefile():
        print(line.strip(), flush=True)
    print("closed", flush=True)
elif mode == "udp-listen":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[2])))
    print("ready", flush=True)
    while True:
        data, addr = s.recvfrom(2048); print(f"{addr[0]} {data.decode()}", flush=True)
elif mode == "udp-bcast":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    for i in range(5):
        s.sendto(sys.argv[4].encode(), (sys.argv[2], int(sys.argv[3]))); time.sleep(0.05)
"""


def serve(host, mode, *args):
    """Start a ``tcp-server``/``tcp-stream``/``udp-echo`` in ``host``; returns once listening."""
    proc = host.popen([sys.executable, "-u", "-c", PEER, mode, *map(str, args)],
                      stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def probe(host, kind, address, port, timeout=1.5) -> str:
    """``tcp``/``udp`` probe from ``host``: "ok <reply>", or timeout/refused/reset/..."""
    p = host.run([sys.executable, "-c", PEER, f"{kind}-probe", address, str(port), str(timeout)],
                 check=False, timeout=timeout + 15)
    return p.stdout.strip() or f"error rc={p.returncode} {p.stderr.strip()}"
