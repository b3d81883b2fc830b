"""Flows as data: the pipeline's tables, registers and cookies, declared once.

Every flow sdn installs is a :class:`Flow` built by one feature module in ``sdn.flows``; its
cookie names that feature, so ``ovs-ofctl -O OpenFlow13 dump-flows --names br-int`` leads to
the module in one hop (see :func:`describe_cookie` and docs/ARCHITECTURE.md).

Match fields and set-field targets use OpenFlow 1.3 OXM names as os-ken spells them
(``eth_dst``, ``ipv4_src``, ``udp_dst``, ``reg6`` ...). Values are ints or strings (MAC/IPv4),
or ``(value, mask)`` tuples.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Union


class Table(enum.IntEnum):
    """Pipeline tables (numbers only grow along a packet's way; the stage graph, each table's
    successor and its table-miss live in ``sdn.flows.pipeline``). Names appear in
    ``dump-flows --names``."""

    CLASSIFY = 0          # by in_port (VIF, trunk VLAN tag, public port) -> reg5/reg6
    PORT_SECURITY = 10    # anti-spoof: MAC/IP/ARP/ND, no rogue DHCP/RA
    EGRESS_ACL = 20       # from a VIF: always-allowed traffic, else conntrack in the VIF's zone
    EGRESS_ACL_STATE = 21     # established/related: does the admitting rule still apply?
    EGRESS_ACL_RULES = 22     # new connections: the VIF's egress rules (commit, label = rule)
    EGRESS_ACL_ACCEPT = 23    # accepted (counted) -> services
    EGRESS_ACL_DROP = 24      # refused (counted)
    SERVICES = 30         # DHCP punt, gateway ARP responder, routed traffic -> L3
    UPLINK = 35           # from the public port: ARP for router addresses, accept -> L3
    L3_UNSNAT = 40        # conntrack SNAT zone: replies to SNATed connections
    L3_DNAT = 41          # conntrack DNAT zone: floating IP, metadata, VPN addresses
    L3_DNAT_COMMIT = 42   # new connections: commit the DNAT
    L3_ROUTE = 43         # next hop by destination: a fixed IP here, or the external gateway
    L3_UNDNAT = 44        # replies from DNAT backends back to their public address
    L3_SNAT = 45          # which source NAT (none for metadata/dmz, floating, routing_source_ip)
    L3_SNAT_COMMIT = 46   # new connections: commit the SNAT
    L3_OUTPUT = 47        # into the tenant network or out of the public port
    L2_LOOKUP = 50        # destination MAC within the segment: reg7 := local port, or trunks, or flood group
    INGRESS_ACL = 60      # to a local VIF (reg7): always-allowed traffic, else conntrack
    INGRESS_ACL_STATE = 61    # established/related: does the admitting rule still apply?
    INGRESS_ACL_RULES = 62    # new connections: provider drops, same-net, the VIF's ingress rules
    INGRESS_ACL_ACCEPT = 63   # accepted (counted) -> output
    INGRESS_ACL_DROP = 64     # refused (counted)
    OUTPUT = 70           # output to reg7

    @property
    def label(self) -> str:
        return self.name.lower()


class Reg:
    """Registers carried through the pipeline (NXM reg0-7, OpenFlow 1.3 via OVS extensions)."""

    ACL_ZONE = "reg2"       # security groups: conntrack zone of the VIF being filtered
    L3_DNAT_DONE = "reg3"   # router pass: 1 = DNAT done in this pass (skip un-DNAT)
    L3_TO_TENANT = "reg4"   # router pass: 1 = next hop is a tenant port
    SRC_PORT = "reg5"       # ofport the packet came in on
    NET = "reg6"            # segment key: VLAN id, or FLAT_KEY_BASE | network id (sdn.view)
    DST_PORT = "reg7"       # destination ofport, set by L2_LOOKUP, read by INGRESS_ACL and OUTPUT


class EthType:
    """Ethertypes matched by the features (IEEE 802 numbers; plain ints)."""

    IPV4 = 0x0800
    ARP = 0x0806
    IPV6 = 0x86DD


class IpProto:
    """IP protocol numbers matched by the features (IANA; plain ints)."""

    ICMP = 1
    TCP = 6
    UDP = 17
    ICMPV6 = 58


class Feature(enum.IntEnum):
    """Which module a flow, meter or group comes from; byte 6 of a cookie, byte 2 of a meter or
    group id."""

    PIPELINE = 0x01       # sdn/flows/pipeline.py: table defaults (drops, pass-through)
    CLASSIFIER = 0x02     # sdn/flows/classifier.py
    PORT_SECURITY = 0x03  # sdn/flows/port_security.py
    DHCP = 0x04           # sdn/flows/dhcp.py
    GATEWAY_ARP = 0x05    # sdn/flows/arp_responder.py
    L2 = 0x06             # sdn/flows/l2.py
    ROUTER = 0x07         # sdn/flows/router.py: gateway routing, floating IPs, SNAT, metadata, VPN
    SECURITY_GROUPS = 0x08  # sdn/flows/security_groups.py: stateful firewall per VIF
    QOS = 0x09            # sdn/flows/qos.py: bandwidth limits per VIF (meters)
    ND = 0x0A             # sdn/flows/nd.py: router solicitations, NS for the gateway (punts)
    DHCPV6 = 0x0B         # sdn/flows/dhcpv6.py: DHCPv6 client messages (punts)


#: Top byte of every sdn cookie; lets sdn find its own flows and leave others' alone.
COOKIE_APP = 0x5D
COOKIE_APP_MASK = 0xFF << 56
COOKIE_FEATURE_MASK = 0xFFFF << 48
GENERATION_MASK = (1 << 48) - 1


def cookie(feature: Feature, generation: int) -> int:
    """64-bit cookie: 0x5d | feature (8 bits) | generation (48 bits).

    e.g. ``0x5d06000000000007`` is an L2 flow installed by generation 7.
    """
    return (COOKIE_APP << 56) | (int(feature) << 48) | (generation & GENERATION_MASK)


def feature_of(value: int) -> Feature | None:
    """The feature a cookie (64 bits) belongs to; None for a foreign or unknown cookie."""
    if value >> 56 != COOKIE_APP:
        return None
    try:
        return Feature((value >> 48) & 0xFF)
    except ValueError:
        return None


def describe_cookie(value: int) -> str:
    """Human-readable origin of a cookie: ``"l2 gen 7"``, or ``"foreign"`` if not sdn's."""
    if value >> 56 != COOKIE_APP:
        return "foreign"
    feature = feature_of(value)
    name = feature.name.lower() if feature else f"feature-{(value >> 48) & 0xFF:#x}"
    return f"{name} gen {value & GENERATION_MASK}"


