"""``sdn`` console script: nova-manage style verbs (see docs/ARCHITECTURE.md).

Exit codes: 0 success, 2 bad input (usage), 1 operation refused by the current state or by
Open vSwitch. Errors are one line on stderr, ``sdn: error: ...``, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from sqlalchemy import exc as sa_exc

from sdn import config, exception

PROG = "sdn"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (no usage dump) and exit code 2."""

    def error(self, message):
        raise exception.Invalid(f"{message} (see '{self.prog} --help')")


def _opt(parser, name, dest_suffix="", **kwargs):
    """Add ``--name`` plus its dashed spelling (``--fixed_range_v4`` and ``--fixed-range-v4``)."""
    flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    parser.add_argument(*flags, dest=name + dest_suffix, **kwargs)


def _bandwidth_opts(parser, name: bool = False) -> None:
    """``--rx-kbps``/``--tx-kbps`` (and ``instance set-bandwidth``'s NAME)."""
    if name:
        parser.add_argument("name")
    _opt(parser, "rx_kbps", type=int, metavar="KBPS",
         help="limit what each VIF receives, kbit/s (0: unlimited)")
    _opt(parser, "tx_kbps", type=int, metavar="KBPS",
         help="limit what each VIF sends, kbit/s (0: unlimited)")
    _opt(parser, "rxtx_factor", type=float, metavar="F",
         help="nova's rxtx_factor: both limits F x rxtx_base (config), unless given above")


