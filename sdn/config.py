"""Configuration: nova-network's flag names and defaults, read with oslo.config.

``CONF`` is the process-wide instance; ``load()`` parses a config file into it (or into a fresh
``make_conf()`` for tests) and validates every value up front so a bad file fails at start with
one clear message instead of at first use.
"""

from __future__ import annotations

import os
import socket

import netaddr
from oslo_config import cfg, types

from sdn import exception

DEFAULT_CONFIG_FILE = "/etc/sdn/sdn.conf"

MANAGER_CHOICES = ("flat", "flatdhcp", "vlan")
#: nova class paths accepted for network_manager, so an old nova.conf line keeps working.
_MANAGER_CLASS_NAMES = {"flatmanager": "flat", "flatdhcpmanager": "flatdhcp", "vlanmanager": "vlan"}


def manager_type(value: str) -> str:
    """oslo type for network_manager: a short name or a nova class path, normalised to the short name."""
    value = str(value).strip()
    short = value.lower()
    if short in MANAGER_CHOICES:
        return short
    tail = short.rsplit(".", 1)[-1]
    if tail in _MANAGER_CLASS_NAMES:
        return _MANAGER_CLASS_NAMES[tail]
    raise ValueError(f"allowed values are {', '.join(MANAGER_CHOICES)} "
                     "(or nova.network.manager.FlatManager|FlatDHCPManager|VlanManager)")


manager_type.type_name = "network manager"


def _cidr_type(version: int):
    def parse(value: str) -> str:
        try:
            net = netaddr.IPNetwork(str(value).strip())
        except (netaddr.AddrFormatError, ValueError, TypeError):
            raise ValueError(f"expected an IPv{version} CIDR such as "
                             f"{'10.0.0.0/8' if version == 4 else 'fd00::/48'}") from None
        if net.version != version:
            raise ValueError(f"expected an IPv{version} CIDR")
        return str(net.cidr)

    parse.type_name = f"IPv{version} CIDR"
    return parse


_port = types.Integer(min=1, max=65535)

default_opts = [
    cfg.Opt("network_manager", type=manager_type, default="vlan",
            help="Network manager: flat, flatdhcp or vlan (nova class paths are accepted)."),
    cfg.StrOpt("network_driver", default="ovs", choices=["ovs", "linux"],
               help="Data plane driver: ovs (OpenFlow controller) or linux (Linux bridge, iptables, "
               "dnsmasq; run 'sdn agent' on each host)."),
    cfg.StrOpt("my_ip", default="127.0.0.1", help="This host's IP address; default of vpn_ip, "
               "routing_source_ip and metadata_host."),
    cfg.StrOpt("host", default=socket.gethostname(), help="Name of this host."),
    cfg.Opt("fixed_range", type=_cidr_type(4), default="10.0.0.0/8", help="Fixed range for instances."),
    cfg.IntOpt("num_networks", default=1, min=1, help="Number of networks to create."),
    cfg.IntOpt("network_size", default=256, min=4, help="Number of addresses in each network."),
    cfg.IntOpt("vlan_start", default=100, min=1, max=4094, help="First VLAN for private networks."),
    cfg.StrOpt("vpn_ip", default="$my_ip", help="Public IP of the cloudpipe VPN servers."),
    cfg.IntOpt("vpn_start", default=1000, min=1, max=65535, help="First public port for VPN forwarding."),
    cfg.IntOpt("cnt_vpn_clients", default=0, min=0,
               help="Addresses reserved at the top of each VLAN network for VPN clients."),
    cfg.StrOpt("flat_network_bridge", help="Bridge for simple (flat) networks."),
    cfg.StrOpt("flat_interface", help="Interface flat networks are bridged into."),
    cfg.StrOpt("flat_network_dns", default="8.8.4.4", help="DNS server for flat networks."),
    cfg.BoolOpt("flat_injected", default=False, help="Inject network config into flat guests."),
    cfg.StrOpt("dhcp_domain", default="novalocal", help="Domain handed out by DHCP."),
    cfg.IntOpt("dhcp_lease_time", default=120, min=1, help="DHCP lease time in seconds."),
    cfg.IntOpt("fixed_ip_disassociate_timeout", default=600, min=0,
               help="Seconds after which a deallocated fixed IP is disassociated."),
    cfg.IntOpt("create_unique_mac_address_attempts", default=5, min=1,
               help="Attempts at generating a unique MAC address."),
    cfg.BoolOpt("force_dhcp_release", default=False, help="Release the DHCP lease on deallocate."),
    cfg.IntOpt("rxtx_base", default=0, min=0, help="kbit/s that an instance's --rxtx-factor of "
               "1.0 stands for (nova's rxtx_base); 0: --rxtx-factor is refused."),
    cfg.IntOpt("network_device_mtu", min=68, max=65535, help="MTU handed to guests (DHCP option 26)."),
    cfg.StrOpt("public_interface", default="eth0", help="Interface carrying floating IPs."),
    cfg.StrOpt("routing_source_ip", default="$my_ip", help="SNAT source for instance traffic."),
    cfg.Opt("floating_range", type=_cidr_type(4), default="4.4.4.0/24", help="Floating IP range."),
    cfg.StrOpt("default_floating_pool", default="nova", help="Default floating IP pool."),
    cfg.BoolOpt("auto_assign_floating_ip", default=False, help="Give every instance a floating IP."),
    cfg.ListOpt("dmz_cidr", default=[], help="CIDRs reached without SNAT."),
    cfg.StrOpt("external_gateway", help="Next hop on the public network for traffic leaving "
               "the fixed ranges (the network host's default route in nova). Its MAC is learned "
               "by ARP unless external_gateway_mac is set."),
    cfg.StrOpt("external_gateway_mac", help="MAC of external_gateway, to skip learning it."),
    cfg.IntOpt("public_vlan", min=1, max=4094, help="802.1Q tag on public_interface (untagged "
               "when unset)."),
    cfg.StrOpt("metadata_host", default="$my_ip", help="Metadata API host."),
    cfg.Opt("metadata_port", type=_port, default=8775, help="Metadata API port."),
    cfg.BoolOpt("use_ipv6", default=False, help="Give instances IPv6 addresses."),
    cfg.Opt("fixed_range_v6", type=_cidr_type(6), default="fd00::/48", help="Fixed IPv6 range."),
    cfg.BoolOpt("allow_same_net_traffic", default=True,
                help="Allow traffic between instances of the same network."),
]

