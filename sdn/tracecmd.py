"""``sdn trace`` and ``sdn flows``: the I/O around ``sdn.flows.explain``.

``sdn trace`` reads state (the instance's VIF: port, MAC, fixed IP; the destination's MAC, or
the gateway MAC when the destination is routed; floating IPs; security groups), builds the
packet, runs ``ovs-appctl ofproto/trace`` on the real switch (conntrack recirculations are
followed; ``--reply`` assumes an established reply with ``--ct-next``) and prints each flow
hit by table and feature, ending in one sentence. ``sdn flows`` prints a bridge's flows grouped
by the feature byte of their cookies, with table names.

Errors are :class:`sdn.exception.SdnError` (one line): unknown instance, bridge not found,
instance not on this bridge, a packet that cannot be built from the options.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import textwrap

from sdn import exception
from sdn.flows import explain
from sdn.flows.context import RouterSettings
from sdn.view import StateView, VifView

OFCTL = ["ovs-ofctl", "-O", "OpenFlow13"]
#: the source MAC of a packet traced from a port that is not a VIF (the public port, a trunk)
OUTSIDE_MAC = "02:00:00:00:00:01"
#: ``--reply``: every conntrack lookup of the trace answers "established reply"
REPLY_CT_STATE = "trk,est,rpl"
_CT_NEXT_MAX = 8   # more conntrack passes than any sdn path has (a hairpin has 6)
PROTOS = ("tcp", "udp", "icmp", "arp", "dhcp")
#: where a feature's flows come from
MODULES = {"pipeline": "pipeline.py", "classifier": "classifier.py",
           "port_security": "port_security.py", "dhcp": "dhcp.py",
           "gateway_arp": "arp_responder.py", "l2": "l2.py", "router": "router.py",
           "security_groups": "security_groups.py", "qos": "qos.py"}


def _run(argv: list[str], what: str) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise exception.OvsError(what=what, reason=f"{argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise exception.OvsError(what=what, reason=f"{argv[0]} did not answer in 60 s") from None
    if p.returncode != 0:
        reason = (p.stderr.strip() or p.stdout.strip() or f"exit {p.returncode}").splitlines()[0]
        raise exception.OvsError(what=what, reason=reason)
    return p.stdout


def require_bridge(bridge: str) -> None:
    """BridgeNotFound (naming the bridges there are) unless ``bridge`` exists."""
    p = subprocess.run(["ovs-vsctl", "--timeout=10", "br-exists", bridge], capture_output=True,
                       text=True)
    if p.returncode == 2:
        names = _run(["ovs-vsctl", "--timeout=10", "list-br"], "the bridge list").split()
        raise exception.BridgeNotFound(bridge=bridge, existing=", ".join(names) or "there are none")
    if p.returncode != 0:
        raise exception.OvsError(what=f"bridge {bridge}",
                                 reason=(p.stderr.strip() or f"exit {p.returncode}").splitlines()[0])


def bridge_ports(bridge: str) -> dict[str, int]:
    """The bridge's OpenFlow ports: name -> ofport (``ovs-ofctl show``)."""
    out = _run(OFCTL + ["show", bridge], f"the ports of {bridge}")
    ports = {}
    for line in out.splitlines():
        head = line.strip().split(":", 1)[0]
        if "(" in head and head.endswith(")") and head.split("(", 1)[0].isdigit():
            number, name = head[:-1].split("(", 1)
            ports[name] = int(number)
    return ports


# --------------------------------------------------------------------------- state -> context


def segment_title(net) -> str:
    """``VLAN 400`` / ``flat network private``: how a verdict names a segment."""
    return f"VLAN {net.vlan}" if net.vlan else f"flat network {net.label or net.id}"


def _describe_rule(groups: dict, group: str, rule) -> str:
    """``rule 4 of default: ingress IPv4 tcp 22-22 from 0.0.0.0/0`` (``sdn secgroup show``'s
    words, ``sdn.secgroups.describe_rule``)."""
    from sdn.secgroups import describe_rule, protocol_name   # the database layer: only here

    remote = groups.get(rule.remote_group)
    text = describe_rule({
        "direction": rule.direction, "ethertype": rule.ethertype,
        "protocol": protocol_name(rule.protocol), "port_min": rule.port_min,
        "port_max": rule.port_max, "remote_group": remote.name if remote else None,
        "remote_cidr": rule.remote_cidr or ("0.0.0.0/0" if rule.ethertype == "IPv4" else "::/0")})
    return f"rule {rule.id} of {group}: {text}"