def _limits(args, conf) -> tuple[int | None, int | None]:
    """--rx-kbps/--tx-kbps, or --rxtx-factor x rxtx_base for those not given."""
    from sdn import manager

    rx, tx = args.rx_kbps, args.tx_kbps
    if args.rxtx_factor is not None:
        both = manager.rxtx_kbps(args.rxtx_factor, conf.rxtx_base)
        rx, tx = (both if rx is None else rx), (both if tx is None else tx)
    return rx, tx


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="nova-network tenant networking on Open vSwitch")
    parser.add_argument("--config-file", action="append", dest="config_files", metavar="FILE",
                        help=f"configuration file (repeatable; default {config.DEFAULT_CONFIG_FILE} if it exists)")
    cats = parser.add_subparsers(dest="category", required=True, parser_class=_Parser)

    db = cats.add_parser("db", help="database schema").add_subparsers(dest="action", required=True)
    db.add_parser("sync", help="create or upgrade the schema (alembic upgrade head)")

    net = cats.add_parser("network", help="fixed-IP networks").add_subparsers(dest="action", required=True)
    create = net.add_parser("create", help="carve and create networks")
    _opt(create, "label", required=True, help="network label (suffixed _N when several)")
    _opt(create, "fixed_range_v4", required=True, metavar="CIDR", help="IPv4 range to carve networks from")
    _opt(create, "num_networks", type=int, help="number of networks (default num_networks)")
    _opt(create, "network_size", type=int, help="addresses per network (default network_size)")
    _opt(create, "vlan", type=int, help="first VLAN id (vlan manager; default vlan_start)")
    _opt(create, "vpn", type=int, metavar="PORT", help="first VPN public port (vlan manager; default vpn_start)")
    _opt(create, "bridge", help="bridge name (flat managers; default flat_network_bridge)")
    _opt(create, "bridge_interface", help="uplink interface (default flat_interface)")
    _opt(create, "dns1", help="first DNS server (default flat_network_dns)")
    _opt(create, "dns2", help="second DNS server")
    _opt(create, "project_id", help="project owning the network(s)")
    net.add_parser("list", help="list networks").add_argument("--json", action="store_true",
                                                               help="print a JSON list of objects")
    delete = net.add_parser("delete", help="delete a network with no allocated fixed IPs")
    _opt(delete, "fixed_range", required=True, metavar="CIDR", help="CIDR of the network to delete")

    addproj = net.add_parser("add-to-project", help="give a project one more network (vlan manager)")
    addproj.add_argument("--project", required=True)
    addproj.add_argument("--network", metavar="LABEL", help="which free network (default: the lowest free)")
    dhcp = cats.add_parser("dhcp", help="DHCP leases").add_subparsers(dest="action", required=True)
    dleases = dhcp.add_parser("leases", help="leases held now: address, MAC, instance, lease end")
    dleases.add_argument("--network", metavar="LABEL", help="only this network (label or CIDR)")
    dleases.add_argument("--json", action="store_true", help="print a JSON list of objects")
    fixed = cats.add_parser("fixed", help="fixed IPs").add_subparsers(dest="action", required=True)
    fixed_list = fixed.add_parser("list", help="list fixed IPs in use")
    fixed_list.add_argument("--json", action="store_true", help="print a JSON list of objects")

    inst = cats.add_parser("instance", help="instances (sdn stands in for nova-compute)").add_subparsers(
        dest="action", required=True)
    launch = inst.add_parser("launch", help="allocate a VIF and a fixed IP (idempotent)")
    launch.add_argument("name")
    launch.add_argument("--project", required=True)
    launch.add_argument("--host")
    launch.add_argument("--json", action="store_true", help="print the allocation as a JSON object")
    _opt(launch, "security_group", action="append", metavar="GROUP",
         help="security group of the project to join (repeatable; default: default)")
    launch.add_argument("--network", action="append", dest="networks", metavar="LABEL",
                        help="network (label or CIDR) to put a VIF on (repeatable: one VIF each; "
                             "default: the project's first network with a free address)")
    addip = inst.add_parser("add-fixed-ip", help="add a VIF (own MAC and port) with a fixed IP on a network")
    addip.add_argument("name")
    addip.add_argument("--network", required=True, metavar="LABEL", help="network label or CIDR")
    rmip = inst.add_parser("remove-fixed-ip", help="remove the VIF holding a fixed IP (not the last one)")
    rmip.add_argument("name")
    rmip.add_argument("--address", required=True, metavar="A", help="the fixed IP to remove")
    rmip.add_argument("--bridge", help="also unplug the VIF's port from this bridge")
    _bandwidth_opts(launch)
    plug = inst.add_parser("plug", help="add the instance's port to a bridge")
    plug.add_argument("name")
    plug.add_argument("--bridge", required=True)
    plug.add_argument("--internal", action="store_true", help="create an internal port (else the device must exist)")
    unplug = inst.add_parser("unplug", help="remove the instance's port from a bridge")
    unplug.add_argument("name")
    unplug.add_argument("--bridge", required=True)
    idel = inst.add_parser("delete", help="unplug (with --bridge) and deallocate")
    idel.add_argument("name")
    idel.add_argument("--bridge")

    show = inst.add_parser("show", help="allocation, port security and allowed address pairs")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print a JSON object")
    _bandwidth_opts(inst.add_parser("set-bandwidth", help="limit what each VIF of the instance "
                                    "receives/sends (0 removes a limit)"), name=True)
    psec = inst.add_parser("port-security", help="turn anti-spoofing of the instance's VIF on or off")
    psec.add_argument("name")
    psec.add_argument("state", choices=["on", "off"], help="off only for instances that must "
                      "forward others' traffic (VPN, router)")
    for verb, what in (("allow-address", "allow the VIF to also send from an address pair"),
                       ("disallow-address", "remove an allowed address pair")):
        pair = inst.add_parser(verb, help=what)
        pair.add_argument("name")
        pair.add_argument("--ip", required=True, metavar="IP_OR_CIDR")
        pair.add_argument("--mac", help="source MAC of the pair (default: the VIF's own)")

    for verb, what in (("add-secgroup", "put the instance in one more security group"),
                       ("remove-secgroup", "take the instance out of a security group")):
        sg = inst.add_parser(verb, help=what)
        sg.add_argument("name")
        sg.add_argument("group")

    _secgroup_parsers(cats)

    flt = cats.add_parser("floating", help="floating IPs (elastic IPs)").add_subparsers(
        dest="action", required=True)
    fcreate = flt.add_parser("create", help="add a range of floating IPs to a pool")
    fcreate.add_argument("ip_range", nargs="?", metavar="RANGE", help="CIDR or one address")
    _opt(fcreate, "ip_range", dest_suffix="_opt", metavar="RANGE", help="same as RANGE (nova-manage spelling)")
    fcreate.add_argument("--pool", help="pool name (default: default_floating_pool)")
    fcreate.add_argument("--host", help="network host that serves them")
    fcreate.add_argument("--interface", help="public interface (default: public_interface)")
    fdelete = flt.add_parser("delete", help="remove a range of floating IPs (none may be associated)")
    fdelete.add_argument("ip_range", metavar="RANGE")
    flt.add_parser("list", help="list floating IPs").add_argument("--json", action="store_true")
    falloc = flt.add_parser("allocate", help="give a project a floating IP from a pool")
    falloc.add_argument("--project", required=True)
    falloc.add_argument("--pool")
    fassoc = flt.add_parser("associate", help="point a project's floating IP at an instance")
    fassoc.add_argument("address")
    fassoc.add_argument("--instance", required=True)
    fassoc.add_argument("--project", required=True)
    _opt(fassoc, "fixed_address", help="which fixed IP of the instance (default: its first)")
    for verb, what in (("disassociate", "detach a floating IP from its fixed IP"),
                       ("deallocate", "return a disassociated floating IP to its pool")):
        fp = flt.add_parser(verb, help=what)
        fp.add_argument("address")
        fp.add_argument("--project", required=True)

    vpn = cats.add_parser("vpn", help="cloudpipe VPN per project (VLAN mode)").add_subparsers(
        dest="action", required=True)
    vpn.add_parser("list", help="VPN endpoints of all projects").add_argument("--json", action="store_true")
    vrun = vpn.add_parser("run", help="launch a project's VPN instance (forwarding follows)")
    vrun.add_argument("project")
    vrun.add_argument("--host")
    vrun.add_argument("--json", action="store_true")
    vpn.add_parser("spawn", help="run the VPN of every project that has none running")

    cats.add_parser("controller", help="run the OpenFlow controller")
    cats.add_parser("metadata", help="run the metadata service on metadata_host:metadata_port "
                    "(network_data.json, EC2 meta-data) in the foreground")
    agent = cats.add_parser("agent", help="run the Linux backend's host agent (network_driver = linux)")
    agent.add_argument("--once", action="store_true", help="reconcile once and exit")
    bridge = cats.add_parser("dhcp-bridge", help="dnsmasq --dhcp-script: add|old|del MAC IP [HOSTNAME], init")
    bridge.add_argument("action", choices=["add", "old", "del", "init"])
    bridge.add_argument("mac", nargs="?")
    bridge.add_argument("ip", nargs="?")
    bridge.add_argument("hostname", nargs="?")
    return parser