#: Meter and group ids (32 bits): 0x5d | feature (8 bits) | a feature-defined 16-bit index,
#: so ``dump-meters``/``dump-groups`` lead to the module as cookies do, and two features never
#: collide (a VIF's DHCP meter and its QoS meter differ in the feature byte).
ID_APP = COOKIE_APP << 24
ID_APP_MASK = 0xFF << 24
ID_INDEX_MAX = 0xFFFF


def entry_id(feature: Feature, index: int) -> int:
    """Meter or group id of ``feature``'s entry ``index`` (0-65535); ValueError outside."""
    if not 0 <= index <= ID_INDEX_MAX:
        raise ValueError(f"{feature.name.lower()} meter/group index {index} is outside 0-65535")
    return ID_APP | (int(feature) << 16) | index


def is_sdn_id(value: int) -> bool:
    """True for a meter or group id in sdn's range (top byte 0x5d), whatever the feature."""
    return value & ID_APP_MASK == ID_APP


# OpenFlow special ports / values used by the compiler.
OFPP_IN_PORT = 0xFFFFFFF8
OFPP_CONTROLLER = 0xFFFFFFFD
OFPCML_NO_BUFFER = 0xFFFF
OFPVID_PRESENT = 0x1000
OFPVID_NONE = 0x0000

MatchValue = Union[int, str, tuple]


@dataclass(frozen=True, slots=True)
class Output:
    port: int


@dataclass(frozen=True, slots=True)
class Controller:
    max_len: int = OFPCML_NO_BUFFER


@dataclass(frozen=True, slots=True)
class PushVlan:
    ethertype: int = 0x8100


@dataclass(frozen=True, slots=True)
class PopVlan:
    pass


