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

from sdn import exception, ipv6

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

def _address_type(version: int):
    """oslo type: one IPv{version} address, normalised (``fd00:0::1`` -> ``fd00::1``)."""
    def parse(value: str) -> str:
        try:
            addr = netaddr.IPAddress(str(value).strip())
        except (netaddr.AddrFormatError, ValueError, TypeError):
            addr = None
        if addr is None or addr.version != version or "/" in str(value):
            raise ValueError(f"expected an IPv{version} address such as "
                             f"{'192.0.2.1' if version == 4 else '2001:db8::1'}")
        return str(addr)

    parse.type_name = f"IPv{version} address"
    return parse


def _address_list_type(version: int):
    """oslo type: comma-separated IPv{version} addresses -> list of normalised addresses."""
    one = _address_type(version)

    def parse(value) -> list[str]:
        items = value if isinstance(value, list) else str(value).split(",")
        try:
            return [one(item) for item in items if str(item).strip()]
        except ValueError:
            raise ValueError(f"expected comma-separated IPv{version} addresses such as "
                             f"{'192.0.2.1,192.0.2.2' if version == 4 else '2001:db8::1,2001:db8::2'}") from None

    parse.type_name = f"IPv{version} address list"
    return parse


def _interface_type(version: int):
    """oslo type: an IPv{version} ADDRESS/PREFIXLEN (an interface address, host bits kept)."""
    def parse(value: str) -> str:
        text = str(value).strip()
        try:
            iface = netaddr.IPNetwork(text)
        except (netaddr.AddrFormatError, ValueError, TypeError):
            iface = None
        if iface is None or iface.version != version or "/" not in text:
            raise ValueError(f"expected an IPv{version} ADDRESS/PREFIXLEN such as "
                             f"{'192.0.2.10/24' if version == 4 else '2001:db8::10/64'}")
        return f"{iface.ip}/{iface.prefixlen}"

    parse.type_name = f"IPv{version} address/prefixlen"
    return parse

default_opts = [
    cfg.Opt("network_manager", type=manager_type, default="vlan",
            help="Network manager: flat, flatdhcp or vlan (nova class paths are accepted)."),
    cfg.StrOpt("network_driver", default="ovs", choices=["ovs", "linux"],
               help="Data plane driver: ovs (OpenFlow controller) or linux (Linux bridge, iptables, "
               "dnsmasq; run 'sdn agent' on each host)."),
    cfg.StrOpt("my_ip", default="127.0.0.1", help="This host's IP address; default of vpn_ip, "
               "routing_source_ip and metadata_host."),
    cfg.StrOpt("host", default=socket.gethostname(), sample_default="<this host's name>",
               help="Name of this host; a network host's name in networks.host (nova's "
               "set_network_host). A Linux-backend agent with an empty host is a compute host "
               "only (bridges and filters its VIFs, routes no network)."),
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
    cfg.Opt("fixed_range_v6", type=_cidr_type(6), default="fd00::/48",
            help="Fixed IPv6 range; network create carves one /64 per network out of it."),
    # IPv6 (issue 12): nova's flags where nova had one (gateway_v6, ipv6_backend), Neutron's
    # address-mode names, the router's public IPv6 side like the IPv4 external_gateway options
    cfg.Opt("gateway_v6", type=_address_type(6),
            help="Default IPv6 gateway of new networks (nova's flag); unset: the /64's ::1."),
    cfg.StrOpt("ipv6_backend", default="rfc2462", choices=ipv6.BACKENDS,
               help="How an instance's IPv6 address is derived from its MAC (nova's backends): "
               "rfc2462 (modified EUI-64, what SLAAC forms) or account_identifier (project hash + "
               "MAC; needs dhcpv6-stateful networks)."),
    cfg.StrOpt("ipv6_address_mode", default="slaac", choices=ipv6.MODES,
               help="Address mode of new networks (Neutron's ipv6_address_mode/ipv6_ra_mode)."),
    cfg.IntOpt("ipv6_ra_interval", default=10, min=4, max=1800,
               help="Seconds between unsolicited router advertisements (MaxRtrAdvInterval, "
               "RFC 4861 6.2.1; nova's radvd used 10)."),
    cfg.Opt("dns_v6", type=_address_list_type(6), default=[],
            help="IPv6 DNS servers of new networks, comma-separated (RDNSS, DHCPv6 option 23)."),
    cfg.Opt("public_ip_v6", type=_interface_type(6),
            help="The network host's IPv6 address on the public side, ADDRESS/PREFIXLEN; "
            "projects' /64s are routed to and from it without NAT."),
    cfg.Opt("external_gateway_v6", type=_address_type(6),
            help="IPv6 next hop on the public network for destinations outside fixed_range_v6. "
            "Its MAC is learned by neighbour discovery unless external_gateway_v6_mac is set."),
    cfg.StrOpt("external_gateway_v6_mac", help="MAC of external_gateway_v6, to skip learning it."),
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
    cfg.IntOpt("echo_misses", default=3, min=1, max=3600,
               help="OpenFlow echo requests (one a second) a switch may leave unanswered in a "
                    "row before the controller drops it. Echoes sent while one of the "
                    "controller's bundles is open or committing on that switch do not count "
                    "(it answers nothing while it commits ~100k flows)."),
    cfg.FloatOpt("mastership_lease", default=3.0, min=0,
                 help="Seconds of the deployment lease that makes one of several controllers "
                      "MASTER of every switch (the others SLAVE; docs/HA.md). A master that "
                      "dies is replaced within this time. 0: no roles (one controller only)."),
    cfg.StrOpt("controller_id", default="",
               help="This controller's name in the mastership lease, unique in the "
                    "deployment (default: <hostname>:<ofp_tcp_listen_port>)."),
    cfg.StrOpt("mastership_group", default="",
               help="Controllers that share the same switches (e.g. a network host's name, when "
                    "every network host runs its own controllers for its own switches): the "
                    "switch roles are held per group, the periodic jobs still once per "
                    "deployment. Empty: one group, every controller connected to every switch."),
]

