"""A fake OpenFlow 1.3 switch for unit tests of the sync unit (sdn/apps/datapath.py).

Modelled on Faucet's ``clib/fakeoftable.py``: the switch is fed the *real bytes* the unit sends
(os-ken messages are serialised with ``msg.serialize()``, raw ``send(bytes)`` streams are split by
the OpenFlow header length) and every message is parsed back, then applied to a small model of a
switch: a flow table keyed by (table_id, priority, match), meters, groups and ONF bundles
(extension 230). Requests are answered through the unit's hooks (``on_barrier``, ``on_reply``,
``on_error``) exactly as sdn/apps/controller.py dispatches them; errors are serialised as
``OFPErrorMsg`` bytes and parsed back with os-ken before ``unit.on_error(msg.xid, msg.type,
msg.code)``, as the controller does.

What os-ken parses itself (``ofproto_parser.msg``): flow mods, experimenter messages (bundle
control). It has no parser for the other controller-to-switch messages (group mod, meter mod,
barrier request, multipart requests) and an ONF bundle-add comes back as a bare
``OFPExperimenter`` whose inner message is *not* parsed; those are parsed here with os-ken's
component parsers (``OFPBucket.parser``, ``OFPMeterBandHeader.parser``, ``OFPMatch.parser``) and
the inner message of a bundle-add through ``ofproto_parser.msg`` again.

Rules enforced as Open vSwitch does (an error message with the offending xid, nothing applied):

- GROUP ADD of an existing id: OFPET_GROUP_MOD_FAILED/OFPGMFC_GROUP_EXISTS; MODIFY of a missing
  one: OFPGMFC_UNKNOWN_GROUP; a bucket applying a missing group: OFPET_BAD_ACTION/
  OFPBAC_BAD_OUT_GROUP; a group applying itself: OFPGMFC_LOOP; DELETE of a group another
  group's bucket applies: OFPGMFC_CHAINED_GROUP.
- METER ADD of an existing id: OFPMMFC_METER_EXISTS; MODIFY of a missing one:
  OFPMMFC_UNKNOWN_METER.
- a flow applying a missing group: OFPET_BAD_ACTION/OFPBAC_BAD_OUT_GROUP; a missing meter:
  OFPET_METER_MOD_FAILED/OFPMMFC_INVALID_METER.
- deleting a group or meter removes the flows that use it (OpenFlow 1.3 §6.5, §6.6); the
  switch does that, and records each such flow in ``collateral`` so a test can assert that
  the unit never relied on it (it must delete the flows first).
- a bundle applies atomically at commit: the first failing message's error (its own xid),
  then ONF MSG_FAILED for the commit's xid, and the tables stay as they were.

Knobs: ``dead=True`` (parses and records, never answers), ``ignore_barriers=True`` (answers
everything but barriers: a switch that hangs mid-sync), ``reject_next=(type, code)`` (the
next flow mod or bundle commit fails with that error, the xid of the flow mod or of the
bundle's first bundle-add), ``threaded=True`` (messages are processed and answered on the
switch's own thread, as a real switch would, instead of inside ``send``/``send_msg``).
Tampering (as ``ovs-ofctl`` would): ``tamper_delete_all_flows()``, ``tamper_add_flow(...)``.
"""

from __future__ import annotations

import queue
import struct
import threading
from dataclasses import dataclass, field

from os_ken.ofproto import ofproto_common, ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from sdn.apps.ofmsgs import NXT_CT_FLUSH_ZONE

_HEADER = struct.Struct("!BBHI")
_MAX_LEN = 0xFFFF
REPLY_PART = 1000            # multipart replies are split into parts of this many entries
ONFERR_ET_MSG_FAILED = ofp.ONFERR_ET_FAILED   # 2313: OFPBFC_MSG_FAILED in the ONF 1.3 extension


class OFError(Exception):
    """An OpenFlow error the switch answers with (``type_``/``code``, for message ``xid``)."""

    def __init__(self, type_: int, code: int, xid: int = 0):
        super().__init__(f"{type_}/{code}")
        self.type, self.code, self.xid = type_, code, xid


@dataclass
class FlowEntry:
    cookie: int
    instructions: list
    inst_bytes: bytes                 # the instructions as sent (compare flows by content)
    groups: frozenset = frozenset()   # group ids applied by the apply-actions
    meters: frozenset = frozenset()   # meter ids of meter instructions


