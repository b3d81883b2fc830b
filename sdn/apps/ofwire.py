"""OpenFlow 1.3 wire encoding of :class:`sdn.flows.model.Flow` data, with ``struct``.

Flow programming is the controller's hot path: building os-ken ``OFPFlowMod`` objects costs
~265 us/flow (OXM conversion through netaddr) and wrapping + serialising them in bundle-adds
another ~80 us. This module packs the same bytes directly: flow mods (ADD, DELETE_STRICT,
DELETE by cookie) wrapped in ONF bundle-add messages (extension 230, as ``ovs-ofctl --bundle``
sends), with per-field and per-action encodings cached (the dataclasses are immutable, and
most values - eth_type, ip_proto, segment keys, conntrack actions - repeat across flows).

os-ken stays the reference: ``sdn.apps.ofmsgs`` builds the same messages as os-ken objects and
tests/unit/test_ofwire.py asserts byte equality for every flow the compiler emits. Match
field metadata (OXM class/field numbers and sizes) comes from os-ken's own tables; anything
outside the fast paths (an exotic value syntax, an experimenter field) is encoded by os-ken,
once, and cached.
"""

from __future__ import annotations

import socket
import struct
from functools import lru_cache

from os_ken.lib import type_desc
from os_ken.ofproto import nicira_ext
from os_ken.ofproto import ofproto_common
from os_ken.ofproto import ofproto_v1_3 as ofp

from sdn.flows import model as m
from sdn.flows.model import Flow

NX_CT_F_COMMIT = 1
NX_CT_RECIRC_NONE = 0xFF
NX_NAT_F_SRC, NX_NAT_F_DST = 1, 2   # OVS nicira-ext.h
RESUBMIT_IN_PORT = 0xFFF8   # OFPP_IN_PORT in NXAST_RESUBMIT_TABLE's 16 bits: "resubmit(,TABLE)"
BUNDLE_FLAGS = ofp.ONF_BF_ATOMIC | ofp.ONF_BF_ORDERED
_ALL_ONES = (1 << 64) - 1
_MAX_XID = 0xFFFFFFFF
_CACHE = 8192   # entries per cache: repeated values hit, one-off values (a VIF's MAC) pass through

_HEADER = struct.Struct("!BBHI")                      # version, type, length, xid
_FLOW_MOD = struct.Struct("!BBHIQQBBHHHIIIH2x")       # header + ofp_flow_mod up to the match
_BUNDLE_ADD = struct.Struct("!BBHIIIIxxH")            # header, experimenter, exp_type, id, flags
_OXM_HEADER = struct.Struct("!I")
_U16, _U32 = struct.Struct("!H"), struct.Struct("!I")
_NX_HEADER = struct.Struct("!HHIH")                   # OFPAT_EXPERIMENTER, len, NX id, subtype
_ACTION_OUTPUT = struct.Struct("!HHIH6x")
_ACTION_HDR8 = struct.Struct("!HHH2x")                # push_vlan (ethertype), 8 bytes
_ACTION_GROUP = struct.Struct("!HHI")
_INST_HDR = struct.Struct("!HH4x")                    # apply-actions header
_INST_METER = struct.Struct("!HHI")
_INST_GOTO = struct.Struct("!HHB3x")
_MATCH_HDR = struct.Struct("!HH")

_BUNDLE_ADD_LEN = _BUNDLE_ADD.size
_FLOW_MOD_LEN = _FLOW_MOD.size

# OXM name -> (oxm_type = class << 7 | field, os-ken type descriptor), from os-ken's tables.
_FIELDS = {f.name: (f.num, f.type) for f in ofp.oxm_types}


def _pad8(n: int) -> int:
    return (n + 7) & ~7


# ---- OXM fields ----------------------------------------------------------------------------

def _value_bytes(t, value) -> bytes | None:
    """Fast conversion of one user value of type ``t``; None when os-ken must do it."""
    if isinstance(t, type_desc.IntDescr):
        if isinstance(value, int):
            return value.to_bytes(t.size, "big")
    elif t is type_desc.MacAddr:
        if isinstance(value, str) and len(value) == 17 and value[2::3] == ":::::":
            return bytes.fromhex(value.replace(":", ""))
    elif t is type_desc.IPv4Addr:
        if isinstance(value, str) and "/" not in value:
            return socket.inet_pton(socket.AF_INET, value)
        if isinstance(value, int):
            return value.to_bytes(4, "big")
    elif t is type_desc.IPv6Addr:
        if isinstance(value, str) and "/" not in value:
            return socket.inet_pton(socket.AF_INET6, value)
    return None


