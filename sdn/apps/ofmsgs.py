"""Encode :class:`sdn.flows.model.Flow` data into os-ken OpenFlow 1.3 messages.

The only place where flow data meets os-ken's parser classes; everything above it is pure.
"""

from __future__ import annotations


from os_ken.ofproto import nicira_ext, ofproto_common
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from sdn.apps import ofwire
from sdn.flows import model as m
from sdn.flows.model import Flow

_ALL_ONES = (1 << 64) - 1
NX_CT_F_COMMIT = 1
NX_CT_RECIRC_NONE = 0xFF
NX_NAT_F_SRC, NX_NAT_F_DST = 1, 2   # OVS nicira-ext.h


def _nat(nat: m.Nat):
    if nat.kind is None:
        return parser.NXActionNAT(flags=0)
    flags = NX_NAT_F_SRC if nat.kind == "src" else NX_NAT_F_DST
    ports = dict(range_proto_min=nat.port, range_proto_max=nat.port) if nat.port else {}
    return parser.NXActionNAT(flags=flags, range_ipv4_min=nat.ip, range_ipv4_max=nat.ip, **ports)


def _ct(action: m.Ct):
    nested = ([] if action.nat is None else [_nat(action.nat)]) + [
        parser.OFPActionSetField(**{f.field: f.value}) for f in action.marks]
    if isinstance(action.zone, str):   # zone from a register's bits 0..15
        zone_src, zone = action.zone, nicira_ext.ofs_nbits(0, 15)
    else:
        zone_src, zone = "", action.zone
    return parser.NXActionCT(flags=NX_CT_F_COMMIT if action.commit else 0, zone_src=zone_src,
                             zone_ofs_nbits=zone,
                             recirc_table=int(action.table) if action.table is not None
                             else NX_CT_RECIRC_NONE, alg=0, actions=nested)


#: os-ken object of each action: the reference encoding (``sdn.apps.ofwire`` packs the same
#: bytes). A meter is an instruction in OpenFlow 1.3, not an apply-action: ``instructions``
#: places it, and a group bucket cannot hold one.
ACTIONS = m.ActionTable("ofmsgs", {
    m.Output: lambda a: parser.OFPActionOutput(a.port, 0),
    m.Controller: lambda a: parser.OFPActionOutput(ofp.OFPP_CONTROLLER, a.max_len),
    m.PushVlan: lambda a: parser.OFPActionPushVlan(a.ethertype),
    m.PopVlan: lambda a: parser.OFPActionPopVlan(),
    m.SetField: lambda a: parser.OFPActionSetField(**{a.field: a.value}),
    m.Move: lambda a: parser.NXActionRegMove(src_field=a.src, dst_field=a.dst, n_bits=a.n_bits),
    m.Meter: lambda a: parser.OFPInstructionMeter(a.meter_id),
    m.DecTtl: lambda a: parser.OFPActionDecNwTtl(),
    m.Ct: _ct,
    m.Group: lambda a: parser.OFPActionGroup(a.group_id),
    m.Resubmit: lambda a: parser.NXActionResubmitTable(in_port=ofwire.RESUBMIT_IN_PORT,
                                                       table_id=int(a.table)),
    m.Conjunction: lambda a: parser.NXActionConjunction(clause=a.clause - 1, n_clauses=a.n_clauses,
                                                        id_=a.conj_id),
})


def action(a: m.Action):
    """The os-ken object of one action (for a :class:`~sdn.flows.model.Meter`, the meter
    instruction)."""
    return m.dispatch(ACTIONS, a)


def instructions(flow: Flow) -> list:
    """OF1.3 instructions: meter, apply-actions, goto-table (in the order §5.9 executes them)."""
    insts = []
    actions = []
    for a in flow.actions:
        (insts if isinstance(a, m.Meter) else actions).append(action(a))
    if actions:
        insts.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions))
    if flow.goto is not None:
        insts.append(parser.OFPInstructionGotoTable(int(flow.goto)))
    return insts


def flow_add(dp, flow: Flow, generation: int):
    """OFPFC_ADD of ``flow`` with its feature/generation cookie."""
    return parser.OFPFlowMod(dp, cookie=m.cookie(flow.feature, generation), table_id=int(flow.table),
                             command=ofp.OFPFC_ADD, priority=flow.priority,
                             match=parser.OFPMatch(**dict(flow.match)),
                             instructions=instructions(flow))