@dataclass
class GroupState:
    type: int
    buckets: list
    children: frozenset = frozenset()


@dataclass
class MeterState:
    flags: int
    bands: list

    @property
    def rate(self):
        return self.bands[0].rate if self.bands else None


@dataclass
class Received:
    """One message as the switch parsed it (``inner``: a bundle-add's message)."""

    xid: int
    type: int
    length: int
    msg: object
    bundle_id: int | None = None


@dataclass
class _Bundle:
    messages: list = field(default_factory=list)   # [(xid, parsed inner message)]


def match_key(match) -> tuple:
    """The fields of a parsed OFPMatch, sorted: identity of a flow with table and priority."""
    return tuple(sorted(match.items()))


def _refs(instructions) -> tuple[frozenset, frozenset]:
    groups, meters = set(), set()
    for inst in instructions:
        if isinstance(inst, parser.OFPInstructionMeter):
            meters.add(inst.meter_id)
        for action in getattr(inst, "actions", None) or ():
            if isinstance(action, parser.OFPActionGroup):
                groups.add(action.group_id)
    return frozenset(groups), frozenset(meters)


def _bucket_children(buckets) -> frozenset:
    return frozenset(a.group_id for b in buckets for a in b.actions
                     if isinstance(a, parser.OFPActionGroup))