def _oskens_oxm(name: str, value, normalize: bool) -> bytes:
    """The reference path: os-ken's own OXM conversion and serialisation."""
    if normalize:
        name, value = ofp.oxm_normalize_user(name, value)
    n, v, mask = ofp.oxm_from_user(name, value)
    buf = bytearray()
    ofp.oxm_serialize(n, v, mask, buf, 0)
    return bytes(buf)


@lru_cache(maxsize=_CACHE)
def oxm(name: str, value, normalize: bool = True) -> tuple[int, bytes]:
    """(sort key, TLV bytes) of one OXM field as os-ken encodes it. ``normalize`` applies the
    mask to the value (OFPMatch does; a set-field action does not)."""
    num, t = _FIELDS[name]
    key = oxm_sort_key(name)
    if isinstance(num, int):
        if isinstance(value, tuple):
            v, msk = value
            vb, mb = _value_bytes(t, v), _value_bytes(t, msk)
            if vb is not None and mb is not None:
                if normalize:
                    vb = (int.from_bytes(vb, "big") & int.from_bytes(mb, "big")).to_bytes(
                        len(vb), "big")
                return key, _OXM_HEADER.pack(num << 9 | 1 << 8 | 2 * len(vb)) + vb + mb
        else:
            vb = _value_bytes(t, value)
            if vb is not None:
                return key, _OXM_HEADER.pack(num << 9 | len(vb)) + vb
    return key, _oskens_oxm(name, value, normalize)


@lru_cache(maxsize=_CACHE)
def _oxm_header(name: str) -> bytes:
    """The 4-byte OXM header alone (NXAST_REG_MOVE operands), as os-ken serialises it."""
    buf = bytearray()
    ofp.oxm_serialize_header(ofp.oxm_from_user_header(name), buf, 0)
    return bytes(buf)


@lru_cache(maxsize=1024)
def _order(names: tuple) -> tuple:
    """Indices of a match's fields in os-ken's order: a stable sort by OXM type (so
    prerequisites such as eth_type come first). Few distinct field sets exist: cached."""
    keys = [oxm_sort_key(n) for n in names]
    return tuple(sorted(range(len(names)), key=keys.__getitem__))


def oxm_sort_key(name: str) -> int:
    num = _FIELDS[name][0]
    return num[0] if isinstance(num, tuple) else num


def match(fields: tuple) -> bytes:
    """ofp_match (OXM, padded to 8) of a Flow's ``match`` tuple, fields in os-ken's order."""
    body = b"".join([oxm(*fields[i])[1] for i in _order(tuple([f[0] for f in fields]))])
    length = 4 + len(body)
    return _MATCH_HDR.pack(ofp.OFPMT_OXM, length) + body + bytes(_pad8(length) - length)


# ---- actions and instructions --------------------------------------------------------------

def _nx(subtype: int, body: bytes) -> bytes:
    """A Nicira action: header + body, zero-padded to 8."""
    length = _pad8(10 + len(body))
    return (_NX_HEADER.pack(ofp.OFPAT_EXPERIMENTER, length, ofproto_common.NX_EXPERIMENTER_ID,
                            subtype) + body + bytes(length - 10 - len(body)))


def _nat(nat: m.Nat) -> bytes:
    if nat.kind is None:
        return _nx(nicira_ext.NXAST_NAT, struct.pack("!2xHH", 0, 0))
    flags = NX_NAT_F_SRC if nat.kind == "src" else NX_NAT_F_DST
    present = nicira_ext.NX_NAT_RANGE_IPV4_MIN | nicira_ext.NX_NAT_RANGE_IPV4_MAX
    ip = socket.inet_pton(socket.AF_INET, nat.ip)
    optional = ip + ip
    if nat.port:
        present |= nicira_ext.NX_NAT_RANGE_PROTO_MIN | nicira_ext.NX_NAT_RANGE_PROTO_MAX
        optional += struct.pack("!HH", nat.port, nat.port)
    return _nx(nicira_ext.NXAST_NAT, struct.pack("!2xHH", flags, present) + optional)


def _set_field(a: m.SetField) -> bytes:
    tlv = oxm(a.field, a.value, False)[1]
    length = _pad8(4 + len(tlv))
    return _MATCH_HDR.pack(ofp.OFPAT_SET_FIELD, length) + tlv + bytes(length - 4 - len(tlv))


def _ct(a: m.Ct) -> bytes:
    nested = (b"" if a.nat is None else _nat(a.nat)) + b"".join(_set_field(f) for f in a.marks)
    recirc = int(a.table) if a.table is not None else NX_CT_RECIRC_NONE
    if isinstance(a.zone, str):    # zone from a register's bits 0..15 (ofs 0, n_bits 16)
        zone_src, zone = _oxm_header(a.zone), nicira_ext.ofs_nbits(0, 15)
    else:
        zone_src, zone = bytes(4), a.zone
    return _nx(nicira_ext.NXAST_CT,
               struct.pack("!H4sHB3xH", NX_CT_F_COMMIT if a.commit else 0, zone_src, zone,
                           recirc, 0) + nested)