def _rule_options(parser, provider: bool = False) -> None:
    """nova's ``ip_protocol from_port to_port cidr`` (positional or options) and Neutron's
    ``--direction/--ethertype/--protocol/--port-range-min/--port-range-max/--remote-*``."""
    parser.add_argument("nova", nargs="*", metavar="PROTO FROM TO CIDR",
                        help="nova's positional form, e.g. 'tcp 22 22 0.0.0.0/0'")
    parser.add_argument("--ip-protocol", "--ip_protocol", "--protocol", dest="protocol",
                        help="tcp, udp, icmp, icmpv6, sctp, any, or a number 0-255")
    parser.add_argument("--from-port", "--from_port", "--port-range-min", dest="from_port",
                        help="first port (icmp: type; -1 any)")
    parser.add_argument("--to-port", "--to_port", "--port-range-max", dest="to_port",
                        help="last port (icmp: code; -1 any)")
    parser.add_argument("--cidr", "--remote-ip-prefix", dest="cidr",
                        help="remote addresses (default: everyone)")
    if provider:
        return
    parser.add_argument("--group", "--remote-group", "--source-group", dest="remote_group",
                        help="remote security group: its members' addresses")
    parser.add_argument("--direction", choices=["ingress", "egress"], default=None,
                        help="default ingress (nova's rules are ingress)")
    parser.add_argument("--ethertype", help="IPv4 or IPv6 (default from the CIDR/protocol)")


