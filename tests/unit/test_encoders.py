"""Every encoder renders every action through one dispatch table; group and stats messages
round-trip through os-ken's parser."""

import struct

import pytest
from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from sdn.apps import ofmsgs, ofwire
from sdn.flows import model as m
from sdn.flows import ofctl, trace
from sdn.flows.model import Feature, Table

ENCODERS = {"ofmsgs": ofmsgs.ACTIONS, "ofwire": ofwire.ACTIONS, "ofctl": ofctl.ACTIONS}
L2 = m.entry_id(Feature.L2, 1)
CHILD = m.entry_id(Feature.L2, 2)
FLOOD = m.GroupEntry(Feature.L2, L2, (
    (m.SetField("reg7", 3), m.Resubmit(Table.INGRESS_ACL)),
    (m.SetField("reg7", 4), m.Resubmit(Table.INGRESS_ACL)),
    (m.Group(CHILD),),
    (m.PushVlan(), m.SetField("vlan_vid", m.vlan_vid(100)), m.Output(10)),
))


class Dp:
    ofproto = ofp
    ofproto_parser = parser
    id = 1
    xid = 0


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_each_encoder_covers_exactly_the_model_actions(name):
    assert set(ENCODERS[name]) == set(m.ACTION_TYPES)


def test_trace_covers_the_rest_of_the_model_actions_beside_its_walk():
    assert not set(trace.ACTIONS) & set(trace.WALK_ACTIONS)
    assert set(trace.ACTIONS) | set(trace.WALK_ACTIONS) == set(m.ACTION_TYPES)


@pytest.mark.parametrize("table", [*ENCODERS.values(), trace.ACTIONS], ids=lambda t: t.encoder)
def test_an_unknown_action_is_one_clear_type_error(table):
    with pytest.raises(TypeError, match=f"{table.encoder} cannot encode 'x': not one of Output"):
        m.dispatch(table, "x")


def test_an_action_an_encoder_leaves_to_others_names_it():
    with pytest.raises(TypeError, match="trace has no encoding of Ct"):
        m.dispatch(trace.ACTIONS, m.Ct(1))


def test_ofctl_renders_group_and_resubmit_by_number():
    f = m.flow(Feature.L2, Table.L2_LOOKUP, 5, {"reg6": 7},
               [m.Group(L2), m.Resubmit(Table.OUTPUT)])
    assert ofctl.render(f).endswith(f"actions=group:{L2},resubmit(,70)")


def test_ofctl_renders_a_group_for_add_group():
    assert ofctl.render_group(FLOOD) == (
        f"group_id={L2},type=all"
        ",bucket=actions=set_field:3->reg7,resubmit(,60)"
        ",bucket=actions=set_field:4->reg7,resubmit(,60)"
        f",bucket=actions=group:{CHILD}"
        ",bucket=actions=push_vlan:0x8100,set_field:0x1064->vlan_vid,output:10")


def test_ofctl_renders_an_empty_bucket_as_drop():
    assert ofctl.render_group(m.GroupEntry(Feature.L2, 9, ((),))) == (
        "group_id=9,type=all,bucket=actions=drop")


def _round_trip(msg):
    """(bytes, command, type, group_id, buckets) of a group mod, buckets parsed by os-ken's
    ``OFPBucket.parser`` (os-ken has no parser for a controller-to-switch OFPT_GROUP_MOD)."""
    msg.set_xid(0x1234)
    msg.serialize()
    buf = bytes(msg.buf)
    version, msg_type, length, xid = ofproto_parser.header(buf)
    assert (version, msg_type, length, xid) == (ofp.OFP_VERSION, ofp.OFPT_GROUP_MOD, len(buf),
                                                0x1234)
    command, type_, group_id = struct.unpack_from("!HBxI", buf, ofp.OFP_HEADER_SIZE)
    buckets, offset = [], ofp.OFP_GROUP_MOD_SIZE
    while offset < length:
        bucket = parser.OFPBucket.parser(buf, offset)
        buckets.append(bucket)
        offset += bucket.len
    return buf, command, type_, group_id, buckets


def _bucket(bucket) -> list:
    """A bucket's actions back in the model's terms (what os-ken parsed)."""
    out = []
    for a in bucket.actions:
        if isinstance(a, parser.OFPActionSetField):
            out.append(m.SetField(a.key, a.value))
        elif isinstance(a, parser.NXActionResubmitTable):
            assert a.in_port == 0xFFF8
            out.append(m.Resubmit(Table(a.table_id)))
        elif isinstance(a, parser.OFPActionGroup):
            out.append(m.Group(a.group_id))
        elif isinstance(a, parser.OFPActionPushVlan):
            out.append(m.PushVlan(a.ethertype))
        elif isinstance(a, parser.OFPActionOutput):
            out.append(m.Output(a.port))
    return out