def flow_delete_strict(dp, flow: Flow):
    """OFPFC_DELETE_STRICT of ``flow``'s key, restricted to sdn's cookies (others' flows stay)."""
    return parser.OFPFlowMod(dp, cookie=m.COOKIE_APP << 56, cookie_mask=m.COOKIE_APP_MASK,
                             table_id=int(flow.table), command=ofp.OFPFC_DELETE_STRICT,
                             priority=flow.priority, out_port=ofp.OFPP_ANY,
                             out_group=ofp.OFPG_ANY, match=parser.OFPMatch(**dict(flow.match)))


def delete_cookie(dp, cookie: int):
    """OFPFC_DELETE of every flow, any table, whose cookie is exactly ``cookie``."""
    return parser.OFPFlowMod(dp, cookie=cookie, cookie_mask=_ALL_ONES, table_id=ofp.OFPTT_ALL,
                             command=ofp.OFPFC_DELETE, out_port=ofp.OFPP_ANY,
                             out_group=ofp.OFPG_ANY, match=parser.OFPMatch())


def sdn_flow_stats_request(dp):
    """Flow stats of every sdn flow (cookie top byte 0x5d), all tables."""
    return parser.OFPFlowStatsRequest(dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY,
                                      m.COOKIE_APP << 56, m.COOKIE_APP_MASK, parser.OFPMatch())


def meter_config_request(dp):
    """Configuration of every meter on the switch."""
    return parser.OFPMeterConfigStatsRequest(dp, 0, ofp.OFPM_ALL)


#: GroupEntry.type -> OpenFlow group type (sdn uses "all" only: flood to every bucket)
GROUP_TYPES = {"all": ofp.OFPGT_ALL}


def bucket_actions(bucket: tuple) -> list:
    """os-ken actions of one group bucket; ValueError for a meter (an instruction, which a
    bucket cannot hold)."""
    if any(isinstance(a, m.Meter) for a in bucket):
        raise ValueError(f"a group bucket cannot apply a meter: {bucket!r}")
    return [action(a) for a in bucket]


def group_mod(dp, entry: m.GroupEntry | None, group_id: int, command=ofp.OFPGC_ADD):
    """OFPGC_ADD / OFPGC_MODIFY of ``entry`` (its type and buckets; weight 0, no watch), or
    OFPGC_DELETE of ``group_id`` (``entry`` ignored: None will do)."""
    if command == ofp.OFPGC_DELETE:
        return parser.OFPGroupMod(dp, command=command, type_=ofp.OFPGT_ALL, group_id=group_id)
    buckets = [parser.OFPBucket(weight=0, watch_port=ofp.OFPP_ANY, watch_group=ofp.OFPG_ANY,
                                actions=bucket_actions(b)) for b in entry.buckets]
    return parser.OFPGroupMod(dp, command=command, type_=GROUP_TYPES[entry.type],
                              group_id=group_id, buckets=buckets)


def group_desc_request(dp):
    """Description (type, buckets) of every group on the switch."""
    return parser.OFPGroupDescStatsRequest(dp, 0)


def aggregate_request(dp, cookie: int, cookie_mask: int):
    """Packet, byte and flow counts of the flows, any table, whose cookie matches ``cookie``
    under ``cookie_mask`` (a cheap drift check: the flow count alone)."""
    return parser.OFPAggregateStatsRequest(dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY,
                                           cookie, cookie_mask, parser.OFPMatch())


def bundle_ctrl(dp, bundle_id: int, type_: int):
    """ONF bundle control (OpenFlow 1.3 extension 230, as ovs-ofctl --bundle uses)."""
    return parser.ONFBundleCtrlMsg(dp, bundle_id, type_, ofp.ONF_BF_ATOMIC | ofp.ONF_BF_ORDERED, [])


def bundle_add(dp, bundle_id: int, msg):
    return parser.ONFBundleAddMsg(dp, bundle_id, ofp.ONF_BF_ATOMIC | ofp.ONF_BF_ORDERED, msg, [])


def plan_bundle_adds(dp, bundle_id: int, deletes, adds, generation: int, stale_cookies=()):
    """The bundle-adds of one plan as raw bytes, in order: strict deletes of ``deletes``, adds
    of ``adds`` under ``generation``, deletes of each stale cookie. Same bytes as
    ``bundle_add(dp, bundle_id, flow_delete_strict(...))`` etc., packed by ``sdn.apps.ofwire``
    (~40x cheaper), with xids from ``dp``'s counter; yields chunks for ``dp.send``, encoding
    lazily so that the switch parses one chunk while the next is packed."""
    yield from ofwire.bundle_adds(dp, bundle_id, (ofwire.flow_delete_strict(f) for f in deletes))
    yield from ofwire.bundled_flow_adds(dp, bundle_id, adds, generation)     # the bulk
    yield from ofwire.bundle_adds(dp, bundle_id, (ofwire.delete_cookie(c) for c in stale_cookies))