@dataclass(frozen=True, slots=True)
class SetField:
    field: str
    value: MatchValue


@dataclass(frozen=True, slots=True)
class Move:
    """Copy ``n_bits`` from ``src`` to ``dst`` (Nicira reg_move; whole fields here)."""

    src: str
    dst: str
    n_bits: int


@dataclass(frozen=True, slots=True)
class Meter:
    meter_id: int


@dataclass(frozen=True, slots=True)
class DecTtl:
    """Decrement the IPv4 TTL (a router hop); OVS drops the packet at 0."""


@dataclass(frozen=True, slots=True)
class Nat:
    """Conntrack NAT inside :class:`Ct`: ``kind`` None re-applies an existing binding;
    "src"/"dst" with ``ip`` (and optional ``port``) create one (commit only)."""

    kind: str | None = None
    ip: str | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class Ct:
    """Send through conntrack in ``zone``; continue in ``table`` (recirculation) if given.

    ``zone`` is a number, or a register name whose low 16 bits hold it (``"reg2"``: one flow
    serves every VIF's zone). ``marks`` are ``SetField``s of ``ct_mark``/``ct_label`` applied
    to the connection on commit (OVS ``exec(...)``)."""

    zone: int | str
    table: Table | None = None
    commit: bool = False
    nat: Nat | None = None
    marks: tuple = ()


@dataclass(frozen=True, slots=True)
class Group:
    """Apply group ``group_id`` (OpenFlow 1.3 §5.6): a :class:`GroupEntry` of some feature."""

    group_id: int


@dataclass(frozen=True, slots=True)
class Resubmit:
    """Run the packet through ``table`` and come back (Nicira resubmit; may go backwards, and
    works inside group buckets, where goto_table cannot)."""

    table: Table


@dataclass(frozen=True, slots=True)
class Conjunction:
    """Clause ``clause`` (1-based) of ``n_clauses`` of conjunctive match ``conj_id`` (OVS
    ``conjunction(id,k/n)``): a packet matching a flow of every clause matches the flow with
    ``conj_id=id``. Lets M x N combinations cost M + N flows (ovs-fields(7))."""

    conj_id: int
    clause: int
    n_clauses: int


Action = Union[Output, Controller, PushVlan, PopVlan, SetField, Move, Meter, DecTtl, Ct, Group,
               Resubmit, Conjunction]
#: Every action type; each encoder (``sdn.apps.ofwire``, ``sdn.apps.ofmsgs``,
#: ``sdn.flows.ofctl``, ``sdn.flows.trace``) handles each of them (tested).
ACTION_TYPES = (Output, Controller, PushVlan, PopVlan, SetField, Move, Meter, DecTtl, Ct, Group,
                Resubmit, Conjunction)

#: ct_state bits (OVS nicira-ext): match with (value, mask).
CT_NEW, CT_EST, CT_REL, CT_RPL, CT_INV, CT_TRK = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def ct_state(*, plus: int = 0, minus: int = 0) -> tuple[int, int]:
    """ct_state match: flags in ``plus`` set, in ``minus`` clear (``+trk+new`` style)."""
    return (plus, plus | minus)


@dataclass(frozen=True, slots=True)
class Flow:
    """One flow entry as data. ``actions`` are apply-actions; ``goto`` an optional next table.

    A flow with no actions and no goto drops. ``match`` is a tuple of (field, value) pairs
    sorted by field name, so equal flows compare and hash equal (see :func:`flow`).
    """

    feature: Feature
    table: Table
    priority: int
    match: tuple[tuple[str, MatchValue], ...]
    actions: tuple[Action, ...] = ()
    goto: Table | None = None

    @property
    def key(self) -> tuple:
        """Identity on the switch (OpenFlow 1.3 §6.4): table, priority and match."""
        return (int(self.table), self.priority, self.match)