def _secgroup_parsers(cats) -> None:
    sg = cats.add_parser("secgroup", help="security groups (stateful firewall per instance)"
                         ).add_subparsers(dest="action", required=True)
    create = sg.add_parser("create", help="a group with no ingress rule and egress allowed")
    create.add_argument("name")
    create.add_argument("description", nargs="?", default="")
    create.add_argument("--project", required=True)
    create.add_argument("--stateless", action="store_true",
                        help="no connection tracking: replies need rules of their own")
    delete = sg.add_parser("delete", help="delete a group no instance uses")
    delete.add_argument("name")
    delete.add_argument("--project", required=True)
    lst = sg.add_parser("list", help="groups with their rule and instance counts")
    lst.add_argument("--project")
    lst.add_argument("--json", action="store_true")
    show = sg.add_parser("show", help="a group's rules and instances")
    show.add_argument("name")
    show.add_argument("--project", required=True)
    show.add_argument("--json", action="store_true")

    rule = cats.add_parser("secgroup-rule", help="rules of security groups").add_subparsers(
        dest="action", required=True)
    add = rule.add_parser("add", help="allow traffic: nova's PROTO FROM TO CIDR, or options")
    add.add_argument("group")
    add.add_argument("--project", required=True)
    _rule_options(add)
    add.add_argument("--json", action="store_true")
    rdel = rule.add_parser("delete", help="delete a rule by --id or by the fields it was added with")
    rdel.add_argument("group")
    rdel.add_argument("--project", required=True)
    rdel.add_argument("--id", type=int, dest="rule_id")
    _rule_options(rdel)

    prov = cats.add_parser("provider-rule", help="operator-wide drops before the tenants' rules"
                           ).add_subparsers(dest="action", required=True)
    padd = prov.add_parser("add", help="drop inbound new connections from CIDR to every instance")
    _rule_options(padd, provider=True)
    pdel = prov.add_parser("delete", help="delete a provider rule by --id or by its fields")
    pdel.add_argument("--id", type=int, dest="rule_id")
    _rule_options(pdel, provider=True)
    prov.add_parser("list", help="provider rules").add_argument("--json", action="store_true")


def _manager(conf):
    from sdn import manager
    from sdn.db import api

    return manager.get_manager(api.get_engine(conf.database.connection), conf)


def _ovs(conf):
    from sdn import ovs

    return ovs.Ovs(conf.ovs.ovsdb_connection)


def _describe(alloc: dict) -> str:
    vlan = f" vlan {alloc['vlan']}" if alloc["vlan"] else ""
    return (f"{alloc['instance']} (project {alloc['project']}, host {alloc['host']}): {alloc['address']} "
            f"on {alloc['cidr']}{vlan} gw {alloc['gateway']}, mac {alloc['mac']}, port {alloc['port_name']}"
            + "".join(f"; {v['address']} on {v['cidr']}" + (f" vlan {v['vlan']}" if v["vlan"] else "")
                      + f" gw {v['gateway']}, mac {v['mac']}, port {v['port_name']}"
                      for v in alloc.get("vifs", [])[1:]))


def _table(rows: list[list], header: list[str]) -> None:
    cells = [header] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def cmd_db(args, conf) -> None:
    from sdn.db import api

    api.sync(api.get_engine(conf.database.connection))
    print(f"database {conf.database.connection} is up to date")