def build_context(view: StateView, ports: dict[str, int], *, trunks=frozenset(),
                  public: str | None = None) -> explain.Context:
    """The explanation's view of this bridge: its ports as VIFs / public port / trunks."""
    groups = view.security_groups
    by_port = {v.port_name: v for v in view.vifs if v.network_id in view.networks}
    out = {}
    for name, number in ports.items():
        vif = by_port.get(name)
        if vif is not None:
            out[number] = explain.Port(
                number, name, "vif", vif.instance, vif.mac, tuple(vif.addresses),
                tuple(vif.allowed_address_pairs), vif.port_security,
                tuple(groups[g].name for g in vif.security_groups if g in groups),
                view.networks[vif.network_id].key)
        elif name == public:
            out[number] = explain.Port(number, name, "public")
        elif name in trunks:
            out[number] = explain.Port(number, name, "trunk")
        else:
            out[number] = explain.Port(number, name)
    return explain.Context(
        ports=out,
        segments={n.key: segment_title(n) for n in view.networks.values()},
        macs={v.mac: (v.instance, view.networks[v.network_id].key) for v in view.vifs
              if v.network_id in view.networks},
        rules={r.id: _describe_rule(groups, g.name, r) for g in groups.values() for r in g.rules},
        floating={f.address: f.fixed_address for f in view.floating_ips})


# --------------------------------------------------------------------------- the packet


def _vifs_of(view: StateView, name: str) -> list[VifView]:
    vifs = [v for v in view.vifs if v.instance == name and v.network_id in view.networks]
    if not vifs:
        raise exception.InstanceNotFound(name=name)
    return vifs