#: Linux backend (network_driver = linux), nova-network's linux_net flags where nova had one.
linux_opts = [
    cfg.StrOpt("state_path", default="/var/lib/sdn", help="Top-level directory for sdn's state."),
    cfg.StrOpt("networks_path", default="$state_path/networks",
               help="Where dnsmasq's hosts/opts/pid files live (Linux backend)."),
    cfg.StrOpt("lock_path", default="$state_path/lock", help="Directory of inter-process lock files."),
    cfg.StrOpt("vlan_interface", help="Interface VLAN interfaces are created on (Linux backend, vlan "
               "manager), unless a network names its bridge_interface."),
    cfg.ListOpt("forward_bridge_interface", default=[],
                help="Interfaces network bridges may forward to/from (nova's flag; 'all': any, which "
                "lets projects route to each other). Empty: public_interface only."),
    cfg.StrOpt("dhcp_driver", default="dnsmasq", choices=["dnsmasq", "scapy"],
               help="Linux backend DHCP: dnsmasq per network, or sdn's own responder on a raw socket "
               "on each bridge."),
    cfg.StrOpt("dnsmasq_user", default="",
               help="User dnsmasq drops to (its --user; empty: dnsmasq's default, nobody). It must be "
               "able to read networks_path."),
    cfg.BoolOpt("dnsmasq_log", default=False,
                help="Log dnsmasq's DHCP traffic to networks_path/sdn-<bridge>.log (--log-dhcp) "
                "instead of syslog."),
    cfg.StrOpt("iptables_binary_name", default="sdn-agent",
               help="Prefix of the iptables chains the agent owns (nova's binary_name, <= 16 chars)."),
    cfg.FloatOpt("agent_poll_interval", default=0.5, min=0.05,
                 help="Seconds between the agent's checks of the state revision."),
]
default_opts += linux_opts

database_opts = [
    cfg.StrOpt("connection", default="sqlite:////var/lib/sdn/sdn.sqlite",
               help="SQLAlchemy URL of the state database.", secret=True),
]

ovs_opts = [
    cfg.StrOpt("integration_bridge", default="br-int", help="Integration bridge name."),
    cfg.StrOpt("datapath_type", default="netdev", choices=["netdev", "system"],
               help="Datapath type of bridges sdn creates."),
    cfg.StrOpt("ofp_listen_host", default="127.0.0.1", help="OpenFlow listen address."),
    cfg.Opt("ofp_tcp_listen_port", type=_port, default=6653, help="OpenFlow listen port."),
    cfg.StrOpt("ovsdb_connection", default="unix:/var/run/openvswitch/db.sock",
               help="OVSDB server address."),
    cfg.ListOpt("trunk_interfaces", default=[], help="Uplink ports carrying tenant VLANs."),
    cfg.IntOpt("dhcp_rate_limit", default=100, min=0,
               help="DHCP packets per second accepted from each VIF (0: no limit)."),
    cfg.ListOpt("dhcp_relay_interfaces", default=[],
                help="Bridge ports (trunks or flat interfaces) on which this controller answers "
                     "relayed DHCP (giaddr set, udp 67->67, RFC 1542): hosts behind a relay agent "
                     "get the fixed IP of the VIF with their MAC in the network containing giaddr. "
                     "Enable it on one network host per segment: every controller with it answers."),
    cfg.IntOpt("acl_log_rate_limit", default=0, min=0,
               help="Security group drops logged by the controller, samples per second per "
                    "switch (0: none logged; tables egress_acl_drop/ingress_acl_drop count every "
                    "drop either way)."),
    cfg.IntOpt("dhcp_relay_rate_limit", default=0, min=0,
               help="DHCP packets per second accepted from each relay port (0: no limit); a "
                    "relay speaks for many clients."),
    cfg.FloatOpt("mastership_lease", default=3.0, min=0,
                 help="Seconds of the deployment lease that makes one of several controllers "
                      "MASTER of every switch (the others SLAVE; docs/HA.md). A master that "
                      "dies is replaced within this time. 0: no roles (one controller only)."),
    cfg.StrOpt("controller_id", default="",
               help="This controller's name in the mastership lease, unique in the "
                    "deployment (default: <hostname>:<ofp_tcp_listen_port>)."),
]

