"""Bandwidth limits per VIF (nova's ``rxtx_factor``; ``instance set-bandwidth``): OpenFlow
meters in kbit/s that drop what exceeds the rate (policing).

- What a VIF sends (``tx_kbps``): table CLASSIFY, the classifier's flow of the VIF's port
  (``sdn.flows.classifier.compile_vif``) one priority higher, through meter
  ``entry_id(Feature.QOS, ofport)`` first: every frame from the VIF is policed before
  anything else happens to it, whatever its destination (local, remote, routed, flooded).
- What a VIF receives (``rx_kbps``): table OUTPUT, ``reg7 = port -> output`` one priority above
  the L2 output flow, through meter ``entry_id(Feature.QOS, 0x8000 | ofport)``: unicast from
  any source (local, trunk, router) and IP flood copies (they pass the ingress ACL and
  OUTPUT); ARP/other flood copies go straight out of the flood group, unmetered.

Meter ids are keyed by ofport (stable while the port exists, like the DHCP meters), bit 15
telling the direction, so an ofport above 32767 cannot be limited: such a VIF gets no QoS
flows (:func:`limited` says which; OVS numbers ports from 1 upwards, reusing freed numbers).
A meter polices (drops above the rate, no queue). Its burst is ``BURST_MS`` of the rate (at
least ``BURST_MIN_KBIT``): Neutron's default for OVS bandwidth limits (80 % of the rate), and
what TCP needs to come close to the rate through a policer on userspace OVS: iperf3 medians
through 20 Mbit/s were 18.1-18.6 Mbit/s with 800 ms, 14-19 (noisy) with 200 ms
(tests/integration/test_qos.py). The Linux backend shapes instead (``sdn.linux.tc``).
Pure: no I/O.
"""

from __future__ import annotations

import dataclasses

from sdn.flows import classifier, l2
from sdn.flows.context import DatapathContext
from sdn.flows.model import (KBPS, Feature, Flow, Meter, MeterEntry, Output, Reg, Table,
                             entry_id, flow)
from sdn.view import VifView

RX_BIT = 0x8000
MAX_OFPORT = RX_BIT - 1
#: burst of a limit: this many milliseconds at its rate (Neutron's default: 80 %) ...
BURST_MS = 800
#: ... but at least this many kbit (a few full-size frames)
BURST_MIN_KBIT = 100
PRIO_TX = classifier.PRIO_PORT + 1
PRIO_RX = l2.PRIO_OUTPUT + 1


def tx_meter_id(ofport: int) -> int:
    """Meter policing what VIF ``ofport`` sends."""
    return entry_id(Feature.QOS, ofport)


def rx_meter_id(ofport: int) -> int:
    """Meter policing what VIF ``ofport`` receives."""
    return entry_id(Feature.QOS, RX_BIT | ofport)


def burst_kbit(rate_kbps: int) -> int:
    return max(BURST_MIN_KBIT, rate_kbps * BURST_MS // 1000)


def limited(ofport: int, vif: VifView) -> bool:
    """True if ``vif`` on ``ofport`` has a limit this module can apply."""
    return bool(vif.rx_kbps or vif.tx_kbps) and 0 < ofport <= MAX_OFPORT


def compile(dp: DatapathContext) -> list:
    """Feature entry point: meters and metered flows of every limited local VIF."""
    out: list = []
    for port, vif in dp.vifs:
        if limited(port, vif):
            out += compile_vif(port, vif, dp.network_of(vif))
    return out


# Per-port split (``sdn.flows.incremental``): a VIF's meters and flows read its port, the VIF
# and its network.
def port_scope(_dp: DatapathContext) -> tuple:
    return ()


def compile_port(dp: DatapathContext, port: int, vif: VifView) -> list:
    return compile_vif(port, vif, dp.network_of(vif)) if limited(port, vif) else []


def compile_shared(_dp: DatapathContext) -> list:
    return []


def compile_vif(ofport: int, vif: VifView, network) -> list:
    """The meters and flows of VIF ``vif`` on ``ofport`` in ``network``."""
    out: list = []
    if vif.tx_kbps:
        meter = tx_meter_id(ofport)
        out.append(MeterEntry(Feature.QOS, meter, vif.tx_kbps, KBPS, burst_kbit(vif.tx_kbps)))
        out += [dataclasses.replace(f, feature=Feature.QOS, priority=PRIO_TX,
                                    actions=(Meter(meter),) + f.actions)
                for f in classifier.compile_vif(ofport, network)]
    if vif.rx_kbps:
        meter = rx_meter_id(ofport)
        out.append(MeterEntry(Feature.QOS, meter, vif.rx_kbps, KBPS, burst_kbit(vif.rx_kbps)))
        out.append(flow(Feature.QOS, Table.OUTPUT, PRIO_RX, {Reg.DST_PORT: ofport},
                        [Meter(meter), Output(ofport)]))
    return out
