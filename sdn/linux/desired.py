"""What a Linux host should look like for a StateView: pure functions, no I/O.

The agent (``sdn.linux.agent``) computes a ``HostPlan`` from the shared state and applies it
with small I/O functions; everything here is unit-tested without privileges. Rule strings are
nova-network's (Essex ``linux_net``), written in the canonical form ``iptables-save`` prints
them in, so a reconcile that changes nothing is recognised as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import netaddr

from sdn.ipv6 import link_local
from sdn.linux import iptables_firewall
from sdn.linux.iptables_firewall import FirewallPlan
from sdn.view import NetworkView, StateView, VifView

METADATA_IP = "169.254.169.254"
VPN_PRIVATE_PORT = 1194


@dataclass(frozen=True)
class NetworkExtras:
    """Columns of a network the Linux data plane needs beyond ``NetworkView``."""

    bridge: str | None = None
    bridge_interface: str | None = None
    dhcp_start: str | None = None


@dataclass(frozen=True)
class BridgeSpec:
    name: str
    network_id: int
    interface: str | None       #: uplink enslaved to the bridge (flat_interface / vlanN)
    vlan: int | None            #: VLAN id when ``interface`` is ``vlan<id>`` on ``vlan_parent``
    vlan_parent: str | None
    gateway_cidr: str | None    #: ``gateway/prefix`` on the bridge (DHCP modes), else None
    broadcast: str | None
    mac: str | None             #: the bridge's MAC: NetworkView.gateway_mac (as the OVS backend)
    #: IPv6 ``address/64`` on the bridge (nova: ``ip -6 addr add gateway_v6/netmask_v6``): the
    #: network's gateway_v6 and gateway_lla (the RAs' source: guests route via it), () without
    #: a /64. The kernel answers neighbour solicitations for them.
    gateway_v6: tuple[str, ...] = ()
    #: a network another network host routes, bridged here for this host's VIFs: its gateway
    #: addresses (v4 ``gateway/prefix``, and gateway_v6/gateway_lla) must not be on this bridge
    #: and its gateway MAC must not be the bridge's (frames to the gateway go over the uplink)
    released: tuple[str, ...] = ()
    foreign_mac: str | None = None


@dataclass(frozen=True)
class DnsmasqSpec:
    network_id: int
    bridge: str
    listen_address: str
    dhcp_start: str
    netmask: str
    lease_time: int
    lease_max: int
    domain: str
    hosts: str                  #: hosts file text (``mac,hostname.domain,ip`` lines)
    opts: str                   #: options file text


@dataclass(frozen=True)
class IptRule:
    family: str                 #: "ipv4" | "ipv6" | "eb"
    table: str
    chain: str
    rule: str
    wrap: bool = True
    top: bool = False


@dataclass
class HostPlan:
    bridges: list[BridgeSpec] = field(default_factory=list)
    chains: list[tuple[str, str, str]] = field(default_factory=list)   #: (family, table, wrapped chain)
    rules: list[IptRule] = field(default_factory=list)
    dnsmasq: list[DnsmasqSpec] = field(default_factory=list)
    #: VIF port name -> bridge it belongs on
    ports: dict[str, str] = field(default_factory=dict)
    #: floating addresses to hold (``a.b.c.d/32``) on the public interface
    floating: list[str] = field(default_factory=list)
    #: floating address -> fixed address (what a disassociation must forget in conntrack)
    floating_map: dict[str, str] = field(default_factory=dict)
    #: security groups of the filtered VIFs here: ipsets and per-VIF facts (chains and rules
    #: are in ``chains``/``rules``); see sdn.linux.iptables_firewall
    firewall: FirewallPlan = field(default_factory=FirewallPlan)
    #: the IPv6 router of this host (None: no network has a /64 here)
    ipv6: Ipv6Router | None = None


@dataclass(frozen=True)
class Ipv6Port:
    """A VIF port the IPv6 router serves: router advertisements of ``network`` (periodic, and
    answers to router solicitations) and DHCPv6 for ``vif`` (``sdn.linux.ipv6_router``)."""

    network: NetworkView
    vif: VifView


@dataclass
class Ipv6Router:
    """The network host's IPv6 side: forwarding on, ``public_ip_v6`` (ADDRESS/PREFIXLEN) on the
    public interface, the default route via ``external_gateway_v6`` (its MAC pinned when
    ``external_gateway_v6_mac`` is set), and the ports served with RAs/DHCPv6."""

    public_interface: str
    public_ip: str | None = None
    gateway: str | None = None
    gateway_mac: str | None = None
    ports: dict[str, Ipv6Port] = field(default_factory=dict)


def bridge_name(net: NetworkView, extras: NetworkExtras, flat_network_bridge: str | None) -> str:
    """The network's bridge: its ``bridge`` column (nova), ``br<vlan>``, flat_network_bridge,
    else ``sdnbr<id>``."""
    if extras.bridge:
        return extras.bridge
    if net.vlan:
        return f"br{net.vlan}"
    return flat_network_bridge or f"sdnbr{net.id}"


def gateway_rules(bridge: str, conf) -> list[str]:
    """FORWARD rules of a network bridge (nova's get_gateway_rules / forward_bridge_interface):
    ``all`` accepts everything in and out of the bridge (nova's default, which let projects route
    to each other through the network host); otherwise only bridge <-> each listed interface
    (default: public_interface) and within the bridge, then drop -- so projects are isolated
    through the router as with the OVS backend."""
    ifaces = list(getattr(conf, "forward_bridge_interface", None) or [conf.public_interface])
    if "all" in ifaces:
        return [f"-i {bridge} -j ACCEPT", f"-o {bridge} -j ACCEPT"]
    rules = []
    for iface in ifaces:
        rules += [f"-i {bridge} -o {iface} -j ACCEPT", f"-i {iface} -o {bridge} -j ACCEPT"]
    return rules + [f"-i {bridge} -o {bridge} -j ACCEPT", f"-i {bridge} -j DROP", f"-o {bridge} -j DROP"]


def hosts_file(view: StateView, net: NetworkView) -> str:
    """nova's dnsmasq hosts file: one ``mac,hostname.domain,ip`` line per allocated fixed IP."""
    lines = []
    for vif in view.vifs:
        if vif.network_id != net.id:
            continue
        for address in vif.addresses:
            name = f"{vif.hostname}.{net.domain}" if net.domain else vif.hostname
            lines.append(f"{vif.mac},{name},{address}")
    return "".join(line + "\n" for line in lines)


def opts_file(net: NetworkView) -> str:
    """dnsmasq --dhcp-optsfile: the network's DNS servers (and MTU), as sdn's responder sends."""
    lines = []
    if net.dns:
        lines.append("option:dns-server," + ",".join(net.dns))
    if net.mtu:
        lines.append(f"option:mtu,{net.mtu}")
    return "".join(line + "\n" for line in lines)


def antispoof_rules(vif: VifView, chain: str) -> list[str]:
    """libvirt nwfilter's clean-traffic in ebtables: no MAC/IP/ARP spoofing, no DHCP or DHCPv6
    server, no router advertisements or redirects; allowed address pairs honoured. Rules of the
    per-VIF chain in ebtables-save's canonical form; the chain ends in DROP.

    IPv6 (as the OpenFlow backend's port_security): from each of the VIF's MACs its link-local
    address (modified EUI-64, RFC 4291 App. A); from its own MAC its derived global addresses
    (``VifView.addresses_v6``); allowed IPv6 pairs from their MAC; the unspecified address
    only for DAD (neighbour solicitation, RFC 4862 §5.4), MLD reports and router
    solicitations (RFC 4861 §4.1). Neighbour advertisement *targets* are checked by ip6tables
    (:func:`na_guard_rules`): ebtables cannot match them."""
    macs = [vif.mac.lower()]
    pairs = [(vif.mac.lower(), a) for a in tuple(vif.addresses) + tuple(vif.addresses_v6)]
    for mac, ip in vif.allowed_address_pairs:
        mac = mac.lower()
        if mac not in macs:
            macs.append(mac)
        pairs.append((mac, ip))
    rules = [
        "-p IPv4 --ip-proto udp --ip-sport 67 --ip-dport 68 -j DROP",
        "-p IPv6 --ip6-proto ipv6-icmp --ip6-icmp-type router-advertisement -j DROP",
        "-p IPv6 --ip6-proto ipv6-icmp --ip6-icmp-type redirect -j DROP",
        # DHCPv6 servers and relays send from port 547 (RFC 8415 §7.2); clients from 546
        "-p IPv6 --ip6-proto udp --ip6-sport 547 -j DROP",
        f"-p IPv4 -s {vif.mac.lower()} --ip-src 0.0.0.0 --ip-dst 255.255.255.255 --ip-proto udp "
        "--ip-sport 68 --ip-dport 67 -j RETURN",
        f"-p ARP -s {vif.mac.lower()} --arp-ip-src 0.0.0.0 --arp-mac-src {vif.mac.lower()} -j RETURN",
    ]
    for mac, ip in pairs:
        try:
            net = netaddr.IPNetwork(ip)
        except (netaddr.AddrFormatError, ValueError):
            continue
        if net.version == 6:
            rules.append(f"-p IPv6 -s {mac} --ip6-src {_eb_addr(net)} -j RETURN")
            continue
        rules.append(f"-p IPv4 -s {mac} --ip-src {_eb_addr(net)} -j RETURN")
        rules.append(f"-p ARP -s {mac} --arp-ip-src {_eb_addr(net)} --arp-mac-src {mac} -j RETURN")
    for mac in macs:
        rules.append(f"-p IPv6 -s {mac} --ip6-src {link_local(mac)} -j RETURN")
        rules += [f"-p IPv6 -s {mac} --ip6-src :: --ip6-proto ipv6-icmp --ip6-icmp-type {t} -j RETURN"
                  for t in UNSPECIFIED_SOURCE_ICMP6]
    rules.append("-j DROP")
    return rules


#: ICMPv6 a VIF may send from ``::`` (as ebtables-save prints the types): DAD probes (RFC 4862
#: §5.4), MLDv1/MLDv2 reports (RFC 3810 §5.2.13) and router solicitations (RFC 4861 §4.1)
UNSPECIFIED_SOURCE_ICMP6 = ("neighbour-solicitation", "131/0:255", "143/0:255", "router-solicitation")


def na_chain(port_name: str) -> str:
    """Short (unwrapped) name of a VIF's ip6tables raw chain checking the targets of the
    neighbour advertisements it sends: ``n`` + the VIF id part of its tap name (11 characters,
    as the security group chains)."""
    return ("n" + port_name[3:] if port_name.startswith("tap") else "n" + port_name)[:11]


def na_targets(vif: VifView) -> list[str]:
    """The addresses a VIF may advertise as neighbour advertisement target (canonical CIDRs):
    link-local of its MAC and of each allowed pair's MAC, its global addresses, allowed IPv6
    pairs."""
    out = [f"{link_local(vif.mac)}/128"] + [f"{a}/128" for a in vif.addresses_v6]
    for mac, ip in vif.allowed_address_pairs:
        out.append(f"{link_local(mac)}/128")
        try:
            net = netaddr.IPNetwork(ip)
        except (netaddr.AddrFormatError, ValueError):
            continue
        if net.version == 6:
            out.append(str(net.cidr))
    return list(dict.fromkeys(str(netaddr.IPNetwork(c).cidr) for c in out))


def _u32_target(cidr: str) -> str:
    """An xt_u32 test (offsets from the IPv6 header, as ip6tables-save prints it) that the
    packet is ICMPv6 right after the fixed header (next header 58: no extension header, so the
    target lies at bytes 48-63) and its NA target is inside ``cidr``."""
    net = netaddr.IPNetwork(cidr)
    tests = ["0x4>>0x8&0xff=0x3a"]
    value, mask = int(net.network), int(net.netmask)
    for word in range(4):
        shift = 96 - 32 * word
        m, v = (mask >> shift) & 0xFFFFFFFF, (value >> shift) & 0xFFFFFFFF
        if m == 0xFFFFFFFF:
            tests.append(f"{0x30 + 4 * word:#x}={v:#x}")
        elif m:
            tests.append(f"{0x30 + 4 * word:#x}&{m:#x}={v:#x}")
    return "&&".join(tests)


def na_guard_rules(vif: VifView) -> list[str]:
    """ip6tables rules of the VIF's :func:`na_chain` (raw table; iptables-save canonical form):
    an NA whose target is one of :func:`na_targets` returns, every other NA (another's address,
    or with an extension header hiding the target) is dropped (RFC 4861 §7.2.4 spoofing, the
    OpenFlow backend's ``ipv6_nd_target`` flows)."""
    return [f'-m u32 --u32 "{_u32_target(c)}" -j RETURN' for c in na_targets(vif)] + ["-j DROP"]


def _eb_addr(net: netaddr.IPNetwork) -> str:
    full = 32 if net.version == 4 else 128
    return str(net.ip) if net.prefixlen == full else str(net.cidr)


def antispoof_chain(port_name: str) -> str:
    """Short (unwrapped) name of a VIF's ebtables chain: ``I-<port>`` (libvirt's ``I-vnetN``)."""
    return f"I-{port_name}"


def plan(view: StateView, extras: dict[int, NetworkExtras], conf, *, present_ports: set[str],
         dhcp: bool, vlan_mode: bool, hosted: set[int] | None = None) -> HostPlan:
    """The whole host: bridges, iptables/ebtables rules, dnsmasq instances, VIF ports.

    ``conf`` supplies nova's flags (fixed_range, routing_source_ip, metadata_host/port,
    dmz_cidr, flat_network_bridge, flat_interface, vlan_interface, public_interface,
    use_ipv6). ``dhcp`` is False for FlatManager (no gateway, no dnsmasq: nova's FlatManager
    never set up a network host). ``present_ports``: the links of this host (VIF ports, bridges).
    ``hosted``: ids of the networks this host is the network host of (``sdn.nethost``); only
    they get the gateway, dnsmasq, default SNAT (per network CIDR, since bridged frames of other
    hosts' networks cross this host's netfilter too), metadata, VPN and floating IPs. Other
    networks get a bridge (uplink, FORWARD rules) only while one of their VIFs is here or the
    bridge exists (its gateway released), and nothing of their router. None: every network is
    routed here, with nova's fixed_range rules (one host routing everything).
    """
    p = HostPlan()
    fixed_range = conf.fixed_range
    local_nets = {vif.network_id for vif in view.vifs if vif.port_name in present_ports}
    routed = {nid for nid in view.networks if hosted is None or nid in hosted}
    # -- bridges and per-bridge FORWARD rules (nova ensure_bridge with a gateway)
    for net in view.networks.values():
        ext = extras.get(net.id, NetworkExtras())
        br = bridge_name(net, ext, conf.flat_network_bridge)
        # a bridge left from when this host routed the network: kept, its gateway released
        if net.id not in routed and net.id not in local_nets and br not in present_ports:
            continue
        routes = net.id in routed
        parent = ext.bridge_interface or (getattr(conf, "vlan_interface", None) if net.vlan else None)
        if net.vlan and vlan_mode and parent:
            iface, vlan = f"vlan{net.vlan}", net.vlan
        else:
            iface, vlan, parent = ext.bridge_interface or (conf.flat_interface if not net.vlan else None), None, None
        prefix = netaddr.IPNetwork(net.cidr).prefixlen
        gateway = dhcp and routes
        p.bridges.append(BridgeSpec(
            name=br, network_id=net.id, interface=iface, vlan=vlan, vlan_parent=parent,
            gateway_cidr=f"{net.gateway}/{prefix}" if gateway else None,
            broadcast=net.broadcast if gateway else None, mac=net.gateway_mac if gateway else None,
            gateway_v6=bridge_v6_addresses(net) if gateway else (),
            released=(f"{net.gateway}/{prefix}",) + bridge_v6_addresses(net) if dhcp and not routes else (),
            foreign_mac=net.gateway_mac if dhcp and not routes else None))
        for family in ("ipv4", "ipv6") if conf.use_ipv6 or net.cidr_v6 else ("ipv4",):
            p.rules += [IptRule(family, "filter", "FORWARD", r) for r in gateway_rules(br, conf)]
        if not routes:
            continue
        if dhcp:
            size = netaddr.IPNetwork(net.cidr).size
            p.dnsmasq.append(DnsmasqSpec(
                network_id=net.id, bridge=br, listen_address=net.gateway,
                dhcp_start=ext.dhcp_start or str(netaddr.IPNetwork(net.cidr)[2]), netmask=net.netmask,
                lease_time=net.lease_time, lease_max=size, domain=net.domain,
                hosts=hosts_file(view, net), opts=opts_file(net)))
        # cloudpipe VPN (VLAN mode) while the project's VPN instance runs; removed when it stops
        if net.vlan and getattr(net, "vpn_running", False) and net.vpn_public_address \
                and net.vpn_public_port and net.vpn_private_address:
            p.rules.insert(0, IptRule("ipv4", "filter", "FORWARD",
                                      f"-d {net.vpn_private_address}/32 -p udp -m udp --dport {VPN_PRIVATE_PORT} "
                                      "-j ACCEPT"))
            p.rules.append(IptRule("ipv4", "nat", "PREROUTING",
                                   f"-d {net.vpn_public_address}/32 -p udp -m udp --dport {net.vpn_public_port} "
                                   f"-j DNAT --to-destination {net.vpn_private_address}:{VPN_PRIVATE_PORT}"))

    # -- L3: nova init_host + metadata_forward/metadata_accept
    sources = [fixed_range] if hosted is None else sorted(
        (str(netaddr.IPNetwork(view.networks[nid].cidr).cidr) for nid in routed),
        key=netaddr.IPNetwork)
    if routed:
        meta = f"{conf.metadata_host}/32"
        p.rules += [IptRule("ipv4", "nat", "snat", f"-s {src} -j SNAT --to-source {conf.routing_source_ip}")
                    for src in sources]
        p.rules.append(IptRule("ipv4", "nat", "POSTROUTING", f"-s {fixed_range} -d {meta} -j ACCEPT"))
        for dmz in conf.dmz_cidr:
            p.rules.append(IptRule("ipv4", "nat", "POSTROUTING",
                                   f"-s {fixed_range} -d {netaddr.IPNetwork(dmz).cidr} -j ACCEPT"))
        p.rules.append(IptRule("ipv4", "nat", "POSTROUTING",
                               f"-s {fixed_range} -d {fixed_range} -m conntrack ! --ctstate DNAT -j ACCEPT"))
        src_match = [""] if hosted is None else [f"-s {src} " for src in sources]
        p.rules += [IptRule("ipv4", "nat", "PREROUTING",
                            f"{src}-d {METADATA_IP}/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination "
                            f"{conf.metadata_host}:{conf.metadata_port}") for src in src_match]
        p.rules.append(IptRule("ipv4", "filter", "INPUT",
                               f"-d {meta} -p tcp -m tcp --dport {conf.metadata_port} -j ACCEPT"))

    # -- floating IPs (nova ensure_floating_forward / bind_floating_ip), one set per address
    seen = set()
    for fip in getattr(view, "floating_ips", ()):
        if fip.address in seen or fip.network_id not in routed:
            continue
        seen.add(fip.address)
        p.floating.append(f"{fip.address}/32")
        p.floating_map[fip.address] = fip.fixed_address
        p.rules.append(IptRule("ipv4", "nat", "PREROUTING",
                               f"-d {fip.address}/32 -j DNAT --to-destination {fip.fixed_address}"))
        p.rules.append(IptRule("ipv4", "nat", "OUTPUT",
                               f"-d {fip.address}/32 -j DNAT --to-destination {fip.fixed_address}"))
        p.rules.append(IptRule("ipv4", "nat", "float-snat",
                               f"-s {fip.fixed_address}/32 -j SNAT --to-source {fip.address}"))

    # -- VIF ports on this host: bridge membership + anti-spoof chains
    for vif in view.vifs:
        net = view.networks.get(vif.network_id)
        if net is None or vif.port_name not in present_ports:
            continue
        p.ports[vif.port_name] = bridge_name(net, extras.get(net.id, NetworkExtras()), conf.flat_network_bridge)
        if not vif.port_security:
            continue
        chain = antispoof_chain(vif.port_name)
        p.chains.append(("eb", "nat", chain))
        p.rules.append(IptRule("eb", "nat", "PREROUTING", f"-i {vif.port_name} -j $I-{vif.port_name}",
                               wrap=False))
        for rule in antispoof_rules(vif, chain):
            p.rules.append(IptRule("eb", "nat", chain, rule))
        # neighbour advertisement targets (bridged frames reach ip6tables: br_netfilter, set
        # up for every filtered VIF)
        nchain = na_chain(vif.port_name)
        p.chains.append(("ipv6", "raw", nchain))
        p.rules.append(IptRule("ipv6", "raw", "PREROUTING",
                               f"-p ipv6-icmp -m physdev --physdev-in {vif.port_name} -m icmp6 "
                               f"--icmpv6-type 136 -j ${nchain}"))
        p.rules += [IptRule("ipv6", "raw", nchain, rule) for rule in na_guard_rules(vif)]

    p.ipv6 = ipv6_router(view, conf, p.ports, routed) if dhcp else None

    # -- security groups of the filtered VIFs here (nova's IptablesFirewallDriver shape)
    fw = iptables_firewall.plan_firewall(view, p.ports, getattr(conf, "iptables_binary_name", None)
                                         or "sdn-agent")
    p.firewall = fw
    p.chains += fw.chains
    # the jumps to sg-chain come first in FORWARD/INPUT: the bridges' `-i br -o br -j ACCEPT`
    # would otherwise pass bridged traffic before the firewall saw it
    jumps = [IptRule(r.family, r.table, r.chain, r.rule) for r in fw.rules
             if r.chain in ("FORWARD", "INPUT") and r.table == "filter"]
    rest = [IptRule(r.family, r.table, r.chain, r.rule) for r in fw.rules
            if not (r.chain in ("FORWARD", "INPUT") and r.table == "filter")]
    p.rules = jumps + p.rules + rest
    return p


def bridge_v6_addresses(net: NetworkView) -> tuple[str, ...]:
    """``gateway_v6/64`` and ``gateway_lla/64`` of a network with a /64 (() without)."""
    if not net.cidr_v6 or not net.gateway_v6:
        return ()
    prefix = netaddr.IPNetwork(net.cidr_v6).prefixlen
    return (f"{net.gateway_v6}/{prefix}", f"{net.gateway_lla}/64")


def ipv6_router(view: StateView, conf, ports: dict[str, str],
                hosted: set[int] | None = None) -> Ipv6Router | None:
    """The host's IPv6 router (None when no network has a /64): config public_ip_v6,
    external_gateway_v6(_mac) while it routes a network with a /64 (``hosted``: the networks
    it routes, None: all), and every present VIF port of a network with a /64 (``ports``: tap
    -> bridge, the VIF ports of this host). Router advertisements and DHCPv6 are answered on
    the VIF's own port, whichever network host routes its network (as the OpenFlow backend's
    controller answers for the ports of its switch): the guest reaches the router at the
    gateway's MAC, over the uplink when it is another host's."""
    v6 = {nid for nid, net in view.networks.items() if net.cidr_v6 and net.gateway_v6}
    if not v6:
        return None
    public = hosted is None or bool(v6 & hosted)
    router = Ipv6Router(public_interface=conf.public_interface,
                        public_ip=getattr(conf, "public_ip_v6", None) if public else None,
                        gateway=getattr(conf, "external_gateway_v6", None) if public else None,
                        gateway_mac=getattr(conf, "external_gateway_v6_mac", None) if public else None)
    for vif in view.vifs:
        if vif.network_id in v6 and vif.port_name in ports:
            router.ports[vif.port_name] = Ipv6Port(view.networks[vif.network_id], vif)
    return router


def fill_manager(mgr, host_plan: HostPlan) -> None:
    """Load ``host_plan``'s chains and rules into an IptablesManager (after ``mgr.reset()``)."""
    mgr.reset()
    families = {"ipv4": mgr.ipv4, "ipv6": mgr.ipv6, "eb": mgr.ebtables}
    for family, table, chain in host_plan.chains:
        families[family][table].add_chain(chain)
    for r in host_plan.rules:
        tbl = families[r.family][r.table]
        if r.family == "eb" and not r.wrap and "$" in r.rule:
            # a jump from a built-in chain to a wrapped per-VIF chain
            target = r.rule.split("$", 1)[1].split()[0]
            tbl.add_chain(target)
        tbl.add_rule(r.chain, r.rule, wrap=r.wrap, top=r.top)