def _address(value: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise exception.InvalidAddress(what=what, value=value,
                                       allowed="an IPv4 address such as 10.0.0.5") from None


def resolve_packet(args, view: StateView, ports: dict[str, int], conf) -> tuple[str, str]:
    """(ovs-ofctl flow, one-line description) of the packet ``args`` asks for."""
    proto = args.proto or ("icmp" if args.dst else None)
    if proto is None:
        raise exception.Invalid("give --dst (or --proto dhcp/arp): what is the packet sent to?")
    if proto in ("tcp", "udp") and args.dport is None:
        raise exception.Invalid(f"--proto {proto} needs --dport N (1-65535)")
    if args.dport is not None and proto not in ("tcp", "udp"):
        raise exception.Invalid(f"--dport applies to tcp and udp, not {proto}")
    dst_vifs = None
    dst_ip = None
    if args.dst:
        if any(v.instance == args.dst for v in view.vifs):
            dst_vifs = _vifs_of(view, args.dst)
        else:
            try:
                dst_ip = str(ipaddress.IPv4Address(args.dst))
            except ValueError:
                raise exception.Invalid(f"--dst {args.dst!r} is neither an instance nor an "
                                        f"IPv4 address; see 'sdn fixed list'") from None
    src_vif, in_port = _source(args, view, ports, dst_vifs)
    vlan = None
    net = view.networks[src_vif.network_id] if src_vif else None
    if dst_vifs:
        dst_vif = next((v for v in dst_vifs if net and v.network_id == net.id), dst_vifs[0])
        if not dst_vif.addresses:
            raise exception.Invalid(f"instance {args.dst} has no fixed IP on its VIF {dst_vif.mac}")
        dst_ip = dst_vif.addresses[0]
    if src_vif:
        src_mac = args.src_mac or src_vif.mac
        src_ip = args.src_ip or (src_vif.addresses[0] if src_vif.addresses else None)
        if proto == "arp" and dst_ip is None:
            dst_ip = net.gateway
        dst_mac = _next_hop_mac(view, net, dst_ip) if dst_ip and proto not in ("arp", "dhcp") \
            else None
        who = f"{src_vif.instance} ({src_vif.port_name})"
    else:
        src_mac = args.src_mac or OUTSIDE_MAC
        src_ip = args.src_ip or conf.external_gateway
        if not src_ip and proto != "dhcp":
            raise exception.Invalid(f"port {in_port} is not a VIF: give --src-ip")
        dst_mac = None
        if proto in ("tcp", "udp", "icmp"):
            if in_port == conf.public_interface and conf.routing_source_ip:
                dst_mac = RouterSettings(routing_source_ip=conf.routing_source_ip).mac
            else:
                holder = next((v for v in view.vifs if dst_ip in v.addresses
                               and v.network_id in view.networks), None)
                if holder is None:
                    raise exception.Invalid(f"no VIF holds {dst_ip}; from port {in_port} only a "
                                            f"fixed IP (or, on the public port, a floating IP) "
                                            f"can be traced")
                dst_mac = holder.mac
                if in_port in conf.ovs.trunk_interfaces:   # a trunk carries tagged frames
                    vlan = view.networks[holder.network_id].vlan
        who = f"port {in_port}"
    try:
        spec = explain.packet_spec(in_port, proto, src_mac=src_mac, src_ip=src_ip,
                                   dst_mac=dst_mac, dst_ip=dst_ip, dport=args.dport, vlan=vlan)
    except ValueError as err:
        raise exception.Invalid(f"cannot build the packet: {err}") from None
    to = f" to {args.dst}" + (f" ({dst_ip})" if dst_ip != args.dst else "") if args.dst else ""
    what = f"{proto}/{args.dport}" if args.dport else proto
    shown_ip = "0.0.0.0" if proto == "dhcp" else src_ip
    return spec, f"{what} from {who}, {src_mac} {shown_ip}{to}"


def _source(args, view: StateView, ports: dict[str, int], dst_vifs):
    """(the sending VIF or None, its port name) from --from or --in-port."""
    if args.from_instance:
        vifs = _vifs_of(view, args.from_instance)
        here = [v for v in vifs if v.port_name in ports]
        if not here:
            raise exception.SdnError(
                f"instance {args.from_instance} is not on bridge {args.bridge}: none of its ports "
                f"({', '.join(v.port_name for v in vifs)}) is there; plug it with "
                f"'sdn instance plug {args.from_instance} --bridge {args.bridge}' or name its bridge")
        if dst_vifs:   # the VIF on the destination's network, if the instance has one
            nets = {v.network_id for v in dst_vifs}
            here.sort(key=lambda v: v.network_id not in nets)
        return here[0], here[0].port_name
    name = args.in_port
    if name.isdigit():
        by_number = {n: p for p, n in ports.items()}
        if int(name) not in by_number:
            listed = ", ".join(f"{n} {p}" for n, p in sorted(by_number.items()))
            raise exception.Invalid(f"bridge {args.bridge} has no port {name} "
                                    f"(ports: {listed or 'none'})")
        name = by_number[int(name)]
    elif name not in ports:
        raise exception.Invalid(f"bridge {args.bridge} has no port {name} "
                                f"(ports: {', '.join(sorted(ports)) or 'none'})")
    vif = next((v for v in view.vifs if v.port_name == name and v.network_id in view.networks),
               None)
    return vif, name


def _next_hop_mac(view: StateView, net, dst_ip: str) -> str:
    """The MAC an instance on ``net`` sends to for ``dst_ip``: its neighbour's on the same
    network, else the gateway's (routed)."""
    if not explain.in_network(dst_ip, net.cidr):
        return net.gateway_mac
    if dst_ip == net.gateway:
        return net.gateway_mac
    holder = next((v for v in view.vifs if v.network_id == net.id and dst_ip in v.addresses), None)
    if holder is None:
        raise exception.Invalid(f"no VIF of network {net.label or net.id} ({net.cidr}) holds "
                                f"{dst_ip}; an instance would get no ARP answer")
    return holder.mac


# --------------------------------------------------------------------------- commands


def _load(conf):
    from sdn.state import StateSource

    return StateSource.from_conf(conf).load()


def run_trace(bridge: str, spec: str, reply: bool = False) -> str:
    """``ovs-appctl ofproto/trace BRIDGE SPEC`` (with ``--ct-next trk,est,rpl`` for every
    conntrack pass when ``reply``): the trace text."""
    extra = []
    if reply:
        for _ in range(_CT_NEXT_MAX):
            extra += ["--ct-next", REPLY_CT_STATE]
    return _run(["ovs-appctl", "ofproto/trace", bridge, *extra, spec], f"ofproto/trace on {bridge}")


def cmd_trace(args, conf) -> int:
    if not args.from_instance and not args.in_port:
        raise exception.Invalid("give --from INSTANCE or --in-port PORT")
    if args.from_instance and args.in_port:
        raise exception.Invalid("give --from or --in-port, not both")
    if args.dport is not None and not 1 <= args.dport <= 65535:
        raise exception.Invalid(f"--dport {args.dport} is outside 1-65535")
    if args.src_ip:
        _address(args.src_ip, "--src-ip")
    if args.src_mac and not _is_mac(args.src_mac):
        raise exception.Invalid(f"invalid --src-mac {args.src_mac!r}: expected a MAC such as "
                                f"fa:16:3e:00:00:01")
    require_bridge(args.bridge)
    ports = bridge_ports(args.bridge)
    view = _load(conf)
    spec, described = resolve_packet(args, view, ports, conf)
    ctx = build_context(view, ports, trunks=frozenset(conf.ovs.trunk_interfaces),
                        public=conf.public_interface if conf.routing_source_ip else None)
    text = run_trace(args.bridge, spec, reply=args.reply)
    result = explain.explain(text, ctx)
    if args.reply:
        result.assumptions.insert(0, "traced as the reply of an established connection "
                                     f"(--ct-next {REPLY_CT_STATE} at every conntrack lookup)")
    if args.json:
        print(json.dumps({"bridge": args.bridge, "packet": described, "flow": spec,
                          **result.as_dict()}))
        return 0
    print(f"{described} on {args.bridge}")
    print(f"flow: {spec}")
    print(result.text())
    return 0


def _is_mac(value: str) -> bool:
    parts = value.split(":")
    return len(parts) == 6 and all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p)
                                   for p in parts)