#: MeterEntry.unit -> OpenFlow meter flag
METER_UNITS = {m.PKTPS: ofp.OFPMF_PKTPS, m.KBPS: ofp.OFPMF_KBPS}


def meter_mod(dp, meter_id: int, entry: m.MeterEntry | None, command=ofp.OFPMC_ADD):
    """OFPMC_ADD / OFPMC_MODIFY of ``entry``: one drop band at its rate and burst, in its unit
    (packets/s: DHCP punts; kbit/s: QoS), or OFPMC_DELETE of ``meter_id`` (``entry`` None)."""
    if command == ofp.OFPMC_DELETE:
        return parser.OFPMeterMod(dp, command=command, flags=0, meter_id=meter_id, bands=[])
    bands = [parser.OFPMeterBandDrop(rate=entry.rate, burst_size=entry.burst_size)]
    flags = METER_UNITS[entry.unit] | ofp.OFPMF_BURST
    return parser.OFPMeterMod(dp, command=command, flags=flags, meter_id=meter_id, bands=bands)


def meter_spec(config) -> tuple | None:
    """``MeterEntry.spec`` of a switch's meter config (OFPMeterConfigStats); None if it is not
    one drop band in a unit sdn uses."""
    unit = next((u for u, flag in METER_UNITS.items() if config.flags & flag), None)
    if unit is None or len(config.bands) != 1:
        return None
    return (unit, config.bands[0].rate, config.bands[0].burst_size)


def packet_out(dp, port: int, data: bytes):
    """Send ``data`` out of ``port`` (from the controller, no buffer)."""
    return parser.OFPPacketOut(dp, buffer_id=ofp.OFP_NO_BUFFER, in_port=ofp.OFPP_CONTROLLER,
                               actions=[parser.OFPActionOutput(port, 0)], data=data)




# ---- fast encoders: struct-packed bytes for the hot paths (os-ken's classes stay the
# reference; tests/unit/test_ofmsgs_fast.py checks byte equality against them) ----------

import struct as _struct  # noqa: E402

_PACKET_OUT_HEAD = _struct.Struct("!BBHIIIH6xHHIH6x")   # header, buffer, in_port, actions, output
_PACKET_OUT_FIXED = _PACKET_OUT_HEAD.size
#: bytes before the frame in ``packet_out_bytes``'s message
PACKET_OUT_HEADER_LEN = _PACKET_OUT_FIXED


#: the most frame bytes one OFPT_PACKET_OUT carries: its 16-bit length (OpenFlow 1.3.5 §7.1)
#: counts the header, the fixed part and one output action
PACKET_OUT_MAX_DATA = 0xFFFF - _PACKET_OUT_FIXED


def packet_out_bytes(port: int, data: bytes, xid: int = 0) -> bytes:
    """OFPT_PACKET_OUT of ``data`` out of ``port`` from the controller, no buffer: the bytes
    ``packet_out(dp, port, data)`` serialises to, without building os-ken objects.

    Raises ValueError when ``data`` is longer than ``PACKET_OUT_MAX_DATA`` (65,495) bytes:
    the message's length field could not count it."""
    if len(data) > PACKET_OUT_MAX_DATA:
        raise ValueError(f"packet-out data of {len(data)} bytes does not fit one OpenFlow "
                         f"message (at most {PACKET_OUT_MAX_DATA} bytes)")
    return _PACKET_OUT_HEAD.pack(ofp.OFP_VERSION, ofp.OFPT_PACKET_OUT,
                                 _PACKET_OUT_FIXED + len(data), xid & 0xFFFFFFFF,
                                 ofp.OFP_NO_BUFFER, ofp.OFPP_CONTROLLER, 16,
                                 ofp.OFPAT_OUTPUT, 16, port, 0) + data


NXT_CT_FLUSH_ZONE = 29   # OVS ofp-msgs.h "NXT 1.0+ (29): struct nx_zone_id" (OVS >= 2.6)


def ct_flush_zone(dp, zone: int):
    """Nicira experimenter message deleting every conntrack entry of ``zone`` (0-65535):
    ``struct nx_zone_id { uint8_t zero[6]; ovs_be16 zone_id; }``, as ``ovs-ofctl
    ct-flush-zone`` sends it (checked with ``ovs-ofctl ofp-print``)."""
    return parser.OFPExperimenter(dp, experimenter=ofproto_common.NX_EXPERIMENTER_ID,
                                  exp_type=NXT_CT_FLUSH_ZONE, data=_struct.pack("!6xH", zone))
