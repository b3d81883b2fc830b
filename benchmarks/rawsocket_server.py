"""sdn's DHCP responder standalone on one raw-socket segment interface (used by bench_dhcp).

    python benchmarks/rawsocket_server.py --config-file F IFACE [--network-id N ...] [--no-record]

Serves every VIF (with a fixed address) of the given networks in state -- all when no
``--network-id`` -- on IFACE, bound by chaddr (``sdn.dhcp.rawsocket.bindings_by_chaddr``:
perfdhcp simulates all clients behind one veth), recording leases in state unless
``--no-record``. Stops on SIGTERM after committing and acknowledging what is pending.
"""

from __future__ import annotations

import argparse
import logging
import signal

from sdn import config
from sdn.dhcp.rawsocket import RawSocketServer, bindings_by_chaddr
from sdn.state import StateSource

LOG = logging.getLogger("sdn.dhcp.rawsocket")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="rawsocket_server.py", description=__doc__.split("\n")[0])
    ap.add_argument("iface")
    ap.add_argument("--config-file", required=True)
    ap.add_argument("--network-id", type=int, action="append")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    conf = config.load(["--config-file", args.config_file])
    state = StateSource.from_conf(conf)
    bindings = bindings_by_chaddr(state.load(), args.network_id)
    server = RawSocketServer({args.iface: bindings},
                             None if args.no_record else state.apply_lease_events)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    LOG.info("serving DHCP on %s for %d VIFs", args.iface, len(bindings))
    server.serve_forever(lambda: bool(stop))
    LOG.info("served %d replies; %d requests from unknown clients; %d send errors",
             server.served, server.unknown, server.send_errors)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