_EMPTY_ACTION = struct.Struct("!HH4x")   # pop_vlan, dec_nw_ttl: type, length 8

#: The bytes of each action, as ``ofmsgs.ACTIONS``' os-ken objects serialise them (a meter is
#: its meter instruction: ``instructions`` places it).
ACTIONS = m.ActionTable("ofwire", {
    m.Output: lambda a: _ACTION_OUTPUT.pack(ofp.OFPAT_OUTPUT, 16, a.port, 0),
    m.Controller: lambda a: _ACTION_OUTPUT.pack(ofp.OFPAT_OUTPUT, 16, ofp.OFPP_CONTROLLER,
                                                a.max_len),
    m.PushVlan: lambda a: _ACTION_HDR8.pack(ofp.OFPAT_PUSH_VLAN, 8, a.ethertype),
    m.PopVlan: lambda a: _EMPTY_ACTION.pack(ofp.OFPAT_POP_VLAN, 8),
    m.SetField: _set_field,
    m.Move: lambda a: _nx(nicira_ext.NXAST_REG_MOVE, struct.pack("!HHH", a.n_bits, 0, 0)
                          + _oxm_header(a.src) + _oxm_header(a.dst)),
    m.Meter: lambda a: _INST_METER.pack(ofp.OFPIT_METER, 8, a.meter_id),
    m.DecTtl: lambda a: _EMPTY_ACTION.pack(ofp.OFPAT_DEC_NW_TTL, 8),
    m.Ct: _ct,
    m.Group: lambda a: _ACTION_GROUP.pack(ofp.OFPAT_GROUP, 8, a.group_id),
    m.Resubmit: lambda a: _nx(nicira_ext.NXAST_RESUBMIT_TABLE,
                              struct.pack("!HB", RESUBMIT_IN_PORT, int(a.table))),
    m.Conjunction: lambda a: _nx(nicira_ext.NXAST_CONJUNCTION,
                                 struct.pack("!BBI", a.clause - 1, a.n_clauses, a.conj_id)),
})


@lru_cache(maxsize=_CACHE)
def action(a: m.Action) -> bytes:
    """One action's bytes (cached: the dataclasses are immutable and most actions repeat)."""
    return m.dispatch(ACTIONS, a)


@lru_cache(maxsize=_CACHE)
def instructions(actions: tuple, goto) -> bytes:
    """Meter, apply-actions, goto-table: the order ``ofmsgs.instructions`` builds them in."""
    out = []
    applied = []
    for a in actions:
        if isinstance(a, m.Meter):
            out.append(action(a))
        else:
            applied.append(action(a))
    if applied:
        body = b"".join(applied)
        out.append(_INST_HDR.pack(ofp.OFPIT_APPLY_ACTIONS, 8 + len(body)) + body)
    if goto is not None:
        out.append(_INST_GOTO.pack(ofp.OFPIT_GOTO_TABLE, 8, int(goto)))
    return b"".join(out)


# ---- flow mods and bundles -----------------------------------------------------------------

def _flow_mod(xid: int, cookie: int, cookie_mask: int, table: int, command: int, priority: int,
              out_port: int, out_group: int, tail: bytes) -> bytes:
    return _FLOW_MOD.pack(ofp.OFP_VERSION, ofp.OFPT_FLOW_MOD, _FLOW_MOD_LEN + len(tail), xid,
                          cookie, cookie_mask, table, command, 0, 0, priority, ofp.OFP_NO_BUFFER,
                          out_port, out_group, 0) + tail


def flow_add(flow: Flow, generation: int, xid: int = 0) -> bytes:
    """OFPFC_ADD of ``flow``: the bytes of ``ofmsgs.flow_add`` with ``xid``."""
    return _flow_mod(xid, m.cookie(flow.feature, generation), 0, int(flow.table), ofp.OFPFC_ADD,
                     flow.priority, 0, 0,
                     match(flow.match) + instructions(flow.actions, flow.goto))


def flow_delete_strict(flow: Flow, xid: int = 0) -> bytes:
    """OFPFC_DELETE_STRICT of ``flow``'s key within sdn's cookies: ``ofmsgs.flow_delete_strict``."""
    return _flow_mod(xid, m.COOKIE_APP << 56, m.COOKIE_APP_MASK, int(flow.table),
                     ofp.OFPFC_DELETE_STRICT, flow.priority, ofp.OFPP_ANY, ofp.OFPG_ANY,
                     match(flow.match))