def flow_of(msg) -> tuple[tuple, FlowEntry]:
    """(key, entry) of a parsed OFPFC_ADD: what the switch's table holds for it."""
    groups, meters = _refs(msg.instructions)
    start = ofp.OFP_FLOW_MOD_SIZE - ofp.OFP_MATCH_SIZE
    inst = bytes(msg.buf[start + ((msg.match.length + 7) // 8) * 8:])
    return ((msg.table_id, msg.priority, match_key(msg.match)),
            FlowEntry(msg.cookie, msg.instructions, inst, groups, meters))


def parse_stream(dp, data: bytes) -> list[Received]:
    """Split concatenated OpenFlow messages by their header length and parse each one."""
    out = []
    offset = 0
    while offset < len(data):
        version, msg_type, length, xid = _HEADER.unpack_from(data, offset)
        assert version == ofp.OFP_VERSION, f"version {version}"
        assert 8 <= length <= _MAX_LEN and offset + length <= len(data), "bad length"
        out.append(parse_one(dp, bytes(data[offset:offset + length])))
        offset += length
    return out


def _parts(parse, buf: bytes, offset: int, end: int) -> list:
    """Consecutive length-prefixed structures (buckets, bands, actions) of ``buf[offset:end]``."""
    parts = []
    while offset < end:
        part = parse(buf, offset)
        parts.append(part)
        offset += part.len
    return parts


def parse_one(dp, buf: bytes) -> Received:
    version, msg_type, length, xid = _HEADER.unpack_from(buf)
    assert length == len(buf), f"header length {length} != {len(buf)} bytes"
    if msg_type in (ofp.OFPT_FLOW_MOD, ofp.OFPT_EXPERIMENTER):
        msg = ofproto_parser.msg(dp, version, msg_type, length, xid, buf)
        assert msg is not None, f"os-ken could not parse message type {msg_type}"
        if msg_type == ofp.OFPT_EXPERIMENTER and type(msg) is parser.OFPExperimenter \
                and msg.experimenter == ofproto_common.NX_EXPERIMENTER_ID:
            assert msg.exp_type == NXT_CT_FLUSH_ZONE and len(msg.data) == 8, \
                f"unexpected Nicira message {msg.exp_type}"
            return Received(xid, msg_type, length, msg)
        if msg_type == ofp.OFPT_EXPERIMENTER and type(msg) is parser.OFPExperimenter:
            # ONF bundle-add: os-ken leaves the inner message unparsed
            assert (msg.experimenter, msg.exp_type) == (
                ofproto_common.ONF_EXPERIMENTER_ID, ofp.ONF_ET_BUNDLE_ADD_MESSAGE), \
                f"unexpected experimenter message {msg.experimenter}/{msg.exp_type}"
            bundle_id, flags = struct.unpack_from(ofp.ONF_BUNDLE_ADD_MSG_PACK_STR, msg.data)
            inner_buf = bytes(msg.data[ofp.ONF_BUNDLE_ADD_MSG_SIZE:])
            inner = parse_one(dp, inner_buf)
            assert inner.xid == xid, "bundle-add: the inner message must carry the outer xid"
            assert flags == ofp.ONF_BF_ATOMIC | ofp.ONF_BF_ORDERED
            return Received(xid, msg_type, length, inner.msg, bundle_id)
        return Received(xid, msg_type, length, msg)
    if msg_type == ofp.OFPT_GROUP_MOD:
        command, type_, group_id = struct.unpack_from(ofp.OFP_GROUP_MOD_PACK_STR, buf,
                                                      ofp.OFP_HEADER_SIZE)
        buckets = _parts(parser.OFPBucket.parser, buf, ofp.OFP_GROUP_MOD_SIZE, length)
        msg = parser.OFPGroupMod(dp, command, type_, group_id, buckets)
    elif msg_type == ofp.OFPT_METER_MOD:
        command, flags, meter_id = struct.unpack_from(ofp.OFP_METER_MOD_PACK_STR, buf,
                                                      ofp.OFP_HEADER_SIZE)
        bands = _parts(parser.OFPMeterBandHeader.parser, buf, ofp.OFP_METER_MOD_SIZE, length)
        msg = parser.OFPMeterMod(dp, command, flags, meter_id, bands)
    elif msg_type == ofp.OFPT_PACKET_OUT:
        buffer_id, in_port, actions_len = struct.unpack_from(ofp.OFP_PACKET_OUT_PACK_STR, buf,
                                                             ofp.OFP_HEADER_SIZE)
        end = ofp.OFP_PACKET_OUT_SIZE + actions_len
        actions = _parts(parser.OFPAction.parser, buf, ofp.OFP_PACKET_OUT_SIZE, end)
        msg = parser.OFPPacketOut(dp, buffer_id, in_port, actions, bytes(buf[end:]))
    elif msg_type == ofp.OFPT_BARRIER_REQUEST:
        msg = parser.OFPBarrierRequest(dp)
    elif msg_type == ofp.OFPT_ROLE_REQUEST:
        role, generation_id = struct.unpack_from(ofp.OFP_ROLE_REQUEST_PACK_STR, buf,
                                                 ofp.OFP_HEADER_SIZE)
        msg = parser.OFPRoleRequest(dp, role, generation_id)
    elif msg_type == ofp.OFPT_MULTIPART_REQUEST:
        mp_type, flags = struct.unpack_from(ofp.OFP_MULTIPART_REQUEST_PACK_STR, buf,
                                            ofp.OFP_HEADER_SIZE)
        body = ofp.OFP_MULTIPART_REQUEST_SIZE
        if mp_type in (ofp.OFPMP_FLOW, ofp.OFPMP_AGGREGATE):
            table_id, out_port, out_group, cookie, cookie_mask = struct.unpack_from(
                ofp.OFP_FLOW_STATS_REQUEST_0_PACK_STR, buf, body)
            match = parser.OFPMatch.parser(buf, body + ofp.OFP_FLOW_STATS_REQUEST_0_SIZE)
            cls = (parser.OFPFlowStatsRequest if mp_type == ofp.OFPMP_FLOW
                   else parser.OFPAggregateStatsRequest)
            msg = cls(dp, flags, table_id, out_port, out_group, cookie, cookie_mask, match)
        elif mp_type == ofp.OFPMP_METER_CONFIG:
            (meter_id,) = struct.unpack_from(ofp.OFP_METER_MULTIPART_REQUEST_PACK_STR, buf, body)
            msg = parser.OFPMeterConfigStatsRequest(dp, flags, meter_id)
        elif mp_type == ofp.OFPMP_GROUP_DESC:
            msg = parser.OFPGroupDescStatsRequest(dp, flags)
        else:
            raise AssertionError(f"unexpected multipart request type {mp_type}")
    else:
        raise AssertionError(f"unexpected message type {msg_type}")
    msg.set_headers(version, msg_type, length, xid)
    return Received(xid, msg_type, length, msg)


class DatapathApi:
    """os-ken ``Datapath.set_xid``/``send_msg`` over the subclass's ``send(bytes)``."""

    xid = 0

    def set_xid(self, msg):
        self.xid = (self.xid + 1) & 0xFFFFFFFF
        msg.set_xid(self.xid)
        return self.xid

    def send_msg(self, msg):
        if msg.xid is None:
            self.set_xid(msg)
        msg.serialize()
        self.send(bytes(msg.buf))


class FakeSwitch(DatapathApi):
    """A datapath object for :class:`sdn.apps.datapath.DatapathSync` backed by a switch model.

    Set ``unit`` (the DatapathSync) before the first request; replies go to its hooks.
    """

    ofproto = ofp
    ofproto_parser = parser

    def __init__(self, dpid: int = 1, *, dead: bool = False, reject_next: tuple | None = None,
                 threaded: bool = False, reply_part: int = REPLY_PART,
                 ignore_barriers: bool = False, ports: set | None = None):
        self.id = dpid
        self.ports = ports             # ofports that exist (None: any); packet-out checks it
        self.on_receive = None         # called with each parsed message (tests inject events)
        self.xid = 0
        self.unit = None
        self.dead = dead
        self.ignore_barriers = ignore_barriers
        self.reject_next = reject_next
        self.reply_part = reply_part
        self.flows: dict[tuple, FlowEntry] = {}      # (table, priority, match_key) -> entry
        self.groups: dict[int, GroupState] = {}
        self.meters: dict[int, MeterState] = {}
        self.bundles: dict[int, _Bundle] = {}
        self.received: list[Received] = []          # every message, parsed, in order
        self.log: list[tuple] = []                   # what was applied, in order
        self.errors: list[tuple[int, str]] = []      # (xid, "OFPET_.../...") sent back
        self.collateral: list[tuple] = []            # flows removed by a group/meter delete
        self.max_len = 0                             # the longest message received
        self.role = ofp.OFPCR_ROLE_EQUAL              # this connection's role (§6.3.5)
        self.generation_id: int | None = None        # the largest one seen (master election)
        self.roles: list[tuple[int, int]] = []       # role requests granted: (role, gen id)
        self._lock = threading.RLock()
        self._inbox: queue.Queue | None = None
        self._thread = None
        if threaded:
            self._inbox = queue.Queue()
            self._thread = threading.Thread(target=self._serve, name=f"fakeswitch-{dpid}",
                                            daemon=True)
            self._thread.start()

    # ---- the os-ken Datapath interface DatapathSync uses (set_xid/send_msg: DatapathApi) --

    def send(self, buf: bytes):
        if self._inbox is not None:
            self._inbox.put(bytes(buf))
        else:
            self._receive(bytes(buf))

    def stop(self) -> None:
        if self._inbox is not None:
            self._inbox.put(None)
            self._thread.join(5)

    # ---- tampering (what an operator with ovs-ofctl does) ----------------------------------

    def tamper_delete_all_flows(self) -> None:
        with self._lock:
            self.flows.clear()

    def tamper_add_flow(self, cookie: int, table_id: int = 0, priority: int = 12345,
                        match: dict | None = None, actions: list | None = None) -> tuple:
        """Add a flow as ``ovs-ofctl add-flow`` would (bytes through the parser); its key."""
        insts = ([parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)]
                 if actions else [])
        mod = parser.OFPFlowMod(self, cookie=cookie, table_id=table_id, command=ofp.OFPFC_ADD,
                                priority=priority, match=parser.OFPMatch(**(match or {})),
                                instructions=insts)
        mod.set_xid(0)
        mod.serialize()
        parsed = parse_one(self, bytes(mod.buf)).msg
        with self._lock:
            self._flow_mod(self.flows, parsed, 0, self.log)
        return (table_id, priority, match_key(parsed.match))

    def tamper_add_group(self, group_id: int) -> None:
        """Add an empty group of type all (``ovs-ofctl add-group``)."""
        with self._lock:
            self.groups[group_id] = GroupState(ofp.OFPGT_ALL, [])

    # ---- views for assertions ---------------------------------------------------------------

    def sdn_flows(self) -> dict[tuple, FlowEntry]:
        return {k: e for k, e in self.flows.items() if e.cookie >> 56 == 0x5D}

    def received_since(self, mark: int) -> list[Received]:
        return self.received[mark:]

    # ---- the switch -------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            buf = self._inbox.get()
            if buf is None:
                return
            self._receive(buf)

    def _receive(self, buf: bytes) -> None:
        with self._lock:
            msgs = parse_stream(self, buf)
            self.received += msgs
            self.max_len = max([self.max_len] + [r.length for r in msgs])
        if self.dead:
            return
        for r in msgs:
            if self.on_receive is not None:
                self.on_receive(r)
            self._handle(r)

    def _handle(self, r: Received) -> None:
        msg = r.msg
        try:
            with self._lock:
                if isinstance(msg, parser.OFPRoleRequest):
                    self._role_request(r.xid, msg)
                    return
                if self.role == ofp.OFPCR_ROLE_SLAVE and isinstance(
                        msg, (parser.ONFBundleCtrlMsg, parser.OFPFlowMod, parser.OFPGroupMod,
                              parser.OFPMeterMod, parser.OFPPacketOut)) or (
                        self.role == ofp.OFPCR_ROLE_SLAVE and r.bundle_id is not None):
                    raise OFError(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_IS_SLAVE, r.xid)
                if r.bundle_id is not None:
                    bundle = self.bundles.get(r.bundle_id)
                    if bundle is None:
                        raise OFError(ofp.OFPET_EXPERIMENTER, ofp.ONFERR_ET_BAD_ID, r.xid)
                    bundle.messages.append((r.xid, msg))
                    return
                if isinstance(msg, parser.ONFBundleCtrlMsg):
                    self._bundle_ctrl(r.xid, msg)
                    return
                if isinstance(msg, parser.OFPFlowMod):
                    self._check_reject(r.xid)
                    self._flow_mod(self.flows, msg, r.xid, self.log)
                    return
                if isinstance(msg, parser.OFPGroupMod):
                    self._group_mod(msg, r.xid)
                    return
                if isinstance(msg, parser.OFPMeterMod):
                    self._meter_mod(msg, r.xid)
                    return
                if type(msg) is parser.OFPExperimenter:       # NXT_CT_FLUSH_ZONE
                    self.log.append(("ct_flush_zone", struct.unpack_from("!6xH", msg.data)[0]))
                    return
                if isinstance(msg, parser.OFPPacketOut):
                    for action in msg.actions:
                        port = getattr(action, "port", None)
                        if (self.ports is not None and port is not None
                                and port < ofp.OFPP_MAX and port not in self.ports):
                            raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_OUT_PORT, r.xid)
                    self.log.append(("packet_out", msg.actions[0].port if msg.actions else None))
                    return
        except OFError as err:
            self._error(err.xid or r.xid, err.type, err.code)
            return
        if isinstance(msg, parser.OFPBarrierRequest):
            if not self.ignore_barriers:
                self.unit.on_barrier(r.xid)
        elif isinstance(msg, parser.OFPMultipartRequest):
            self._multipart(r.xid, msg)
        else:
            raise AssertionError(f"unhandled {type(msg).__name__}")

    def _role_request(self, xid: int, msg) -> None:
        """As Open vSwitch: MASTER/SLAVE with a generation_id smaller than the largest seen is
        stale (signed 64-bit difference, §6.3.5); a granted request records the id."""
        if msg.role in (ofp.OFPCR_ROLE_MASTER, ofp.OFPCR_ROLE_SLAVE):
            behind = (self.generation_id - msg.generation_id) % (1 << 64) \
                if self.generation_id is not None else 0
            if 0 < behind < 1 << 63:
                raise OFError(ofp.OFPET_ROLE_REQUEST_FAILED, ofp.OFPRRFC_STALE, xid)
            self.generation_id = msg.generation_id
        if msg.role != ofp.OFPCR_ROLE_NOCHANGE:
            self.role = msg.role
        self.roles.append((msg.role, msg.generation_id))
        self.unit.on_role_reply(xid)

    def _check_reject(self, xid: int) -> None:
        if self.reject_next is not None:
            type_, code = self.reject_next
            self.reject_next = None
            raise OFError(type_, code, xid)

    def _error(self, xid: int, type_: int, code: int) -> None:
        """Send an OFPT_ERROR as bytes, parse it back, hand it over as the controller does."""
        from sdn.apps.datapath import error_text
        if type_ == ofp.OFPET_EXPERIMENTER:
            err = parser.OFPErrorMsg(self, type_=type_, exp_type=code,
                                     experimenter=ofproto_common.ONF_EXPERIMENTER_ID, data=b"")
        else:
            err = parser.OFPErrorMsg(self, type_=type_, code=code, data=b"")
        err.set_xid(xid)
        err.serialize()
        back = ofproto_parser.msg(self, ofp.OFP_VERSION, ofp.OFPT_ERROR, len(err.buf), xid,
                                  bytes(err.buf))
        self.errors.append((back.xid, error_text(back.type, back.code if back.code is not None
                                                 else code)))
        self.unit.on_error(back.xid, back.type, back.code)

    # -- flows

    def _check_flow(self, entry: FlowEntry, groups, meters, xid: int) -> None:
        if entry.groups - set(groups):
            raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_OUT_GROUP, xid)
        if entry.meters - set(meters):
            raise OFError(ofp.OFPET_METER_MOD_FAILED, ofp.OFPMMFC_INVALID_METER, xid)

    def _flow_mod(self, flows: dict, msg, xid: int, log: list, groups=None, meters=None) -> None:
        groups = self.groups if groups is None else groups
        meters = self.meters if meters is None else meters
        cmd = msg.command
        if cmd == ofp.OFPFC_ADD:
            if msg.table_id >= ofp.OFPTT_MAX:
                raise OFError(ofp.OFPET_FLOW_MOD_FAILED, ofp.OFPFMFC_BAD_TABLE_ID, xid)
            key, entry = flow_of(msg)
            self._check_flow(entry, groups, meters, xid)
            flows[key] = entry
            log.append(("flow_add", key, msg.cookie))
            return
        if cmd not in (ofp.OFPFC_DELETE, ofp.OFPFC_DELETE_STRICT):
            raise OFError(ofp.OFPET_FLOW_MOD_FAILED, ofp.OFPFMFC_BAD_COMMAND, xid)
        want = match_key(msg.match)
        for key in list(flows):
            table, priority, fields = key
            entry = flows[key]
            if msg.table_id != ofp.OFPTT_ALL and table != msg.table_id:
                continue
            if entry.cookie & msg.cookie_mask != msg.cookie & msg.cookie_mask:
                continue
            if cmd == ofp.OFPFC_DELETE_STRICT:
                if priority != msg.priority or fields != want:
                    continue
            elif not set(want) <= set(fields):
                continue
            del flows[key]
            log.append(("flow_delete", key, entry.cookie))

    # -- groups and meters

    def _group_mod(self, msg, xid: int) -> None:
        gid = msg.group_id
        if msg.command == ofp.OFPGC_DELETE:
            ids = list(self.groups) if gid == ofp.OFPG_ALL else [gid]
            for i in ids:
                if i not in self.groups:
                    continue      # OVS: deleting a missing group is not an error
                if any(i in g.children for j, g in self.groups.items() if j not in ids):
                    raise OFError(ofp.OFPET_GROUP_MOD_FAILED, ofp.OFPGMFC_CHAINED_GROUP, xid)
            for i in ids:
                if self.groups.pop(i, None) is not None:
                    self.log.append(("group_delete", i))
                    self._drop_users("groups", i)
            return
        children = _bucket_children(msg.buckets)
        if msg.command == ofp.OFPGC_ADD and gid in self.groups:
            raise OFError(ofp.OFPET_GROUP_MOD_FAILED, ofp.OFPGMFC_GROUP_EXISTS, xid)
        if msg.command == ofp.OFPGC_MODIFY and gid not in self.groups:
            raise OFError(ofp.OFPET_GROUP_MOD_FAILED, ofp.OFPGMFC_UNKNOWN_GROUP, xid)
        if msg.command not in (ofp.OFPGC_ADD, ofp.OFPGC_MODIFY):
            raise OFError(ofp.OFPET_GROUP_MOD_FAILED, ofp.OFPGMFC_BAD_COMMAND, xid)
        if gid in children:
            raise OFError(ofp.OFPET_GROUP_MOD_FAILED, ofp.OFPGMFC_LOOP, xid)
        if children - set(self.groups):
            raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_OUT_GROUP, xid)
        self.groups[gid] = GroupState(msg.type, msg.buckets, children)
        self.log.append(("group_add" if msg.command == ofp.OFPGC_ADD else "group_modify", gid))

    def _meter_mod(self, msg, xid: int) -> None:
        mid = msg.meter_id
        if msg.command == ofp.OFPMC_DELETE:
            if self.meters.pop(mid, None) is not None:
                self.log.append(("meter_delete", mid))
                self._drop_users("meters", mid)
            return
        if msg.command == ofp.OFPMC_ADD and mid in self.meters:
            raise OFError(ofp.OFPET_METER_MOD_FAILED, ofp.OFPMMFC_METER_EXISTS, xid)
        if msg.command == ofp.OFPMC_MODIFY and mid not in self.meters:
            raise OFError(ofp.OFPET_METER_MOD_FAILED, ofp.OFPMMFC_UNKNOWN_METER, xid)
        if bool(msg.flags & ofp.OFPMF_KBPS) == bool(msg.flags & ofp.OFPMF_PKTPS):
            raise OFError(ofp.OFPET_METER_MOD_FAILED, ofp.OFPMMFC_BAD_FLAGS, xid)
        self.meters[mid] = MeterState(msg.flags, msg.bands)
        self.log.append(("meter_add" if msg.command == ofp.OFPMC_ADD else "meter_modify", mid))

    def _drop_users(self, kind: str, ident: int) -> None:
        """OpenFlow: deleting a group or meter deletes the flows that use it."""
        for key in [k for k, e in self.flows.items() if ident in getattr(e, kind)]:
            self.collateral.append((kind, ident, key))
            del self.flows[key]

    # -- bundles

    def _bundle_ctrl(self, xid: int, msg) -> None:
        if msg.type == ofp.ONF_BCT_OPEN_REQUEST:
            if msg.bundle_id in self.bundles:
                raise OFError(ofp.OFPET_EXPERIMENTER, ofp.ONFERR_ET_BUNDLE_EXIST, xid)
            self.bundles[msg.bundle_id] = _Bundle()
        elif msg.type == ofp.ONF_BCT_DISCARD_REQUEST:
            self.bundles.pop(msg.bundle_id, None)
            self.log.append(("bundle_discard", msg.bundle_id))
        elif msg.type == ofp.ONF_BCT_COMMIT_REQUEST:
            bundle = self.bundles.pop(msg.bundle_id, None)
            if bundle is None:
                raise OFError(ofp.OFPET_EXPERIMENTER, ofp.ONFERR_ET_BAD_ID, xid)
            flows, log = dict(self.flows), []
            try:
                if self.reject_next is not None and bundle.messages:
                    self._check_reject(bundle.messages[0][0])
                for inner_xid, inner in bundle.messages:
                    if not isinstance(inner, parser.OFPFlowMod):
                        raise OFError(ofp.OFPET_EXPERIMENTER, ofp.ONFERR_ET_MSG_UNSUP, inner_xid)
                    self._flow_mod(flows, inner, inner_xid, log)
            except OFError as err:      # atomic: nothing applies; the message's error first
                self._error(err.xid, err.type, err.code)
                raise OFError(ofp.OFPET_EXPERIMENTER, ONFERR_ET_MSG_FAILED, xid) from None
            self.flows = flows
            self.log += log
            self.log.append(("bundle_commit", msg.bundle_id, len(bundle.messages)))
        else:
            raise OFError(ofp.OFPET_EXPERIMENTER, ofp.ONFERR_ET_BAD_TYPE, xid)

    # -- multipart requests

    def _multipart(self, xid: int, msg) -> None:
        with self._lock:
            if isinstance(msg, (parser.OFPFlowStatsRequest, parser.OFPAggregateStatsRequest)):
                chosen = [(k, e) for k, e in self.flows.items()
                          if (msg.table_id == ofp.OFPTT_ALL or k[0] == msg.table_id)
                          and e.cookie & msg.cookie_mask == msg.cookie & msg.cookie_mask]
                if isinstance(msg, parser.OFPAggregateStatsRequest):
                    body = parser.OFPAggregateStats(0, 0, len(chosen))
                    self.unit.on_reply(xid, body, False)   # os-ken: one object, not a list
                    return
                body = [parser.OFPFlowStats(table_id=k[0], priority=k[1], cookie=e.cookie,
                                            match=parser.OFPMatch(**dict(k[2])),
                                            instructions=e.instructions) for k, e in chosen]
            elif isinstance(msg, parser.OFPMeterConfigStatsRequest):
                body = [parser.OFPMeterConfigStats(m.flags, i, list(m.bands))
                        for i, m in sorted(self.meters.items())
                        if msg.meter_id in (ofp.OFPM_ALL, i)]
            elif isinstance(msg, parser.OFPGroupDescStatsRequest):
                body = [parser.OFPGroupDescStats(g.type, i, list(g.buckets))
                        for i, g in sorted(self.groups.items())]
            else:
                raise AssertionError(f"unhandled {type(msg).__name__}")
        parts = [body[i:i + self.reply_part] for i in range(0, len(body), self.reply_part)] or [[]]
        for n, part in enumerate(parts):
            self.unit.on_reply(xid, part, n < len(parts) - 1)