def cmd_network(args, conf) -> None:
    mgr = _manager(conf)
    if args.action == "create":
        if not mgr.vlan_mode and (args.vlan is not None or args.vpn is not None):
            raise exception.Invalid(f"--vlan/--vpn apply only to network_manager=vlan, "
                                    f"not {conf.network_manager}")
        nets = mgr.create_networks(
            label=args.label, cidr=args.fixed_range_v4, num_networks=args.num_networks,
            network_size=args.network_size, vlan_start=args.vlan, vpn_start=args.vpn, bridge=args.bridge,
            bridge_interface=args.bridge_interface, dns1=args.dns1, dns2=args.dns2, project_id=args.project_id)
        for n in nets:
            vlan = f" vlan {n['vlan']} bridge {n['bridge']}" if n["vlan"] else ""
            print(f"created network {n['id']} {n['label']} {n['cidr']} gw {n['gateway']}{vlan}")
    elif args.action == "list":
        if args.json:
            print(json.dumps(mgr.list_networks()))
            return
        _table([[n["id"], n["cidr"], n["netmask"], n["gateway"], n["dhcp_start"], n["dns1"], n["dns2"],
                 n["vlan"], n["project_id"], n["label"]] for n in mgr.list_networks()],
               ["id", "IPv4", "netmask", "gateway", "dhcp_start", "dns1", "dns2", "vlan", "project", "label"])
    elif args.action == "add-to-project":
        n = mgr.add_network_to_project(args.project, args.network)
        print(f"network {n['id']} {n['label']} {n['cidr']} vlan {n['vlan']} bridge {n['bridge']} "
              f"now belongs to project {n['project_id']}")
    else:
        n = mgr.delete_network(args.fixed_range)
        print(f"deleted network {n['id']} {n['label']} {n['cidr']}")


def cmd_fixed(args, conf) -> None:
    rows = [ip for ip in _manager(conf).list_fixed_ips() if ip["allocated"] or ip["leased"] or ip["host"]]
    if args.json:
        print(json.dumps(rows, default=str))
        return
    _table([[ip["network"], ip["address"], ip["mac"], ip["hostname"], ip["host"],
             ",".join(f for f in ("allocated", "leased") if ip[f]) or "associated",
             ip["lease_end"] or "-"] for ip in rows],
           ["network", "IP address", "MAC address", "hostname", "host", "state",
            "lease ends (UTC)"])