GROUPS = {"DEFAULT": default_opts, "database": database_opts, "ovs": ovs_opts}


def make_conf() -> cfg.ConfigOpts:
    """A new ConfigOpts with every sdn option registered (tests use one per case)."""
    conf = cfg.ConfigOpts()
    conf.register_opts(default_opts)
    conf.register_opts(database_opts, group="database")
    conf.register_opts(ovs_opts, group="ovs")
    return conf


CONF = make_conf()


def _allowed(opt: cfg.Opt) -> str:
    t = opt.type
    name = getattr(t, "type_name", type(t).__name__)
    choices = getattr(t, "choices", None)
    if choices:
        return "allowed values are " + ", ".join(str(c) for c in choices)
    lo, hi = getattr(t, "min", None), getattr(t, "max", None)
    if lo is not None or hi is not None:
        return f"expected {name} in range {'' if lo is None else lo}..{'' if hi is None else hi}"
    return f"expected {name}"


def validate(conf: cfg.ConfigOpts) -> None:
    """Read every option once; raise ConfigError naming the first bad option and what is allowed."""
    for group, opts in GROUPS.items():
        for opt in opts:
            try:
                getattr(conf if group == "DEFAULT" else conf[group], opt.dest)
            except (cfg.ConfigFileValueError, ValueError) as err:
                if isinstance(opt.type, types.ConfigType):
                    allowed = _allowed(opt)
                else:  # our own parse functions say what is allowed in their ValueError
                    allowed = str(err).split("is not valid:", 1)[-1].strip()
                raise exception.ConfigError(group=group, name=opt.name, value=_raw_value(conf, group, opt.name),
                                            allowed=allowed) from None


def _raw_value(conf: cfg.ConfigOpts, group: str, name: str) -> str:
    """The value as written in the config file, to quote it back in an error."""
    try:
        return conf._namespace._get_file_value([(group, name)])[0][-1]
    except Exception:  # noqa: BLE001 - best effort, only used in a message
        return "?"


def _check_utf8(path: str) -> None:
    """Refuse a config file that is not UTF-8 text, naming it (oslo.config would raise a bare
    UnicodeDecodeError that does not say which file)."""
    try:
        with open(path, "rb") as f:
            f.read().decode("utf-8")
    except UnicodeDecodeError as err:
        raise exception.ConfigError(f"config file {path} is not a UTF-8 INI file (byte {err.start} is "
                                    f"{err.object[err.start:err.start + 1]!r}); give a text file of "
                                    "[section] and 'name = value' lines") from None
    except OSError as err:
        raise exception.ConfigError(f"cannot read config file {path} ({err.strerror}); "
                                    "pass a readable --config-file") from None


def load(argv: list[str] | None = None, config_files: list[str] | None = None,
         conf: cfg.ConfigOpts | None = None) -> cfg.ConfigOpts:
    """Parse ``argv`` (oslo-style, e.g. ``--config-file F``) and ``config_files`` into ``conf``.

    Defaults to ``CONF`` and to /etc/sdn/sdn.conf when it exists. Raises ConfigError for a
    missing/unparsable file or an invalid value.
    """
    conf = CONF if conf is None else conf
    if config_files is None:
        config_files = [DEFAULT_CONFIG_FILE] if os.path.exists(DEFAULT_CONFIG_FILE) else []
    for path in config_files:
        if not os.path.isfile(path):
            raise exception.ConfigError(f"config file {path} does not exist; pass an existing --config-file")
        _check_utf8(path)
    try:
        conf(args=list(argv or []), project="sdn", default_config_files=list(config_files),
             validate_default_values=True)
    except cfg.ConfigFilesNotFoundError as err:
        raise exception.ConfigError(f"cannot read config file(s) {', '.join(err.config_files)}") from None
    except cfg.ConfigFileParseError as err:
        raise exception.ConfigError(f"cannot parse config file {err.config_file}: {err.msg}") from None
    validate(conf)
    return conf