def flow(feature: Feature, table: Table, priority: int, match: dict | None = None,
         actions: tuple | list = (), goto: Table | None = None) -> Flow:
    """Build a :class:`Flow`, normalising ``match`` (dict) into a sorted tuple."""
    if not match:
        return Flow(feature, table, priority, (), tuple(actions), goto)
    pairs = list(match.items())
    names = tuple([p[0] for p in pairs])
    order = _ORDER.get(names)
    if order is None:   # few distinct field sets exist; names are unique, so sort by name
        order = _ORDER[names] = tuple(sorted(range(len(names)), key=names.__getitem__))
    if len(_PAIRS) > _PAIRS_MAX:
        _PAIRS.clear()
    intern = _PAIRS.setdefault
    items = tuple([intern(pairs[i], pairs[i]) for i in order])
    return Flow(feature, table, priority, items, tuple(actions), goto)


# (field, value) pairs repeat across flows (eth_type, ip_proto, a VIF's MAC/port in ~16 flows):
# one shared tuple each keeps 100k+ flows in memory at a fraction of the size.
_PAIRS: dict = {}
_PAIRS_MAX = 1 << 20
_ORDER: dict = {}


def vlan_vid(vlan: int) -> int:
    """OXM vlan_vid value for a tagged frame: OFPVID_PRESENT | vlan (OpenFlow 1.3 §7.2.3.7)."""
    if not 1 <= vlan <= 4094:
        raise ValueError(f"VLAN {vlan} is outside 1-4094")
    return OFPVID_PRESENT | vlan


#: MeterEntry units: packets per second, kilobits per second (OpenFlow 1.3 OFPMF_PKTPS/KBPS)
PKTPS, KBPS = "pktps", "kbps"


@dataclass(frozen=True, slots=True)
class MeterEntry:
    """A drop meter (OpenFlow 1.3 §5.7) owned by ``feature``; ``meter_id`` from
    :func:`entry_id`. ``rate`` in ``unit`` (packets/s, or kbit/s); ``burst`` in the same unit
    (packets, or kbit), 0 = a tenth of the rate (at least 1)."""

    feature: Feature
    meter_id: int
    rate: int
    unit: str = PKTPS
    burst: int = 0

    @property
    def burst_size(self) -> int:
        """The burst the switch is given (``burst`` resolved)."""
        return self.burst or max(1, self.rate // 10)

    @property
    def spec(self) -> tuple[str, int, int]:
        """(unit, rate, burst size): what a switch's meter config must equal (reconcile)."""
        return (self.unit, self.rate, self.burst_size)


@dataclass(frozen=True, slots=True)
class GroupEntry:
    """A group (OpenFlow 1.3 §5.6) owned by ``feature``; ``group_id`` from :func:`entry_id`.
    ``buckets`` is a tuple of action tuples; type "all" copies the packet to every bucket.
    A bucket may apply another group, which must then be added first (see ``children``)."""

    feature: Feature
    group_id: int
    buckets: tuple[tuple[Action, ...], ...]
    type: str = "all"

    @property
    def children(self) -> tuple[int, ...]:
        """Ids of the groups its buckets apply."""
        return tuple(a.group_id for bucket in self.buckets for a in bucket if isinstance(a, Group))


@dataclass
class Desired:
    """What one datapath must hold: flows, meters (id -> entry) and groups (id -> entry).
    The result of ``sdn.flows.compiler.compile_datapath``; the engine makes the switch match."""

    flows: list[Flow]
    meters: dict[int, MeterEntry]
    groups: dict[int, GroupEntry]


class ActionTable(dict):
    """One encoder's ``{action type: function}``: how it renders each action (bytes, os-ken
    objects, ovs-ofctl text, a simulated effect). Every encoder declares one covering
    :data:`ACTION_TYPES` (tests/unit/test_encoders.py), so a new action costs one function
    per encoder and a forgotten one fails a test; ``encoder`` names it in errors."""

    def __init__(self, encoder: str, functions: dict):
        super().__init__(functions)
        self.encoder = encoder


def dispatch(table: ActionTable, action, *args):
    """``table[type(action)](action, *args)``; TypeError, naming the encoder, for anything
    that is not one of :data:`ACTION_TYPES` (or that the encoder does not handle)."""
    try:
        render = table[type(action)]
    except KeyError:
        if type(action) in ACTION_TYPES:
            raise TypeError(f"{table.encoder} has no encoding of {action!r}") from None
        raise TypeError(f"{table.encoder} cannot encode {action!r}: not one of "
                        f"{', '.join(t.__name__ for t in ACTION_TYPES)}") from None
    return render(action, *args)