def cmd_instance(args, conf) -> None:
    mgr = _manager(conf)
    if args.action == "launch":
        alloc = mgr.allocate_for_instance(args.name, args.project, args.host,
                                          security_groups=args.security_group, networks=args.networks,
                                          **dict(zip(("rx_kbps", "tx_kbps"), _limits(args, conf))))
        print(json.dumps({k: v for k, v in alloc.items() if k != "instance_uuid"}) if args.json
              else _describe(alloc))
    elif args.action == "plug":
        alloc = mgr.get_allocation(args.name)
        ovs = _ovs(conf)
        for vif in alloc["vifs"]:   # every VIF of the instance: one port each
            ovs.plug_vif(args.bridge, vif["port_name"], vif["vif_uuid"], vif["mac"],
                         alloc["instance_uuid"], internal=args.internal)
        print(f"plugged {', '.join(v['port_name'] for v in alloc['vifs'])} ({args.name}) into {args.bridge}")
    elif args.action == "unplug":
        alloc = mgr.get_allocation(args.name)
        ovs = _ovs(conf)
        for vif in alloc["vifs"]:
            ovs.unplug_vif(args.bridge, vif["port_name"])
        print(f"unplugged {', '.join(v['port_name'] for v in alloc['vifs'])} ({args.name}) from {args.bridge}")
    elif args.action == "delete":
        alloc = mgr.get_allocation(args.name)
        if args.bridge:
            ovs = _ovs(conf)
            for vif in alloc["vifs"]:
                ovs.unplug_vif(args.bridge, vif["port_name"])
        mgr.deallocate_for_instance(args.name)
        print(f"deleted {args.name}; released {', '.join(str(v['address']) for v in alloc['vifs']) or 'nothing'}")
    elif args.action == "set-bandwidth":
        info = mgr.set_bandwidth(args.name, *_limits(args, conf))
        print(f"{args.name}: receives {_kbps(info['rx_kbps'])}, sends {_kbps(info['tx_kbps'])}")
    elif args.action == "add-fixed-ip":
        print(_describe(mgr.add_fixed_ip_to_instance(args.name, args.network)))
    elif args.action == "remove-fixed-ip":
        done = mgr.remove_fixed_ip_from_instance(args.name, args.address)
        gone = done["removed"]
        if args.bridge:
            _ovs(conf).unplug_vif(args.bridge, gone["port_name"])
        print(f"removed {gone['address']} (VIF {gone['mac']}, port {gone['port_name']}) from {args.name}"
              + (f", unplugged from {args.bridge}" if args.bridge else ""))
    elif args.action in ("add-secgroup", "remove-secgroup"):
        sgs = _secgroups(conf)
        groups = (sgs.add_instance if args.action == "add-secgroup" else sgs.remove_instance)(
            args.name, args.group)
        print(f"{args.name} is in security groups: {', '.join(groups) or 'none'}")
    else:
        if args.action == "show":
            info = {**mgr.get_allocation(args.name), **mgr.show_port_security(args.name),
                    **mgr.show_bandwidth(args.name),
                    "security_groups": _secgroups(conf).groups_of(args.name)}
            if args.json:
                print(json.dumps(info))
                return
        elif args.action == "port-security":
            info = mgr.set_port_security(args.name, args.state == "on")
        elif args.action == "allow-address":
            info = mgr.add_address_pair(args.name, args.ip, args.mac)
        else:
            info = mgr.remove_address_pair(args.name, args.ip, args.mac)
        pairs = ", ".join(f"{p['mac']} {p['ip']}" for p in info["allowed_address_pairs"]) or "none"
        groups = ", ".join(info.get("security_groups", [])) if "security_groups" in info else None
        print(f"{args.name} {info['mac']}: port security {'on' if info['port_security'] else 'OFF'}; "
              f"allowed address pairs: {pairs}" + (f"; security groups: {groups or 'none'}"
                                                   if groups is not None else "")
              + (f"; receives {_kbps(info['rx_kbps'])}, sends {_kbps(info['tx_kbps'])}"
                 if "rx_kbps" in info else ""))


def _kbps(value: int | None) -> str:
    return f"at most {value} kbit/s" if value else "unlimited"


def cmd_controller(args, conf) -> int | None:
    try:
        from sdn.apps import controller
    except ModuleNotFoundError as err:
        if err.name not in ("sdn.apps.controller", "sdn.apps"):
            raise
        raise exception.SdnError("the controller is not installed (module sdn.apps.controller is missing)") from None
    return controller.main(conf)


def cmd_metadata(args, conf) -> int:
    from sdn.metadata import server

    return server.main(conf)


def cmd_agent(args, conf) -> int:
    if conf.network_driver != "linux":
        raise exception.Invalid(f"sdn agent runs the Linux backend; set network_driver = linux "
                                f"(it is {conf.network_driver})")
    from sdn.linux import agent

    return agent.main(conf, args.config_files or [], once=args.once)


def cmd_dhcp_bridge(args, conf) -> None:
    from sdn.linux import dhcpbridge

    out = dhcpbridge.run(_manager(conf), conf, args.action, args.mac, args.ip)
    if out:
        print(out, end="")


def _floating(conf):
    from sdn.db import api
    from sdn.floating import FloatingIps

    return FloatingIps(api.get_engine(conf.database.connection), conf)