#: OpenFlow over TLS (the switch side: ``ovs-vsctl set-ssl`` and an ``ssl:HOST:PORT`` controller
#: target). Neutron's [OVS] names; os-ken's ctl_privkey, ctl_cert and ca_certs underneath.
ovs_ssl_opts = [
    cfg.StrOpt("ssl_key_file", help="PEM private key of the controller's OpenFlow TLS "
               "certificate. With ssl_cert_file set, the controller accepts only TLS on "
               "ofp_listen_host:ofp_tcp_listen_port (switches connect to ssl:HOST:PORT)."),
    cfg.StrOpt("ssl_cert_file", help="PEM certificate the controller presents to switches "
               "(needs ssl_key_file)."),
    cfg.StrOpt("ssl_ca_cert_file", help="PEM CA certificate(s) that switch certificates must "
               "be signed by; a switch without one is refused. Unset: any switch may connect "
               "(the connection is encrypted but switches are not authenticated)."),
]
ovs_opts += ovs_ssl_opts

#: ``sdn api`` (the REST API, docs/API.md): where it listens, who may call it, TLS.
api_opts = [
    cfg.HostAddressOpt("listen", default="127.0.0.1",
                       help="Address the REST API listens on (nova's osapi_compute_listen). "
                       "Keep 127.0.0.1 unless cert_file is set or a TLS proxy is in front."),
    cfg.Opt("port", type=_port, default=8774, help="TCP port of the REST API (nova's "
            "osapi_compute_listen_port)."),
    cfg.StrOpt("token_file", default="/etc/sdn/api-tokens",
               help="Bearer tokens, one 'TOKEN SCOPE' per line (SCOPE: admin or "
               "project:<id>; '#' starts a comment). Must not be readable by group or others."),
    cfg.StrOpt("cert_file", help="PEM certificate of the API's TLS listener; with key_file "
               "set the API speaks only HTTPS."),
    cfg.StrOpt("key_file", help="PEM private key of cert_file."),
]

#: Prometheus endpoints (sdn.metrics, docs/OPERATIONS.md): GET http://listen:port/metrics
metrics_opts = [
    cfg.HostAddressOpt("listen", default="127.0.0.1",
                       help="Address the metrics endpoints of 'sdn controller' and 'sdn agent' "
                       "listen on (0.0.0.0: every address)."),
    cfg.IntOpt("controller_port", default=9302, min=0, max=65535,
               help="Port of the controller's metrics (0: not served)."),
    cfg.IntOpt("agent_port", default=9303, min=0, max=65535,
               help="Port of the Linux agent's metrics (0: not served)."),
]

GROUPS = {"DEFAULT": default_opts, "database": database_opts, "ovs": ovs_opts, "api": api_opts,
          "metrics": metrics_opts}


def make_conf() -> cfg.ConfigOpts:
    """A new ConfigOpts with every sdn option registered (tests use one per case)."""
    conf = cfg.ConfigOpts()
    conf.register_opts(default_opts)
    conf.register_opts(database_opts, group="database")
    conf.register_opts(ovs_opts, group="ovs")
    conf.register_opts(api_opts, group="api")
    conf.register_opts(metrics_opts, group="metrics")
    from sdn import log   # oslo.log's debug, log_file, use_syslog, ... in [DEFAULT]

    log.register_options(conf)
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


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """Every sdn option by group, for oslo-config-generator (entry point ``oslo.config.opts``:
    ``sdn``; etc/oslo-config-generator/sdn.conf). Read from ``GROUPS``, so a group added there
    appears in the sample config without further wiring."""
    return [(group, list(opts)) for group, opts in GROUPS.items()]
