"""Why a packet went where it went: ``ovs-appctl ofproto/trace`` text + state -> explanation.

Pure: no switch, no database. ``sdn trace`` (``sdn/tracecmd.py``) builds the packet from state
(:func:`packet_spec`), runs ``ofproto/trace`` on the real switch and hands its text here with a
:class:`Context` (the bridge's ports as VIFs/public port/trunks, segments, security group rules).

What is read from a trace (OVS 3.x ``ofproto/trace`` output, ovs-vswitchd(8)):

- passes: the first translation and one per conntrack recirculation (``recirc(0x..) - resume
  conntrack with [default] ct_state=...``), each with its ``Flow:``, the NAT the trace
  simulated (``Initial flow``/``Modified flow``), its steps and ``Datapath actions``;
- steps: ``<table>. <match>, priority <p>, cookie <c>`` and the actions below it. The cookie's
  feature byte names the module that installed the flow (``sdn.flows.model.Feature``), the
  table number its stage (``sdn.flows.model.Table``).

The verdict is one sentence: where the packet went (delivered to a VIF, out of the public port
after SNAT, answered by the controller or an ARP responder) or which feature dropped it and
why, in terms of state (the port's addresses, the VIF's security groups, the segments).
``sdn flows`` uses :func:`parse_dump_flows` / :func:`group_flows` on ``ovs-ofctl dump-flows``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from sdn.flows.model import Feature, Table, feature_of
from sdn.flows.router import METADATA_IP
from sdn.flows.security_groups import LABEL_SAME_NET, PRIO_PROVIDER

# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class Port:
    """One OpenFlow port of the bridge, as state knows it. ``kind``: "vif", "public",
    "trunk" or "port" (anything else). VIF fields are empty for the others."""

    number: int
    name: str
    kind: str = "port"
    instance: str | None = None
    mac: str | None = None
    addresses: tuple[str, ...] = ()
    allowed_pairs: tuple[tuple[str, str], ...] = ()   #: (mac, ip or CIDR)
    port_security: bool = True
    groups: tuple[str, ...] = ()       #: the instance's security group names
    segment: int | None = None         #: reg6 key of its network

    @property
    def title(self) -> str:
        """``port tap1234 (instance a1)`` / ``the public port sdnpb1``."""
        if self.kind == "vif":
            return f"port {self.name} (instance {self.instance})"
        if self.kind == "public":
            return f"the public port {self.name}"
        return f"{'trunk' if self.kind == 'trunk' else 'port'} {self.name}"


@dataclass(frozen=True)
class Context:
    """What an explanation needs from state. ``segments``: reg6 key -> "VLAN 400" /
    "flat network 3"; ``macs``: every VIF MAC -> (instance, reg6 key), plugged here or not;
    ``rules``: security group rule id (a connection's ct_label) -> "rule 4 of default:
    ingress IPv4 tcp 22-22 from 0.0.0.0/0"; ``floating``: floating IP -> fixed IP."""

    ports: dict[int, Port] = field(default_factory=dict)
    segments: dict[int, str] = field(default_factory=dict)
    macs: dict[str, tuple[str, int]] = field(default_factory=dict)
    rules: dict[int, str] = field(default_factory=dict)
    floating: dict[str, str] = field(default_factory=dict)

    def port(self, number) -> Port:
        number = _int(number)
        return self.ports.get(number) or Port(number, f"#{number}")

    def segment(self, key) -> str:
        key = _int(key)
        return self.segments.get(key) or (f"segment {key:#x}" if key else "no segment")

    def rule(self, label) -> str:
        label = _int(label)
        if label == LABEL_SAME_NET:
            return "its own network (allow_same_net_traffic)"
        return self.rules.get(label) or f"rule {label}"


#: the router's isolation drop in l3_snat (fixed -> fixed without DNAT; ``sdn.flows.router``)
PRIO_ISOLATION = 150


def _int(value) -> int:
    if isinstance(value, int):
        return value
    return int(str(value), 0)


# --------------------------------------------------------------------------- the trace


@dataclass
class Step:
    """One flow hit: its table, priority, cookie (None for "No match"), match text and the
    action lines OVS printed under it (nested resubmits appear as their own steps)."""

    table: int
    priority: int | None
    cookie: int | None
    match: str
    actions: list[str] = field(default_factory=list)
    skipped_outputs: int = 0   #: outputs OVS skipped (to the input port)

    @property
    def feature(self) -> Feature | None:
        return feature_of(self.cookie) if self.cookie is not None else None

    @property
    def table_name(self) -> str:
        return table_label(self.table)

    @property
    def drops(self) -> bool:
        """No actions, or only a ``drop`` (a ct() that recirculates also prints ``drop``)."""
        if not self.actions:
            return True
        return self.actions[-1] == "drop" and not any(
            a.startswith(("ct(", "output", "CONTROLLER", "IN_PORT", "group")) for a in self.actions)


@dataclass
class Pass:
    """One translation: the first, or one resumed after conntrack (``ct_state`` is what the
    trace assumed: OVS's default ``trk|new`` unless given with ``--ct-next``)."""

    flow: dict[str, str]
    steps: list[Step] = field(default_factory=list)
    ct_state: str | None = None
    ct_assumed: bool = False          #: ct_state given by --ct-next, not OVS's default
    nat: tuple[str, str] | None = None  #: (initial, modified) addresses the trace simulated
    final: dict[str, str] | None = None
    datapath_actions: str = ""

    @property
    def fields(self) -> dict[str, str]:
        """The packet at the end of this pass (``Final flow``, else ``Flow``)."""
        return self.final if self.final is not None else self.flow


def table_label(number: int) -> str:
    try:
        return Table(number).label
    except ValueError:
        return f"table {number}"


_STEP = re.compile(r"^\s*(\d+)\.\s+(.*)$")
_HIT = re.compile(r"^(?:(?P<match>.*?),\s)?priority (?P<prio>\d+)(?:,\s*cookie (?P<cookie>0x[0-9a-fA-F]+))?\s*$")
_RESUME = re.compile(r"recirc\(0x[0-9a-f]+\) - resume conntrack with (?P<default>default )?"
                     r"ct_state=(?P<state>[a-z|]+)")


def parse_flow_fields(text: str) -> dict[str, str]:
    """``icmp,in_port=2,nw_src=10.0.0.3`` -> {"icmp": "", "in_port": "2", "nw_src": "10.0.0.3"}."""
    out: dict[str, str] = {}
    for part in _split_top(text.strip()):
        name, _, value = part.partition("=")
        if name:
            out[name.strip()] = value.strip()
    return out


def _split_top(text: str) -> list[str]:
    """Split at commas outside parentheses (``ct(zone=1,nat)`` stays whole)."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if cur:
        parts.append("".join(cur))
    return [p for p in parts if p]


def parse_trace(text: str) -> list[Pass]:
    """The passes of an ``ofproto/trace`` output, in order; [] for text that is no trace."""
    passes: list[Pass] = []
    pending: dict = {}
    step: Step | None = None
    in_nat = False
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if not stripped or set(stripped) <= {"=", "-"}:
            continue
        resume = _RESUME.search(stripped)
        if resume:
            pending = {"ct_state": resume["state"], "ct_assumed": not resume["default"]}
            continue
        if stripped.startswith("Replacing src/dst"):
            in_nat = True
            continue
        if in_nat and stripped.startswith(("Initial flow:", "Modified flow:")):
            pending.setdefault("nat_lines", []).append(stripped.split(":", 1)[1].strip())
            continue
        in_nat = False
        if stripped.startswith("Flow: "):
            nat = pending.pop("nat_lines", None)
            passes.append(Pass(flow=parse_flow_fields(stripped[6:]),
                               nat=tuple(nat) if nat and len(nat) == 2 and nat[0] else None,
                               **pending))
            pending, step = {}, None
            continue
        if not passes:
            continue
        current = passes[-1]
        if stripped.startswith("Final flow: "):
            rest = stripped[len("Final flow: "):]
            current.final = None if rest == "unchanged" else parse_flow_fields(rest)
            step = None
            continue
        if stripped.startswith("Datapath actions: "):
            current.datapath_actions = stripped[len("Datapath actions: "):]
            continue
        if stripped.startswith(("Megaflow:", "bridge(", "thaw", "Resuming from", "This flow is",
                                "- ", "Translation failed")):
            continue
        hit = _STEP.match(line)
        if hit and (hit[2].startswith("No match") or _HIT.match(hit[2])):
            if hit[2].startswith("No match"):
                step = Step(int(hit[1]), None, None, "")
            else:
                h = _HIT.match(hit[2])
                step = Step(int(hit[1]), int(h["prio"]),
                            int(h["cookie"], 16) if h["cookie"] else None, h["match"] or "")
            current.steps.append(step)
            continue
        if step is None:
            continue
        if stripped.startswith(">>") and "skipping output to input port" in stripped:
            if step.actions and step.actions[-1].startswith("output"):
                step.actions.pop()
                step.skipped_outputs += 1
            continue
        if stripped.startswith(("->", ">>")):
            continue
        step.actions.append(stripped)
    return passes


# --------------------------------------------------------------------------- verdict


@dataclass
class Explanation:
    """``steps``: one line per flow hit, with the pass it belongs to; ``verdict``: one
    sentence; ``outcome``: "delivered", "output", "controller", "answered", "dropped" or
    "undetermined"; ``assumptions``: what the trace had to assume (conntrack states)."""

    steps: list[dict]
    verdict: str
    outcome: str
    assumptions: list[str]

    def as_dict(self) -> dict:
        return {"steps": self.steps, "verdict": self.verdict, "outcome": self.outcome,
                "assumptions": self.assumptions}

    def text(self) -> str:
        lines, last_pass = [], 0
        for s in self.steps:
            if s["pass"] != last_pass:
                last_pass = s["pass"]
                lines.append(f"   -- after conntrack: {s['ct_state']}")
            feat = s["feature"] or "-"
            lines.append(f"{s['table']:>3} {s['table_name']:<18} {feat:<16} {s['note']}")
        for a in self.assumptions:
            lines.append(f"note: {a}")
        lines.append(f"=> {self.verdict}")
        return "\n".join(lines)


def explain(text: str, ctx: Context) -> Explanation:
    """Explain one ``ofproto/trace`` output (``text``) with ``ctx``; never raises on odd text
    (an unparseable trace gives outcome "undetermined")."""
    passes = parse_trace(text)
    if not passes:
        first = text.strip().splitlines()[0] if text.strip() else "no output"
        return Explanation([], f"no trace to explain: {first}", "undetermined", [])
    steps, assumptions = [], []
    for i, p in enumerate(passes):
        if i and p.ct_state:
            how = "given with --ct-next" if p.ct_assumed else "OVS's default for a trace"
            note = f"conntrack state {_ct_words(p.ct_state)} assumed ({how})"
            if note not in assumptions:
                assumptions.append(note)
        state = "" if not i else f"{_ct_words(p.ct_state)}" + (
            f"; NAT {_nat_change(*p.nat)}" if p.nat else "")
        for s in p.steps:
            steps.append({"pass": i, "ct_state": state, "table": s.table,
                          "table_name": s.table_name,
                          "feature": s.feature.name.lower() if s.feature else
                          ("foreign" if s.cookie is not None else None),
                          "priority": s.priority, "match": s.match, "actions": list(s.actions),
                          "note": _note(s, ctx)})
    outcome, verdict = _verdict(passes, ctx)
    return Explanation(steps, verdict, outcome, assumptions)


def _nat_change(initial: str, modified: str) -> str:
    """``nw_dst 172.30.0.65 -> 10.0.0.3`` from the trace's Initial/Modified flow lines."""
    a, b = parse_flow_fields(initial), parse_flow_fields(modified)
    changed = [f"{k} {a[k]} -> {b[k]}" for k in a if k in b and a[k] != b[k]]
    return ", ".join(changed) or "none"


def _ct_words(state: str | None) -> str:
    if not state:
        return ""
    flags = set(state.split("|"))
    if "inv" in flags:
        return "invalid"
    words = "established reply" if {"est", "rpl"} <= flags else \
        "established" if "est" in flags else "related" if "rel" in flags else \
        "new connection" if "new" in flags else state
    return f"{words} ({state})"


def _outputs(passes: list[Pass]) -> list[tuple[Step, str, Pass]]:
    """Every (step, action, pass) that sends the packet somewhere: output, IN_PORT, CONTROLLER."""
    out = []
    for p in passes:
        for s in p.steps:
            for a in s.actions:
                if a.startswith(("output:", "IN_PORT", "CONTROLLER")):
                    out.append((s, a, p))
    return out


def _nats(passes: list[Pass]) -> list[tuple[str, str, Step]]:
    """(kind "src"/"dst", address, step) of every committed NAT in the trace."""
    out = []
    for p in passes:
        for s in p.steps:
            for a in s.actions:
                m = re.match(r"nat\((src|dst)=([0-9.]+)", a)
                if m:
                    out.append((m[1], m[2], s))
    return out


def _verdict(passes: list[Pass], ctx: Context) -> tuple[str, str]:
    first = passes[0].flow
    sends = _outputs(passes)
    drop_logged = [x for x in sends if x[0].table in (Table.EGRESS_ACL_DROP, Table.INGRESS_ACL_DROP)]
    sends = [x for x in sends if x not in drop_logged]
    if not sends:
        why = _why_dropped(passes, ctx)
        if why.startswith("undetermined"):
            return "undetermined", why
        return "dropped", why + (" (sampled to the controller's log)" if drop_logged else "")
    controller = [x for x in sends if x[1].startswith("CONTROLLER")]
    if controller and len(sends) == len(controller):
        step = controller[0][0]
        what = {Feature.DHCP: "DHCP", Feature.ROUTER: "the external gateway's ARP reply: "
                "the router learns its MAC"}.get(step.feature, step.feature.name.lower()
                                                  if step.feature else "foreign flow")
        return "controller", f"answered by the controller ({what})"
    in_port = [x for x in sends if x[1].startswith("IN_PORT")]
    if in_port and len(sends) == len(in_port):
        step, _, p = in_port[0]
        spa = _set_value(step, "arp_spa")
        sha = _set_value(step, "arp_sha") or _set_value(step, "eth_src")
        who = "the gateway ARP responder" if step.feature == Feature.GATEWAY_ARP else \
            "the router's ARP responder" if step.feature == Feature.ROUTER else \
            f"{table_label(step.table)} ({step.feature.name.lower() if step.feature else 'foreign'})"
        if spa:
            return "answered", f"answered by {who}: {spa} is at {sha}"
        return "answered", f"sent back out of the port it came in on by {who}"
    nats = _nats(passes)
    prefix = ""
    dnat = [n for n in nats if n[0] == "dst"]
    if dnat:
        public = next((p.nat[0] for p in passes if p.nat), "")
        orig = _field(public, "nw_dst") or first.get("nw_dst", "?")
        owner = "the metadata host" if orig == METADATA_IP else _owner_of(dnat[0][1], ctx)
        prefix = f"DNAT {orig} to {dnat[0][1]}{f' ({owner})' if owner else ''}, then "
    snat = [n for n in nats if n[0] == "src"]
    places = []
    for step, action, p in sends:
        if action.startswith("CONTROLLER"):
            places.append("to the controller")
            continue
        number = p.flow.get("in_port") if action.startswith("IN_PORT") else action.split(":", 1)[1]
        port = ctx.port(number)
        if port.kind == "vif":   # SNATed on the way in: a hairpin through a floating IP
            places.append((f"SNAT to {snat[-1][1]}, " if snat else "")
                          + f"delivered to {port.instance} on {port.name}")
        elif port.kind == "public":
            places.append((f"SNAT to {snat[-1][1]} and " if snat else "") + "out of the public port"
                          + f" {port.name}")
        elif port.kind == "trunk":
            vlan = _vlan_pushed(step)
            owner = ctx.macs.get(p.fields.get("dl_dst", ""))
            places.append(f"out of trunk {port.name}" + (f" tagged VLAN {vlan}" if vlan else "")
                          + (f" toward {owner[0]} (on another switch)" if owner else ""))
        else:
            places.append(f"out of {port.title}")
    places = list(dict.fromkeys(places))
    outcome = "delivered" if all("delivered to" in pl for pl in places) else "output"
    flooded = any(a.startswith("group:") for p in passes for s in p.steps for a in s.actions)
    if len(places) > 1 or flooded:
        seg = ctx.segment(passes[-1].fields.get("reg6", "0"))
        return outcome, prefix + f"flooded in {seg}: " + "; ".join(places)
    return outcome, prefix + places[0]


def _set_value(step: Step, name: str) -> str | None:
    for a in step.actions:
        m = re.match(rf"set_field:([^-]+)->{name}$", a)
        if m:
            return m[1]
    return None


def _vlan_pushed(step: Step) -> int | None:
    for a in step.actions:
        m = re.match(r"set_field:(\d+)->vlan_vid", a)
        if m:
            return int(m[1]) & 0xFFF
    return None


def _field(flow_text: str, name: str) -> str | None:
    m = re.search(rf"\b{name}=([^,\s]+)", flow_text or "")
    return m[1] if m else None


def _owner_of(address: str, ctx: Context) -> str | None:
    for port in ctx.ports.values():
        if address in port.addresses:
            return f"{port.instance}'s fixed IP"
    return None


def _what(fields: dict[str, str]) -> str:
    """``tcp/23``, ``udp/53``, ``icmp type 8``, ``arp``, ``ip proto 47``."""
    dst = fields.get("tp_dst")
    for proto in ("tcp", "udp", "sctp"):
        if proto in fields or proto + "6" in fields:
            return f"{proto}/{dst}"
    if "icmp" in fields or "icmp6" in fields:
        return f"icmp type {fields.get('icmp_type', '?')}"
    if "arp" in fields:
        return "arp"
    return f"ip proto {fields.get('nw_proto', '?')}"


def _why_dropped(passes: list[Pass], ctx: Context) -> str:
    last = passes[-1]
    if not last.steps:
        return "dropped before any flow matched"
    step = last.steps[-1]
    fields = last.fields
    first = passes[0].flow
    src_port = ctx.port(first.get("in_port", "0"))
    table = step.table
    if table == Table.CLASSIFY and src_port.kind == "vif" and "dl_vlan" in first:
        return (f"dropped at classify: {src_port.title} takes untagged frames only; this frame "
                f"is tagged VLAN {first['dl_vlan']}")
    if table == Table.CLASSIFY and src_port.kind == "trunk":
        tag = f"VLAN {first['dl_vlan']}" if "dl_vlan" in first else "none: untagged"
        return (f"dropped at classify: {src_port.title} takes no segment with this frame's tag "
                f"({tag}) on this bridge")
    if table == Table.CLASSIFY:
        return (f"dropped at classify: {src_port.title} is no VIF, trunk or public port sdn knows "
                f"on this bridge (or the frame is tagged where only untagged frames are taken)")
    if table == Table.PORT_SECURITY:
        return _port_security(src_port, first, step)
    if table in (Table.EGRESS_ACL_DROP, Table.INGRESS_ACL_DROP):
        return _acl_drop(last, passes, ctx)
    if table == Table.L3_SNAT and step.priority == PRIO_ISOLATION:
        return _cross(src_port, ctx, fields)
    if table == Table.L2_LOOKUP:
        mac = fields.get("dl_dst", "?")
        seg = fields.get("reg6", "0")
        owner = ctx.macs.get(mac)
        if owner and owner[1] != _int(seg):
            return (f"cross-project: {ctx.segment(seg)} and {ctx.segment(owner[1])} do not meet "
                    f"({mac} is {owner[0]}'s, on {ctx.segment(owner[1])})")
        return f"dropped in l2_lookup: no VIF in {ctx.segment(seg)} has MAC {mac}"
    if table == Table.L3_DNAT:
        if "+inv" in step.match:
            return "dropped by the router: conntrack finds the packet invalid"
        return (f"dropped by the router: the outside may not open connections to fixed IP "
                f"{fields.get('nw_dst', '?')} (only to a floating IP)")
    if table == Table.L3_DNAT_COMMIT:
        return ("dropped by the router: the connection's floating IP now points at another "
                "fixed IP")
    if table == Table.L3_ROUTE:
        return (f"dropped by the router: no route to {fields.get('nw_dst', '?')} (no fixed IP "
                f"of this cloud; the outside is reached once the external gateway's MAC is "
                f"learned)")
    if table == Table.UPLINK:
        return (f"dropped at uplink: the public port takes ARP for and IP to the router's "
                f"addresses only ({fields.get('nw_dst') or fields.get('arp_tpa', '?')} is none)")
    feat = step.feature.name.lower() if step.feature else "a foreign flow"
    how = "table-miss" if step.priority == 0 else f"flow priority {step.priority}"
    return f"dropped in {table_label(table)} by {feat} ({how}: {step.match or 'any'})"


def _port_security(port: Port, fields: dict[str, str], step: Step) -> str:
    if port.kind != "vif":
        return f"dropped by port security: {port.title} is not a VIF sdn filters"
    src_mac = fields.get("dl_src", "?")
    macs = {port.mac} | {m for m, _ in port.allowed_pairs}
    head = f"dropped by port security: {port.title}"
    if src_mac not in macs:
        return f"{head} may send from MAC {port.mac} only; this packet's source MAC is {src_mac}"
    if ("udp" in fields and fields.get("tp_src") == "67") or (
            "udp6" in fields and fields.get("tp_src") == "547"):
        return f"{head} may not answer DHCP (it sends from a DHCP server port)"
    if "icmp6" in fields and fields.get("icmp_type") == "134":
        return f"{head} may not send router advertisements"
    allowed = " or ".join(list(port.addresses) + [ip for _, ip in port.allowed_pairs]) or "nothing"
    if "arp" in fields:
        if fields.get("arp_sha", src_mac) not in macs:
            return (f"{head} may send ARP as {port.mac} only; this packet's ARP sender is "
                    f"{fields.get('arp_sha')}")
        return (f"{head} may send ARP from {allowed} only; this packet's ARP sender is "
                f"{fields.get('arp_spa', '?')}")
    src = fields.get("nw_src") or fields.get("ipv6_src") or "?"
    return f"{head} may send from {allowed} only; this packet's source is {src}"


def _acl_drop(last: Pass, passes: list[Pass], ctx: Context) -> str:
    fields = last.fields
    ingress = last.steps[-1].table == Table.INGRESS_ACL_DROP
    vif = ctx.port(fields.get("reg7" if ingress else "reg5", "0"))
    state_t = Table.INGRESS_ACL_STATE if ingress else Table.EGRESS_ACL_STATE
    rules_t = Table.INGRESS_ACL_RULES if ingress else Table.EGRESS_ACL_RULES
    via = [s for s in last.steps if s.table in (state_t, rules_t)]
    who = vif.instance or vif.name
    groups = ", ".join(vif.groups) or "none"
    if via and via[-1].table == state_t:
        s = via[-1]
        if "+inv" in s.match:
            return "dropped by security group: conntrack finds the packet invalid"
        if last.ct_assumed:
            return ("undetermined by the trace: with the conntrack state assumed (--ct-next), "
                    "ofproto/trace cannot give the connection's ct_label (the rule that "
                    f"admitted it), so {table_label(state_t)} cannot check that rule still "
                    f"applies to {who}; on the switch it passes while it does")
        return (f"dropped by security group: the connection's admitting rule no longer applies "
                f"to {who} (groups {groups}); it is marked blocked")
    what = _what(fields)
    if ingress and via and via[-1].priority == PRIO_PROVIDER:
        return (f"dropped by a provider rule (sdn provider-rule list): {what} from "
                f"{fields.get('nw_src') or fields.get('ipv6_src', '?')} matches "
                f"{via[-1].match}")
    if ingress:
        return (f"dropped by security group: no ingress rule of {who}'s groups ({groups}) "
                f"admits {what} from {fields.get('nw_src') or fields.get('ipv6_src', '?')}")
    return (f"dropped by security group: no egress rule of {who}'s groups ({groups}) admits "
            f"{what} to {fields.get('nw_dst') or fields.get('ipv6_dst', '?')}")


def _cross(src: Port, ctx: Context, fields: dict[str, str]) -> str:
    here = ctx.segment(src.segment) if src.segment is not None else "its segment"
    there = ctx.segment(fields.get("reg6", "0"))
    return (f"cross-project: {here} and {there} do not meet (the router does not route between "
            f"tenant networks; a floating IP does)")


# --------------------------------------------------------------------------- one line per step


def _note(step: Step, ctx: Context) -> str:
    """What one flow hit means, in state's terms where the feature is known."""
    acts = step.actions
    sets = {m[2]: m[1] for a in acts if (m := re.match(r"set_field:([^-]+)->(\w+)$", a))}
    goto = next((a.split(":", 1)[1] for a in acts if a.startswith("goto_table:")), None)
    then = f" -> {table_label(int(goto))}" if goto and goto.isdigit() else ""
    t, f = step.table, step.feature
    if step.priority is None:
        return "no flow matches: drop"
    if t == Table.CLASSIFY and "reg5" in sets:
        port = ctx.port(sets["reg5"])
        seg = f", segment {ctx.segment(sets['reg6'])}" if "reg6" in sets else ""
        return f"from {port.title}{seg}{then}"
    if t == Table.PORT_SECURITY and goto:
        return f"the VIF sends as itself ({_short(step.match)}){then}"
    if t in (Table.EGRESS_ACL, Table.INGRESS_ACL) and step.priority == 300 and goto:
        return f"always allowed (DHCP, ND, MLD){then}"
    if t == Table.UPLINK and goto:
        return f"to the router ({_field(step.match, 'nw_dst') or 'its address'}){then}"
    if t == Table.L3_UNDNAT and goto and "reg3" in step.match:
        return f"DNAT done in this pass: nothing to un-DNAT{then}"
    if t == Table.L3_OUTPUT and goto and "reg4" in step.match:
        return f"next hop is a tenant port{then}"
    if t in (Table.EGRESS_ACL, Table.INGRESS_ACL, Table.L3_UNSNAT, Table.L3_DNAT,
             Table.L3_UNDNAT, Table.L3_SNAT) and any(a.startswith("ct(") and "commit" not in a
                                                     for a in acts):
        ct = next(a for a in acts if a.startswith("ct("))
        zone = re.search(r"zone=(\d+)", ct)
        to = re.search(r"table=(\d+)", ct)
        nat = " (re-applying its NAT)" if ",nat" in ct else ""
        return (f"conntrack zone {zone[1] if zone else '?'}{nat}"
                + (f", then {table_label(int(to[1]))}" if to else ""))
    commit = next((a for a in acts if a.startswith("ct(commit")), None)
    if commit and f == Feature.SECURITY_GROUPS:
        label = re.search(r"set_field:(0x[0-9a-f]+)->ct_label", commit)
        mark = re.search(r"set_field:(0x[0-9a-f]+)->ct_mark", commit)
        if label:
            return f"admitted by {ctx.rule(label[1])}; committed{then}"
        if mark:
            return f"connection marked blocked (ct_mark {mark[1]}){then}"
    nat = next((re.search(r"nat\((src|dst)=([0-9.]+)", a) for a in acts if "nat(" in a), None)
    if commit and nat:
        kind = "SNAT to" if nat[1] == "src" else "DNAT to"
        return f"new connection: {kind} {nat[2]}, committed"
    if t == Table.INGRESS_ACL_RULES and step.priority == PRIO_PROVIDER and goto:
        return f"a provider rule drops it ({_short(step.match)}){then}"
    if t in (Table.EGRESS_ACL_STATE, Table.INGRESS_ACL_STATE):
        if "+new" in step.match:
            return f"new connection{then}"
        if "ct_label" in step.match and goto:
            return f"established, admitted by {ctx.rule(_field(step.match, 'ct_label'))}{then}"
    outs = [a.split(":", 1)[1] for a in acts if a.startswith("output:")]
    if t == Table.L2_LOOKUP and outs and not any(a.startswith("group:") for a in acts):
        mac = _field(step.match, "dl_dst") or "MAC"
        owner = ctx.macs.get(mac)
        whose = f"{owner[0]}'s, " if owner else ""
        return f"{mac} is {whose}behind " + ", ".join(ctx.port(o).title for o in outs)
    if t == Table.L2_LOOKUP and "reg7" in sets:
        port = ctx.port(sets["reg7"])
        return f"{_field(step.match, 'dl_dst') or 'MAC'} is {port.instance or port.name}'s: reg7 := {port.number}{then}"
    if t == Table.L2_LOOKUP and any(a.startswith("group:") for a in acts):
        return "broadcast/multicast: flood group of the segment"
    if t == Table.L3_ROUTE and "eth_dst" in sets:
        where = f" in {ctx.segment(sets['reg6'])}" if "reg6" in sets else " (external gateway)"
        return f"next hop {sets['eth_dst']}{where}{then}"
    if t == Table.SERVICES and f == Feature.ROUTER:
        return f"to the gateway MAC: routed{then}"
    if any(a.startswith("CONTROLLER") for a in acts):
        return f"to the controller ({f.name.lower() if f else 'foreign'})"
    if any(a == "IN_PORT" for a in acts):
        return "answered on the port it came from"
    if outs:
        return "out of " + ", ".join(ctx.port(o).title for o in outs)
    if step.drops:
        return "drop" + ("" if step.priority else " (table-miss)")
    if step.priority == 0 and then:
        return f"table-miss{then}"
    return (_short(step.match) + then) if then else "; ".join(acts)


def _short(match: str, limit: int = 60) -> str:
    return match if len(match) <= limit else match[:limit - 3] + "..."


# --------------------------------------------------------------------------- the packet


def packet_spec(in_port: str, proto: str, *, src_mac: str, src_ip: str | None,
                dst_mac: str | None = None, dst_ip: str | None = None,
                dport: int | None = None, sport: int = 40000, vlan: int | None = None) -> str:
    """The ``ofproto/trace`` flow (ovs-ofctl syntax) of one packet: ``proto`` one of tcp
    (a SYN), udp, icmp (echo request), arp (request for ``dst_ip``), dhcp (DISCOVER:
    0.0.0.0:68 -> 255.255.255.255:67, broadcast); tagged with ``vlan`` (a trunk's frame).
    ValueError names a missing piece."""
    spec = [f"in_port={in_port}"] + ([f"dl_vlan={vlan}"] if vlan else [])
    if proto == "dhcp":
        return ",".join(spec + ["udp", f"dl_src={src_mac}", "dl_dst=ff:ff:ff:ff:ff:ff",
                                "nw_src=0.0.0.0", "nw_dst=255.255.255.255", "nw_ttl=64",
                                "udp_src=68", "udp_dst=67"])
    if not src_ip:
        raise ValueError("a source address is needed")
    if proto == "arp":
        if not dst_ip:
            raise ValueError("arp needs the address asked for")
        return ",".join(spec + ["arp", f"dl_src={src_mac}", "dl_dst=ff:ff:ff:ff:ff:ff",
                                "arp_op=1", f"arp_spa={src_ip}", f"arp_tpa={dst_ip}",
                                f"arp_sha={src_mac}"])
    if not (dst_ip and dst_mac):
        raise ValueError(f"{proto} needs a destination")
    ip = [f"dl_src={src_mac}", f"dl_dst={dst_mac}", f"nw_src={src_ip}", f"nw_dst={dst_ip}",
          "nw_ttl=64"]
    if proto == "icmp":
        return ",".join(spec + ["icmp"] + ip + ["icmp_type=8", "icmp_code=0"])
    if proto in ("tcp", "udp"):
        if dport is None:
            raise ValueError(f"{proto} needs --dport")
        # ovs-ofctl takes tp_src/tp_dst for tcp but not for udp: the protocol's own names
        extra = ["tcp_flags=syn"] if proto == "tcp" else []
        return ",".join(spec + [proto] + ip + [f"{proto}_src={sport}", f"{proto}_dst={dport}"]
                        + extra)
    raise ValueError(f"unknown protocol {proto!r}: tcp, udp, icmp, arp or dhcp")


def in_network(address: str, cidr: str) -> bool:
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False


# --------------------------------------------------------------------------- sdn flows


@dataclass(frozen=True)
class DumpedFlow:
    """One ``ovs-ofctl dump-flows`` line: cookie, table number, priority, match, actions,
    packet count."""

    cookie: int
    table: int
    priority: int
    match: str
    actions: str
    n_packets: int

    @property
    def feature(self) -> str:
        feat = feature_of(self.cookie)
        return feat.name.lower() if feat else "foreign"


_DUMP = re.compile(r"cookie=(?P<cookie>0x[0-9a-f]+).*?\btable=(?P<table>[^,\s]+).*?"
                   r"n_packets=(?P<np>\d+).*?(?:\bpriority=(?P<prio>\d+),?)?(?P<match>[^\s]*)\s+"
                   r"actions=(?P<actions>.*)$")


def parse_dump_flows(text: str) -> list[DumpedFlow]:
    """Flows of ``ovs-ofctl -O OpenFlow13 dump-flows BR`` (numeric tables); other lines
    are skipped."""
    out = []
    for line in text.splitlines():
        m = _DUMP.search(line.strip())
        if not m:
            continue
        table = m["table"]
        if not table.isdigit():
            try:
                table = str(int(Table[table.strip('"').upper()]))
            except KeyError:
                continue
        match = m["match"]
        if match.startswith("priority="):    # priority alone, no match fields
            match = ""
        prio = m["prio"] or (re.search(r"priority=(\d+)", line)[1]
                             if "priority=" in line else "32768")
        out.append(DumpedFlow(int(m["cookie"], 16), int(table), int(prio),
                              match.rstrip(","), m["actions"].strip(), int(m["np"])))
    return out


FEATURE_NAMES = tuple(f.name.lower() for f in Feature) + ("foreign",)


def group_flows(flows: list[DumpedFlow]) -> dict[str, dict]:
    """{feature: {"count": n, "tables": {table name: n}, "flows": [DumpedFlow]}}, features
    in cookie order, then "foreign"; tables in pipeline order."""
    out: dict[str, dict] = {}
    for name in FEATURE_NAMES:
        mine = sorted((f for f in flows if f.feature == name),
                      key=lambda f: (f.table, -f.priority, f.match))
        if not mine:
            continue
        tables: dict[str, int] = {}
        for f in mine:
            tables[table_label(f.table)] = tables.get(table_label(f.table), 0) + 1
        out[name] = {"count": len(mine), "tables": tables, "flows": mine}
    return out