@pytest.mark.parametrize("command", [ofp.OFPGC_ADD, ofp.OFPGC_MODIFY])
def test_group_mod_round_trips_through_os_ken(command):
    _, *head, buckets = _round_trip(ofmsgs.group_mod(Dp(), FLOOD, L2, command))
    assert head == [command, ofp.OFPGT_ALL, L2]
    assert [_bucket(b) for b in buckets] == [list(b) for b in FLOOD.buckets]
    assert {(b.weight, b.watch_port, b.watch_group) for b in buckets} == {
        (0, ofp.OFPP_ANY, ofp.OFPG_ANY)}


def test_group_bucket_bytes_are_ofwires():
    """The actions inside a bucket are the bytes ofwire packs for a flow's apply-actions."""
    buf = _round_trip(ofmsgs.group_mod(Dp(), FLOOD, L2))[0]
    for bucket in FLOOD.buckets:
        assert b"".join(ofwire.action(a) for a in bucket) in buf


def test_group_delete_carries_the_id_only():
    buf, *rest = _round_trip(ofmsgs.group_mod(Dp(), None, L2, ofp.OFPGC_DELETE))
    assert rest == [ofp.OFPGC_DELETE, ofp.OFPGT_ALL, L2, []] and len(buf) == 16


def test_a_bucket_cannot_apply_a_meter():
    entry = m.GroupEntry(Feature.L2, L2, ((m.Meter(1), m.Output(1)),))
    with pytest.raises(ValueError, match="meter"):
        ofmsgs.group_mod(Dp(), entry, L2)


def _request_bytes(msg) -> bytes:
    msg.set_xid(0x1234)
    msg.serialize()
    return bytes(msg.buf)


def test_group_desc_request_asks_for_every_group():
    buf = _request_bytes(ofmsgs.group_desc_request(Dp()))
    assert buf[1] == ofp.OFPT_MULTIPART_REQUEST
    assert int.from_bytes(buf[8:10], "big") == ofp.OFPMP_GROUP_DESC and len(buf) == 16


def test_aggregate_request_over_all_tables_by_cookie():
    cookie, mask = m.cookie(Feature.L2, 7), m.COOKIE_FEATURE_MASK
    buf = _request_bytes(ofmsgs.aggregate_request(Dp(), cookie, mask))
    assert int.from_bytes(buf[8:10], "big") == ofp.OFPMP_AGGREGATE
    body = buf[16:]
    assert body[0] == ofp.OFPTT_ALL
    assert int.from_bytes(body[4:8], "big") == ofp.OFPP_ANY
    assert int.from_bytes(body[8:12], "big") == ofp.OFPG_ANY
    assert (int.from_bytes(body[16:24], "big"), int.from_bytes(body[24:32], "big")) == (
        cookie, mask)
    assert body[32:] == bytes([0, 1, 0, 4, 0, 0, 0, 0])   # empty OXM match, padded


def test_trace_simulates_every_non_walk_action():
    pkt = {"in_port": 1, "vlan_vid": 0, "reg5": 9, "reg7": 0}
    result = trace.Result()
    for a in (m.PushVlan(), m.SetField("vlan_vid", m.vlan_vid(5)), m.Move("reg5", "reg7", 32),
              m.Meter(1), m.DecTtl(), m.Output(2), m.Output(1), m.Output(m.OFPP_IN_PORT),
              m.PopVlan(), m.Output(3), m.Controller()):
        trace._apply(a, pkt, result)
    assert result.outputs == [(2, 5), (1, 5), (3, None)] and result.to_controller
    assert pkt["reg7"] == 9


def test_ct_flush_zone_is_the_message_ovs_ofctl_sends():
    """Bytes of ``ovs-ofctl -O OpenFlow13 ct-flush-zone BR 10001`` (xid 5), as ``ovs-ofctl
    ofp-print`` decodes them: NXT_CT_FLUSH_ZONE zone_id=10001."""
    msg = ofmsgs.ct_flush_zone(Dp(), 10001)
    msg.set_xid(5)
    msg.serialize()
    assert bytes(msg.buf).hex() == "0404001800000005000023200000001d0000000000002711"