def cmd_flows(args, conf) -> int:
    bridge = args.bridge or conf.ovs.integration_bridge
    require_bridge(bridge)
    flows = explain.parse_dump_flows(_run(OFCTL + ["dump-flows", bridge],
                                          f"the flows of {bridge}"))
    groups = explain.group_flows(flows)
    if args.feature:
        groups = {k: v for k, v in groups.items() if k == args.feature}
    if args.json:
        print(json.dumps({"bridge": bridge, "flows": len(flows), "features": {
            name: {"count": g["count"], "tables": g["tables"],
                   "flows": [{"table": f.table, "table_name": explain.table_label(f.table),
                              "priority": f.priority, "match": f.match, "actions": f.actions,
                              "cookie": f"{f.cookie:#x}", "n_packets": f.n_packets}
                             for f in g["flows"]]}
            for name, g in groups.items()}}))
        return 0
    print(f"bridge {bridge}: {len(flows)} flows"
          + (f"; {args.feature}: {groups.get(args.feature, {}).get('count', 0)}"
             if args.feature else ""))
    for name, g in groups.items():
        origin = f"sdn/flows/{MODULES[name]}" if name in MODULES else "not sdn's cookie"
        print(f"{name} ({origin}): {g['count']} flows")
        print(textwrap.fill(", ".join(f"{table} {count}" for table, count in g["tables"].items()),
                            width=100, initial_indent="  ", subsequent_indent="  "))
        if args.feature:
            for f in g["flows"]:
                print(f"    {explain.table_label(f.table):<18} priority={f.priority} "
                      f"{f.match or '(any)'} actions={f.actions}  n_packets={f.n_packets}")
    return 0


def add_parsers(cats) -> None:
    """The ``trace`` and ``flows`` parser blocks (``sdn.cli.build_parser``)."""
    trace = cats.add_parser("trace", help="run a packet through a bridge (ofproto/trace) and "
                            "explain each step by feature, table and state")
    trace.add_argument("--bridge", required=True, help="the bridge to trace on")
    src = trace.add_argument_group("source (one of)")
    src.add_argument("--from", dest="from_instance", metavar="INSTANCE",
                     help="sent by this instance (its VIF on the bridge)")
    src.add_argument("--in-port", metavar="PORT",
                     help="arriving on this port (name or number), e.g. the public port")
    trace.add_argument("--dst", metavar="IP|INSTANCE",
                       help="destination: an instance (its fixed IP) or an address (a floating "
                            "IP from the public port)")
    trace.add_argument("--proto", choices=PROTOS,
                       help="tcp/udp (with --dport; tcp as a SYN), icmp echo request (the "
                            "default with --dst), arp request, dhcp discover")
    trace.add_argument("--dport", type=int, metavar="N",
                       help="destination port of tcp/udp (1-65535)")
    trace.add_argument("--src-ip", metavar="IP", help="source address (simulate a spoof)")
    trace.add_argument("--src-mac", metavar="MAC", help="source MAC (simulate a spoof)")
    trace.add_argument("--reply", action="store_true",
                       help="trace the packet as the reply of an established connection "
                            f"(--ct-next {REPLY_CT_STATE})")
    trace.add_argument("--json", action="store_true", help="print a JSON object")
    flows = cats.add_parser("flows", help="a bridge's flows grouped by feature (cookie), "
                            "with table names")
    flows.add_argument("--bridge", help="default: [ovs] integration_bridge")
    flows.add_argument("--feature", choices=explain.FEATURE_NAMES,
                       help="only this feature, flow by flow")
    flows.add_argument("--json", action="store_true", help="print a JSON object")
