"""Interface driver: Linux bridges, VLAN interfaces and addresses through netlink (pyroute2).

nova's ``LinuxBridgeInterfaceDriver`` (ensure_bridge, ensure_vlan, ensure_vlan_bridge,
initialize_gateway_device) without parsing ``ip``/``brctl`` output. Every function is
idempotent: it changes only what differs and returns a list of what it changed (empty: nothing
was wrong), which the agent logs and the tests use to prove a restart is a no-op.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

LOG = logging.getLogger("sdn.linux.interface")


class VlanUnsupported(RuntimeError):
    """The kernel cannot create VLAN interfaces (no 8021q)."""


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def _link(ipr: IPRoute, index: int):
    return ipr.get_links(index)[0]


def _kind(link) -> str | None:
    info = link.get("linkinfo")
    return info.get("kind") if info else None


def _v4_addrs(ipr: IPRoute, index: int) -> list[tuple[str, int, str | None]]:
    return [(a.get("address"), a["prefixlen"], a.get("broadcast"))
            for a in ipr.get_addr(index=index, family=socket.AF_INET)]


def ensure_bridge(ipr: IPRoute, bridge: str, interface: str | None = None, *,
                  gateway_cidr: str | None = None, broadcast: str | None = None,
                  mac: str | None = None, gateway_v6: tuple[str, ...] = (),
                  released: tuple[str, ...] = (), foreign_mac: str | None = None) -> list[str]:
    """Create ``bridge`` if missing (forward delay 0, STP off, up); enslave ``interface`` and
    move its IPv4 addresses and default route onto the bridge (nova); put ``gateway_cidr`` on
    the bridge (the gateway/DHCP server address), the IPv6 ``address/prefix``es of
    ``gateway_v6`` (nova's ``ip -6 addr add gateway_v6/netmask_v6 dev bridge``) and set the
    bridge MAC to ``mac``. A network another host routes now: the ``released`` addresses
    (v4 or v6 ``address/prefix``) are taken off the bridge, and a bridge whose MAC is
    ``foreign_mac`` (that network's gateway MAC) gets a random locally administered one, so
    frames for the gateway leave over the uplink instead of ending here."""
    changed = []
    idx = _index(ipr, bridge)
    if idx is None:
        ipr.link("add", ifname=bridge, kind="bridge")
        idx = _index(ipr, bridge)
        ipr.link("set", index=idx, kind="bridge", br_forward_delay=0, br_stp_state=0)
        changed.append(f"created bridge {bridge}")
    link = _link(ipr, idx)
    if _kind(link) != "bridge":
        raise RuntimeError(f"{bridge} exists and is not a bridge ({_kind(link)})")
    if mac and link.get("address", "").lower() != mac.lower():
        ipr.link("set", index=idx, address=mac)
        changed.append(f"{bridge} mac {mac}")
    elif foreign_mac and link.get("address", "").lower() == foreign_mac.lower():
        new = random_mac()
        ipr.link("set", index=idx, address=new)
        changed.append(f"{bridge} mac {new} (was the gateway's: routed elsewhere)")
    changed += _release_addresses(ipr, idx, bridge, released)
    if not link["flags"] & 1:  # IFF_UP
        ipr.link("set", index=idx, state="up")
        changed.append(f"{bridge} up")
    if interface:
        iidx = _index(ipr, interface)
        if iidx is None:
            raise RuntimeError(f"interface {interface} for bridge {bridge} does not exist")
        changed += _enslave_up(ipr, iidx, interface, idx, bridge)
        changed += _move_addresses(ipr, iidx, interface, idx, bridge)
    if gateway_cidr:
        address, prefix = gateway_cidr.split("/")
        if not any(a == address and p == int(prefix) for a, p, _ in _v4_addrs(ipr, idx)):
            kw = {"broadcast": broadcast} if broadcast else {}
            ipr.addr("add", index=idx, address=address, prefixlen=int(prefix), **kw)
            changed.append(f"{bridge} address {gateway_cidr}")
    for cidr in gateway_v6:
        changed += ensure_v6_address(ipr, idx, bridge, cidr)
    return changed


def random_mac() -> str:
    """A random locally administered unicast MAC (what the kernel gives a new bridge)."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def _release_addresses(ipr: IPRoute, idx: int, bridge: str, released: tuple[str, ...]) -> list[str]:
    """Delete those of ``released`` (``address/prefix``, v4 or v6) the bridge holds."""
    changed = []
    for cidr in released:
        iface = ipaddress.ip_interface(cidr)
        family = socket.AF_INET if iface.version == 4 else socket.AF_INET6
        have = ({(a, p) for a, p, _ in _v4_addrs(ipr, idx)} if iface.version == 4
                else _v6_addrs(ipr, idx))
        if (str(iface.ip), iface.network.prefixlen) not in have:
            continue
        ipr.addr("del", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen,
                 family=family)
        changed.append(f"{bridge} - {cidr} (routed elsewhere)")
    return changed


IFA_F_NODAD = 0x02


def _v6_addrs(ipr: IPRoute, index: int) -> set[tuple[str, int]]:
    return {(str(ipaddress.IPv6Address(a.get("address"))), a["prefixlen"])
            for a in ipr.get_addr(index=index, family=socket.AF_INET6)}


def ensure_v6_address(ipr: IPRoute, index: int, name: str, cidr: str) -> list[str]:
    """``ip -6 addr add CIDR dev NAME nodad`` unless present: the router's addresses are
    its own by configuration, so no duplicate address detection delays them (RFC 4862 §5.4
    allows skipping it)."""
    iface = ipaddress.IPv6Interface(cidr)
    if (str(iface.ip), iface.network.prefixlen) in _v6_addrs(ipr, index):
        return []
    try:
        ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen,
                 family=socket.AF_INET6, flags=IFA_F_NODAD)
    except NetlinkError as err:
        if err.code != errno.EEXIST:
            raise
        return []
    return [f"{name} address {iface}"]


def _move_addresses(ipr: IPRoute, src: int, src_name: str, dst: int, dst_name: str) -> list[str]:
    """nova: addresses (and the default route through them) go from the enslaved interface to
    the bridge, since an enslaved interface's own addresses stop working."""
    changed = []
    defaults = [r for r in ipr.get_routes(family=socket.AF_INET, oif=src, table=254)
                if not r.get("dst_len") and r.get("gateway")]
    for address, prefix, brd in _v4_addrs(ipr, src):
        ipr.addr("del", index=src, address=address, prefixlen=prefix)
        kw = {"broadcast": brd} if brd else {}
        try:
            ipr.addr("add", index=dst, address=address, prefixlen=prefix, **kw)
        except NetlinkError as err:
            if err.code != errno.EEXIST:
                raise
        changed.append(f"moved {address}/{prefix} from {src_name} to {dst_name}")
    for route in defaults:
        gw = route.get("gateway")
        try:
            ipr.route("replace", dst="0.0.0.0/0", gateway=gw, oif=dst)
        except NetlinkError as err:
            if err.code != errno.EEXIST:
                raise
        changed.append(f"default route via {gw} moved to {dst_name}")
    return changed


def ensure_vlan(ipr: IPRoute, vlan: int, interface: str) -> list[str]:
    """``ip link add link IF name vlanN type vlan id N`` (up). Raises VlanUnsupported when the
    kernel lacks 8021q (netlink answers EOPNOTSUPP)."""
    name = f"vlan{vlan}"
    idx = _index(ipr, name)
    changed = []
    if idx is None:
        parent = _index(ipr, interface)
        if parent is None:
            raise RuntimeError(f"VLAN parent interface {interface} does not exist")
        try:
            ipr.link("add", ifname=name, kind="vlan", link=parent, vlan_id=vlan)
        except NetlinkError as err:
            if err.code in (errno.EOPNOTSUPP, errno.ENOENT):
                raise VlanUnsupported(f"cannot create {name} on {interface}: the kernel has no 802.1Q "
                                      f"VLAN support (8021q): {err}") from None
            raise
        idx = _index(ipr, name)
        changed.append(f"created {name} on {interface}")
    if not _link(ipr, idx)["flags"] & 1:
        ipr.link("set", index=idx, state="up")
        changed.append(f"{name} up")
    return changed


def ensure_vlan_bridge(ipr: IPRoute, vlan: int, bridge: str, interface: str, **bridge_kw) -> list[str]:
    """ensure_vlan + ensure_bridge(bridge, vlanN)."""
    changed = ensure_vlan(ipr, vlan, interface)
    return changed + ensure_bridge(ipr, bridge, f"vlan{vlan}", **bridge_kw)


def vlan_supported(ipr: IPRoute) -> tuple[bool, str]:
    """Probe: create and delete a VLAN on a throwaway dummy/veth; (False, reason) without 8021q."""
    probe = "sdnvlprobe"
    peer = "sdnvlprobe1"
    try:
        ipr.link("add", ifname=probe, kind="veth", peer=peer)
    except NetlinkError as err:
        return False, f"cannot create a probe interface: {err}"
    try:
        ensure_vlan(ipr, 4094, probe)
        return True, ""
    except VlanUnsupported as err:
        return False, str(err)
    finally:
        for name in ("vlan4094", probe):
            idx = _index(ipr, name)
            if idx is not None:
                ipr.link("del", index=idx)


def enslave(ipr: IPRoute, port: str, bridge: str) -> list[str]:
    """Put an existing VIF port on ``bridge`` and bring it up (what nova-compute's plug did)."""
    pidx, bidx = _index(ipr, port), _index(ipr, bridge)
    if pidx is None or bidx is None:
        return []
    return _enslave_up(ipr, pidx, port, bidx, bridge)


def _enslave_up(ipr, idx: int, name: str, bridge_idx: int, bridge: str) -> list[str]:
    """Put link ``idx`` on the bridge and bring it up; returns what changed (nothing if right)."""
    link = _link(ipr, idx)
    changed = []
    if link.get("master") != bridge_idx:
        ipr.link("set", index=idx, master=bridge_idx)
        changed.append(f"{name} on {bridge}")
    if not link["flags"] & 1:
        ipr.link("set", index=idx, state="up")
        changed.append(f"{name} up")
    return changed


def link_names(ipr: IPRoute) -> set[str]:
    return {link.get("ifname") for link in ipr.get_links()}


def ensure_addresses(ipr: IPRoute, interface: str, wanted: set[str], manage: str, *,
                     add: bool = True, remove: bool = True,
                     bound: frozenset[str] = frozenset()) -> list[str]:
    """Make the ``/32`` addresses inside the ``manage`` CIDR on ``interface`` exactly ``wanted``
    (floating IPs: nova's bind/unbind_floating_ip). Other addresses are never touched, except
    those of ``bound`` (what an earlier call bound, e.g. another pool's floating IP of a network
    this host routed until it moved), removed once no longer wanted.
    ``add``/``remove`` limit it to one direction, so a caller can unbind before and bind after
    it changes the NAT rules."""
    import netaddr

    idx = _index(ipr, interface)
    if idx is None:
        return [f"public interface {interface} missing"] if wanted and add else []
    rng = netaddr.IPNetwork(manage)
    have = {f"{a}/{p}" for a, p, _ in _v4_addrs(ipr, idx)
            if p == 32 and (netaddr.IPAddress(a) in rng or f"{a}/{p}" in bound)}
    changed = []
    for cidr in sorted(wanted - have) if add else ():
        a, p = cidr.split("/")
        ipr.addr("add", index=idx, address=a, prefixlen=int(p))
        changed.append(f"{interface} + {cidr}")
    for cidr in sorted(have - wanted) if remove else ():
        a, p = cidr.split("/")
        ipr.addr("del", index=idx, address=a, prefixlen=int(p))
        changed.append(f"{interface} - {cidr}")
    return changed


def set_ip_forward() -> list[str]:
    """nova init_host: ``sysctl -w net.ipv4.ip_forward=1`` (per network namespace)."""
    return _set_sysctl("/proc/sys/net/ipv4/ip_forward", "1", "net.ipv4.ip_forward=1")


def _set_sysctl(path: str, value: str, note: str) -> list[str]:
    with open(path) as fh:
        if fh.read().strip() == value:
            return []
    with open(path, "w") as fh:
        fh.write(value + "\n")
    return [note]


def set_ipv6_forward() -> list[str]:
    """nova's ``sysctl -w net.ipv6.conf.all.forwarding=1`` (per network namespace): the host
    routes the projects' /64s (a router ignores router advertisements itself, RFC 4861 §6.2.8).
    ``disable_ipv6`` is cleared first: a host with IPv6 off could hold no gateway address."""
    changes = _set_sysctl("/proc/sys/net/ipv6/conf/all/disable_ipv6", "0",
                          "net.ipv6.conf.all.disable_ipv6=0")
    changes += _set_sysctl("/proc/sys/net/ipv6/conf/default/disable_ipv6", "0",
                           "net.ipv6.conf.default.disable_ipv6=0")
    return changes + _set_sysctl("/proc/sys/net/ipv6/conf/all/forwarding", "1",
                                 "net.ipv6.conf.all.forwarding=1")


def ensure_v6_public(ipr: IPRoute, interface: str, address: str | None, gateway: str | None,
                     gateway_mac: str | None) -> list[str]:
    """The router's public IPv6 side (config public_ip_v6, external_gateway_v6,
    external_gateway_v6_mac): ``address`` (ADDRESS/PREFIXLEN) on ``interface``, the default
    route via ``gateway`` there, and a permanent neighbour entry for it when its MAC is
    configured (else neighbour discovery learns it). Nothing is removed; a missing interface
    is logged, not raised (the operator's public port may appear later: the agent reconciles
    again when links change)."""
    if not (address or gateway):
        return []
    idx = _index(ipr, interface)
    if idx is None:
        LOG.warning("public interface %s missing: IPv6 public side not set up", interface)
        return []
    changed = ensure_v6_address(ipr, idx, interface, address) if address else []
    if gateway:
        routes = ipr.get_routes(family=socket.AF_INET6, table=254, dst_len=0)
        if not any(r.get("gateway") == gateway and r.get("oif") == idx for r in routes):
            ipr.route("replace", family=socket.AF_INET6, dst="::/0", gateway=gateway, oif=idx)
            changed.append(f"default IPv6 route via {gateway} dev {interface}")
        if gateway_mac:
            have = [n for n in ipr.get_neighbours(family=socket.AF_INET6, ifindex=idx, dst=gateway)
                    if (n.get("lladdr") or "").lower() == gateway_mac.lower() and n["state"] & 0x80]
            if not have:   # NUD_PERMANENT
                ipr.neigh("replace", family=socket.AF_INET6, dst=gateway, lladdr=gateway_mac,
                          ifindex=idx, state=0x80)
                changed.append(f"neighbour {gateway} lladdr {gateway_mac} dev {interface}")
    return changed


BRIDGE_NF_SYSCTLS = ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables")


def set_bridge_nf_call() -> list[str]:
    """``net.bridge.bridge-nf-call-ip{,6}tables=1`` in this network namespace (the sysctl is
    per namespace): bridged traffic between VIFs must traverse the security group chains.
    Raises RuntimeError when br_netfilter is not loaded (no /proc/sys/net/bridge)."""
    changes = []
    for name in BRIDGE_NF_SYSCTLS:
        path = f"/proc/sys/net/bridge/{name}"
        try:
            with open(path) as fh:
                if fh.read().strip() == "1":
                    continue
            with open(path, "w") as fh:
                fh.write("1\n")
        except OSError as err:
            raise RuntimeError(f"cannot set net.bridge.{name}=1 ({err}); security groups need "
                               "the br_netfilter module (modprobe br_netfilter)") from None
        changes.append(f"net.bridge.{name}=1")
    return changes