def cmd_floating(args, conf) -> None:
    fips = _floating(conf)
    if args.action == "create":
        ip_range = args.ip_range or args.ip_range_opt
        if not ip_range:
            raise exception.Invalid("floating create needs a RANGE (CIDR or one address)")
        added = fips.create(ip_range, args.pool, args.host, args.interface)
        print(f"created {len(added)} floating IPs {added[0]}..{added[-1]} in pool "
              f"{args.pool or conf.default_floating_pool}")
    elif args.action == "delete":
        print(f"deleted {fips.delete(args.ip_range)} floating IPs")
    elif args.action == "list":
        rows = fips.list()
        if args.json:
            print(json.dumps(rows))
            return
        _table([[r["address"], r["pool"], r["host"], r["project_id"], r["fixed_ip"], r["instance"],
                 "auto" if r["auto_assigned"] else ""] for r in rows],
               ["address", "pool", "host", "project", "fixed IP", "instance", ""])
    elif args.action == "allocate":
        print(fips.allocate(args.project, args.pool))
    elif args.action == "associate":
        r = fips.associate(args.address, args.instance, args.project, args.fixed_address)
        print(f"associated {r['address']} with {r['fixed_ip']} ({r['instance']})")
    elif args.action == "disassociate":
        r = fips.disassociate(args.address, args.project)
        print(f"disassociated {r['address']}")
    else:
        fips.deallocate(args.address, args.project)
        print(f"deallocated {args.address}")


def cmd_vpn(args, conf) -> None:
    from sdn import vpn

    mgr = _manager(conf)
    if args.action == "list":
        rows = vpn.list_vpns(mgr.engine)
        if args.json:
            print(json.dumps(rows))
            return
        _table([[r["project"], r["network"], r["public"], r["private"], r["instance"], r["state"]]
                for r in rows], ["project", "network", "public", "private", "instance", "state"])
    elif args.action == "run":
        alloc = vpn.run_vpn(mgr, args.project, args.host)
        print(json.dumps({k: v for k, v in alloc.items() if k != "instance_uuid"}) if args.json
              else _describe(alloc))
    else:
        for alloc in vpn.spawn_vpns(mgr):
            print(_describe(alloc))


def _secgroups(conf):
    from sdn.db import api
    from sdn.secgroups import SecurityGroups

    return SecurityGroups(api.get_engine(conf.database.connection), conf)


def _rule_fields(args) -> dict:
    """The rule fields of ``args``: options, or nova's positional PROTO FROM TO CIDR."""
    fields = {"protocol": args.protocol, "from_port": args.from_port, "to_port": args.to_port,
              "cidr": args.cidr}
    if args.nova:
        if len(args.nova) > 4:
            raise exception.Invalid(f"nova's rule form is PROTO FROM TO CIDR (4 values), not "
                                    f"{' '.join(args.nova)}")
        given = [k for k in ("protocol", "from_port", "to_port", "cidr")[:len(args.nova)]
                 if fields[k] is not None]
        if given:
            raise exception.Invalid(f"give {', '.join(given)} once: positionally or as an option")
        fields.update(zip(("protocol", "from_port", "to_port", "cidr"), args.nova))
    return fields


def cmd_secgroup(args, conf) -> None:
    from sdn.secgroups import describe_rule

    sgs = _secgroups(conf)
    if args.action == "create":
        g = sgs.create(args.name, args.project, args.description, stateful=not args.stateless)
        print(f"created security group {g['name']} (id {g['id']}, project {g['project']}, "
              f"{'stateful' if g['stateful'] else 'stateless'})")
    elif args.action == "delete":
        sgs.delete(args.name, args.project)
        print(f"deleted security group {args.name} of project {args.project}")
    elif args.action == "list":
        rows = sgs.list(args.project)
        if args.json:
            print(json.dumps(rows))
            return
        _table([[g["id"], g["project"], g["name"], "yes" if g["stateful"] else "no",
                 len(g["rules"]), len(g["instances"]), g["description"]] for g in rows],
               ["id", "project", "name", "stateful", "rules", "instances", "description"])
    else:
        g = sgs.show(args.name, args.project)
        if args.json:
            print(json.dumps(g))
            return
        print(f"security group {g['name']} (id {g['id']}, project {g['project']}, "
              f"{'stateful' if g['stateful'] else 'stateless'}): {g['description']}")
        for r in g["rules"]:
            print(f"  rule {r['id']}: {describe_rule(r)}")
        print(f"  instances: {', '.join(g['instances']) or 'none'}")