_EMPTY_MATCH = match(())


def delete_cookie(cookie: int, xid: int = 0) -> bytes:
    """OFPFC_DELETE, all tables, of flows whose cookie is exactly ``cookie``: ``ofmsgs.delete_cookie``."""
    return _FLOW_MOD.pack(ofp.OFP_VERSION, ofp.OFPT_FLOW_MOD, _FLOW_MOD_LEN + len(_EMPTY_MATCH),
                          xid, cookie, _ALL_ONES, ofp.OFPTT_ALL, ofp.OFPFC_DELETE, 0, 0,
                          ofp.OFP_DEFAULT_PRIORITY, ofp.OFP_NO_BUFFER, ofp.OFPP_ANY,
                          ofp.OFPG_ANY, 0) + _EMPTY_MATCH


def bundle_add(bundle_id: int, inner: bytes, xid: int) -> bytes:
    """ONF bundle-add of the OpenFlow message ``inner``; the inner message gets the outer
    ``xid`` (extension 230 §3.3), as os-ken's ``ONFBundleAddMsg`` does."""
    return (_BUNDLE_ADD.pack(ofp.OFP_VERSION, ofp.OFPT_EXPERIMENTER, _BUNDLE_ADD_LEN + len(inner),
                             xid, ofproto_common.ONF_EXPERIMENTER_ID,
                             ofp.ONF_ET_BUNDLE_ADD_MESSAGE, bundle_id, BUNDLE_FLAGS)
            + inner[:4] + _U32.pack(xid) + inner[8:])


def next_xid(dp) -> int:
    """The next xid of ``dp``, from the counter os-ken's ``Datapath.set_xid`` uses (so raw
    messages and os-ken messages never share an xid)."""
    dp.xid = (dp.xid + 1) & _MAX_XID
    return dp.xid


def bundle_adds(dp, bundle_id: int, messages, chunk: int = 1 << 18):
    """Wrap each encoded message (xid ignored) in a bundle-add with a fresh xid of ``dp``;
    yields the concatenated stream in chunks of about ``chunk`` bytes (one socket write each)."""
    out: list[bytes] = []
    size = 0
    for inner in messages:
        msg = bundle_add(bundle_id, inner, next_xid(dp))
        out.append(msg)
        size += len(msg)
        if size >= chunk:
            yield b"".join(out)
            out, size = [], 0
    if out:
        yield b"".join(out)


# ---- the hot loop: a plan's flow adds packed straight into bundle-adds ------------------------

#: a bundle-add header and its inner flow mod's fixed part, packed at once (one xid in both)
_BUNDLED_FLOW_MOD = struct.Struct("!BBHIIIIxxH" + _FLOW_MOD.format[1:])
_BUNDLED_LEN = _BUNDLED_FLOW_MOD.size


def bundled_flow_adds(dp, bundle_id: int, flows, generation: int, chunk: int = 1 << 18):
    """``bundle_adds(dp, bundle_id, (flow_add(f, generation) for f in flows))`` in one pass:
    the same bytes and xids (a fresh one of ``dp`` per message), without building each flow
    mod and copying it into its bundle-add (~2x cheaper per flow). Yields chunks of about
    ``chunk`` bytes."""
    pack = _BUNDLED_FLOW_MOD.pack
    version, experimenter, flow_mod = ofp.OFP_VERSION, ofp.OFPT_EXPERIMENTER, ofp.OFPT_FLOW_MOD
    onf, add_message, flags = (ofproto_common.ONF_EXPERIMENTER_ID, ofp.ONF_ET_BUNDLE_ADD_MESSAGE,
                               BUNDLE_FLAGS)
    add, no_buffer = ofp.OFPFC_ADD, ofp.OFP_NO_BUFFER
    cookies: dict = {}
    out: list[bytes] = []
    size = 0
    for f in flows:
        cookie = cookies.get(f.feature)
        if cookie is None:
            cookie = cookies[f.feature] = m.cookie(f.feature, generation)
        body = match(f.match)
        insts = instructions(f.actions, f.goto)
        inner = _FLOW_MOD_LEN + len(body) + len(insts)
        dp.xid = xid = (dp.xid + 1) & _MAX_XID
        out += (pack(version, experimenter, _BUNDLE_ADD_LEN + inner, xid, onf, add_message,
                     bundle_id, flags, version, flow_mod, inner, xid, cookie, 0, int(f.table),
                     add, 0, 0, f.priority, no_buffer, 0, 0, 0), body, insts)
        size += _BUNDLE_ADD_LEN + inner
        if size >= chunk:
            yield b"".join(out)
            out, size = [], 0
    if out:
        yield b"".join(out)
