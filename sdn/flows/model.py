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
    """Pipeline tables (goto_table only moves forward). Names appear in dump-flows --names."""

    CLASSIFY = 0          # by in_port (VIF, trunk VLAN tag, public port) -> reg5/reg6
    PORT_SECURITY = 10    # anti-spoof: MAC/IP/ARP/ND, no rogue DHCP/RA
    SERVICES = 20         # DHCP punt, gateway ARP responder, routed traffic -> L3
    EGRESS_ACL = 30       # reserved: egress security groups (conntrack)
    UPLINK = 35           # from the public port: ARP for router addresses, accept -> L3
    L3_UNSNAT = 40        # conntrack SNAT zone: replies to SNATed connections
    L3_DNAT = 41          # conntrack DNAT zone: floating IP, metadata, VPN addresses
    L3_DNAT_COMMIT = 42   # new connections: commit the DNAT
    L3_ROUTE = 43         # next hop by destination: a fixed IP here, or the external gateway
    L3_UNDNAT = 44        # replies from DNAT backends back to their public address
    L3_SNAT = 45          # which source NAT (none for metadata/dmz, floating, routing_source_ip)
    L3_SNAT_COMMIT = 46   # new connections: commit the SNAT
    L3_OUTPUT = 47        # into the tenant network or out of the public port
    INGRESS_ACL = 60      # reserved: ingress security groups
    DELIVERY = 70         # L2 within the network: local port, trunk (tagged), flood

    @property
    def label(self) -> str:
        return self.name.lower()


class Reg:
    """Registers carried through the pipeline (NXM reg0-7, OpenFlow 1.3 via OVS extensions)."""

    L3_FLAGS = "reg3"     # router pass: bit 0 DNAT done, bit 1 next hop is a tenant port
    SRC_PORT = "reg5"     # ofport the packet came in on
    NET = "reg6"          # segment key: VLAN id, or FLAT_KEY_BASE | network id (sdn.view)
    DST_PORT = "reg7"     # reserved: destination ofport once resolved


class Feature(enum.IntEnum):
    """Which module a flow comes from; byte 6 of its cookie."""

    PIPELINE = 0x01       # sdn/flows/pipeline.py: table defaults (drops, pass-through)
    CLASSIFIER = 0x02     # sdn/flows/classifier.py
    PORT_SECURITY = 0x03  # sdn/flows/port_security.py
    DHCP = 0x04           # sdn/flows/dhcp.py
    GATEWAY_ARP = 0x05    # sdn/flows/arp_responder.py
    L2 = 0x06             # sdn/flows/l2.py
    ROUTER = 0x07         # sdn/flows/router.py: gateway routing, floating IPs, SNAT, metadata, VPN


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


def describe_cookie(value: int) -> str:
    """Human-readable origin of a cookie: ``"l2 gen 7"``, or ``"foreign"`` if not sdn's."""
    if value >> 56 != COOKIE_APP:
        return "foreign"
    try:
        feature = Feature((value >> 48) & 0xFF).name.lower()
    except ValueError:
        feature = f"feature-{(value >> 48) & 0xFF:#x}"
    return f"{feature} gen {value & GENERATION_MASK}"


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
    """Send through conntrack in ``zone``; continue in ``table`` (recirculation) if given."""

    zone: int
    table: Table | None = None
    commit: bool = False
    nat: Nat | None = None


Action = Union[Output, Controller, PushVlan, PopVlan, SetField, Move, Meter, DecTtl, Ct]

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