def cmd_secgroup_rule(args, conf) -> None:
    from sdn.secgroups import describe_rule

    sgs = _secgroups(conf)
    fields = {**_rule_fields(args), "direction": args.direction, "ethertype": args.ethertype,
              "remote_group": args.remote_group}
    if args.action == "add":
        r = sgs.add_rule(args.group, args.project, **fields)
        print(json.dumps(r) if args.json else f"added rule {r['id']} to {r['group']}: {describe_rule(r)}")
    else:
        if args.rule_id is not None and (args.nova or any(
                v is not None for k, v in fields.items())):
            raise exception.Invalid("delete a rule by --id or by its fields, not both")
        r = sgs.delete_rule(args.group, args.project, args.rule_id, **fields)
        print(f"deleted rule {r['id']} of {r['group']}: {describe_rule(r)}")


def cmd_provider_rule(args, conf) -> None:
    sgs = _secgroups(conf)
    if args.action == "list":
        rows = sgs.list_provider_rules()
        if args.json:
            print(json.dumps(rows))
            return
        _table([[r["id"], r["protocol"], r["port_min"], r["port_max"], r["cidr"]] for r in rows],
               ["id", "protocol", "from", "to", "cidr"])
        return
    fields = _rule_fields(args)
    if args.action == "add":
        r = sgs.add_provider_rule(**fields)
        print(f"added provider rule {r['id']}: drop {r['protocol']} from {r['cidr']}")
    else:
        if args.rule_id is not None and (args.nova or any(v is not None for v in fields.values())):
            raise exception.Invalid("delete a provider rule by --id or by its fields, not both")
        r = sgs.delete_provider_rule(args.rule_id, **({} if args.rule_id is not None else fields))
        print(f"deleted provider rule {r['id']}")


def cmd_dhcp(args, conf) -> None:
    rows = _manager(conf).list_leases(args.network)
    if args.json:
        print(json.dumps(rows))
        return
    _table([[r["network"], r["address"], r["mac"], r["instance"], r["lease_end"]] for r in rows],
           ["network", "IP address", "MAC address", "instance", "lease ends (UTC)"])


COMMANDS = {"dhcp": cmd_dhcp, "db": cmd_db, "network": cmd_network, "fixed": cmd_fixed, "instance": cmd_instance,
            "floating": cmd_floating, "vpn": cmd_vpn, "controller": cmd_controller, "agent": cmd_agent,
            "dhcp-bridge": cmd_dhcp_bridge, "secgroup": cmd_secgroup, "metadata": cmd_metadata,
            "secgroup-rule": cmd_secgroup_rule, "provider-rule": cmd_provider_rule}


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse a command line. nova's positional rule form may follow options
    (``secgroup-rule add web --project p tcp 22 22 0.0.0.0/0``), which argparse alone cannot
    split: what it leaves over becomes the rule's positional values."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "nova", None) == [] and not any(e.startswith("-") and
                                                                not _number(e) for e in extra):
        args.nova = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _number(text: str) -> bool:
    return text.lstrip("-").isdigit()


def main(argv: list[str] | None = None) -> int:
    """Run one ``sdn`` command; returns the exit code."""
    conf = None
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        conf = config.load([], args.config_files, conf=config.CONF)
        return COMMANDS[args.category](args, conf) or 0
    except exception.SdnError as err:
        return _fail(str(err), err.exit_code)
    except (sa_exc.OperationalError, sa_exc.ProgrammingError) as err:   # PostgreSQL: no schema
        from sdn.db import api

        err = api.explain(err, conf.database.connection if conf is not None else "?")
        return _fail(str(err), err.exit_code)
    except sa_exc.SQLAlchemyError as err:
        return _fail(f"database error: {err.__class__.__name__}: {getattr(err, 'orig', None) or err}", 1)
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # noqa: BLE001 - the contract is one line, never a traceback
        return _fail(f"unexpected {err.__class__.__name__}: {err}", 1)


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
