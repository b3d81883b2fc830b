"""Network managers with nova-network (Essex 2012.1) semantics.

``FlatManager``: networks shared by every project; a fixed IP is disassociated as soon as the
instance deallocates it. ``FlatDHCPManager``: the same, but the association outlives
deallocation until the DHCP lease is released or ``fixed_ip_disassociate_timeout`` passes.
``VlanManager``: one network (VLAN, bridge ``br<vlan>``, subnet, cloudpipe VPN address/port)
per project, associated with the project at its first instance.

Every public method is one database transaction (``sdn.db.api.transaction``): it either
commits completely (and bumps the state revision) or raises an ``sdn.exception.SdnError`` and
writes nothing. An instance gets one VIF, on the first network of its project (VLAN) or the
first shared network with a free address (flat modes), or one VIF per network asked for
(``networks``, nova's requested_networks); ``add_fixed_ip_to_instance`` adds a VIF (own MAC, own
port) on one more network and ``remove_fixed_ip_from_instance`` removes one (nova's semantics,
except that a second fixed IP on a network the instance is already on is refused).
"""

from __future__ import annotations

import datetime
import random
import uuid as uuidlib
from dataclasses import dataclass

import netaddr
from sqlalchemy import delete, func, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from sdn import exception, ipv6, leases, secgroups, validation, view
from sdn.db import api as db
from sdn.db import limits, models
from sdn.floating import FloatingIps, floating_ips_in, describe_addresses

MAX_VLAN = validation.MAX_VLAN
#: attempts at an allocation that lost a uniqueness race to a concurrent transaction
_RACE_RETRIES = 3
#: DNS label of an instance name (kept here for callers of sdn.manager)
hostname_for = validation.hostname_for


def generate_mac(rng: random.Random | None = None) -> str:
    """nova/Neutron MAC: ``fa:16:3e`` + 3 random bytes, the first at most 0x7f."""
    rng = rng or random
    return "fa:16:3e:%02x:%02x:%02x" % (rng.randint(0, 0x7F), rng.randint(0, 0xFF), rng.randint(0, 0xFF))


class NetworkManager:
    """Shared allocation logic; subclasses set the mode flags below.

    ``conf`` is an ``sdn.config`` ConfigOpts (or any object with the same attribute names).
    """

    #: network address and gateway
    bottom_reserved = 2
    #: broadcast address
    top_reserved = 1
    #: VLAN per project (networks associated with a project at its first instance)
    vlan_mode = False
    #: the association of a deallocated fixed IP lasts until DHCP release / timeout
    dhcp = False

    def __init__(self, engine: Engine, conf):
        self.engine = engine
        self.conf = conf

    # -- networks ---------------------------------------------------------------------------

    def create_networks(self, label: str, cidr: str | None = None, num_networks: int | None = None,
                        network_size: int | None = None, vlan_start: int | None = None,
                        vpn_start: int | None = None, bridge: str | None = None,
                        bridge_interface: str | None = None, dns1: str | None = None,
                        dns2: str | None = None, project_id: str | None = None,
                        cidr_v6: str | None = None, gateway_v6: str | None = None,
                        ipv6_ra_mode: str | None = None, ipv6_address_mode: str | None = None,
                        dns_v6: list[str] | None = None) -> list[dict]:
        """Carve ``num_networks`` subnets of ``network_size`` addresses (rounded up to a power of
        two) out of ``cidr`` and create them with all their fixed IPs.

        IPv6: with ``cidr_v6`` (or use_ipv6: fixed_range_v6), each network also gets the next
        /64 of it that no network (nor public_ip_v6's prefix) uses (nova's create_networks
        carved /64s the same way, but from the start of the range every time), with
        ``gateway_v6`` (default: config gateway_v6, else the /64's ::1), both Neutron modes
        (``ipv6_ra_mode``/``ipv6_address_mode``, equal when both given; default config
        ipv6_address_mode) and ``dns_v6`` (default config dns_v6); see ``ipv6_settings``.
        Unset arguments take the nova flag defaults (fixed_range, num_networks, vlan_start,
        vpn_start, flat_network_bridge, flat_interface, flat_network_dns); an unset network_size
        is what ``cidr`` holds per network, at most the network_size flag (nova-manage).
        Only ``None`` means "unset": an empty or zero value is refused, never replaced.
        Returns one ``network_dict`` per network. Raises InvalidCidr, VlanOutOfRange,
        CidrConflict, FloatingRangeConflict, VlanInUse, Invalid.
        """
        if not self.vlan_mode and (vlan_start is not None or vpn_start is not None):
            raise exception.Invalid(f"--vlan/--vpn apply only to network_manager=vlan, "
                                    f"not {self.conf.network_manager}")
        conf = self.conf
        v6 = ipv6_settings(conf, cidr_v6, gateway_v6, ipv6_ra_mode, ipv6_address_mode, dns_v6)
        cidr = conf.fixed_range if cidr is None else cidr
        num_networks = conf.num_networks if num_networks is None else num_networks
        vlan_start = conf.vlan_start if vlan_start is None else vlan_start
        vpn_start = conf.vpn_start if vpn_start is None else vpn_start
        dns1 = conf.flat_network_dns if dns1 is None else dns1
        if not self.vlan_mode:
            bridge = conf.flat_network_bridge if bridge is None else \
                validation.required(bridge, "a flat network's bridge", "--bridge")
            bridge_interface = conf.flat_interface if bridge_interface is None else bridge_interface
        validation.required(label, "a network's label", "--label")
        validation.count(num_networks, "num_networks")
        if self.vlan_mode:
            validation.vlans(vlan_start, num_networks)
            validation.count(vpn_start, "the first VPN port (--vpn)", 1, 65536 - num_networks)
        subnets = self._carve(cidr, num_networks, conf.network_size if network_size is None else network_size,
                              fit=network_size is None)
        dns1, dns2 = (None if dns is None else validation.ipv4_address(dns, "DNS server") for dns in (dns1, dns2))

        with db.transaction(self.engine) as session:
            db.lock_key(session, db.LOCK_ADDRESS_SPACE, "")   # racing overlapping creations
            floating = floating_ips_in(session, subnets[0].first, subnets[-1].last)
            for subnet in subnets:
                self._check_overlap(session, subnet, floating)
            if self.vlan_mode:
                for vlan in range(vlan_start, vlan_start + num_networks):
                    used = session.scalar(select(models.Network).where(models.Network.vlan == vlan))
                    if used is not None:
                        raise exception.VlanInUse(vlan=vlan, cidr=used.cidr, label=used.label)
            subnets_v6 = self._free_v6_subnets(session, v6.range, num_networks) if v6 else [None] * num_networks
            created = []
            for index, (subnet, subnet_v6) in enumerate(zip(subnets, subnets_v6)):
                net = models.Network(
                    label=f"{label}_{index}" if num_networks > 1 else label,
                    cidr=str(subnet), netmask=str(subnet.netmask), gateway=str(subnet[1]),
                    broadcast=str(subnet.broadcast), dhcp_start=str(subnet[2]), dns1=dns1, dns2=dns2,
                    bridge=bridge, bridge_interface=bridge_interface, project_id=project_id)
                # host: claimed later by the first network host to see a VIF on it
                if v6:
                    v6.apply(net, subnet_v6)
                if self.vlan_mode:
                    net.vlan = vlan_start + index
                    net.bridge = f"br{net.vlan}"
                    net.vpn_private_address = str(subnet[2])
                    net.dhcp_start = str(subnet[3])
                    net.vpn_public_address = conf.vpn_ip
                    net.vpn_public_port = vpn_start + index
                session.add(net)
                session.flush()
                self._create_fixed_ips(session, net.id, subnet)
                created.append(net)
            return [network_dict(n) for n in created]

    def _free_v6_subnets(self, session: Session, prefix: netaddr.IPNetwork,
                         count: int) -> list[netaddr.IPNetwork]:
        """The first ``count`` /64s of ``prefix`` overlapping no network's cidr_v6 and not the
        router's public_ip_v6 prefix. Raises Ipv6RangeFull naming who uses the rest."""
        used = [(netaddr.IPNetwork(cidr), f"network {label} ({cidr})") for cidr, label in session.execute(
            select(models.Network.cidr_v6, models.Network.label).where(models.Network.cidr_v6.is_not(None)))]
        if self.conf.public_ip_v6:
            public = netaddr.IPNetwork(self.conf.public_ip_v6).cidr
            used.append((public, f"the router's public_ip_v6 ({public})"))
        exact = {str(net): who for net, who in used if net.prefixlen == 64}
        wider = [(net, who) for net, who in used if net.prefixlen != 64]
        free, clashes = [], []
        for subnet in prefix.subnet(64):   # a generator: stops at the count-th free /64
            who = exact.get(str(subnet)) or next((w for n, w in wider if subnet in n or n in subnet), None)
            if who is None:
                free.append(subnet)
                if len(free) == count:
                    return free
            elif who not in clashes:
                clashes.append(who)
        raise exception.Ipv6RangeFull(
            range=str(prefix), free=len(free), count=count,
            used=", ".join(clashes[:3]) + (f" and {len(clashes) - 3} more" if len(clashes) > 3 else "")
            or "nothing")

    @staticmethod
    def _carve(cidr: str, num_networks: int, network_size: int, fit: bool) -> list[netaddr.IPNetwork]:
        """``num_networks`` subnets of ``cidr`` with ceil(log2(network_size)) host bits; with
        ``fit`` (no size asked for) the size shrinks to what ``cidr`` holds, as nova-manage does."""
        fixed_net = validation.ipv4_network(cidr, "the fixed range (--fixed_range_v4)")
        bits = validation.host_bits(network_size, num_networks, fixed_net, fit)
        return list(fixed_net.subnet(32 - bits, count=num_networks))

    @staticmethod
    def _check_overlap(session: Session, subnet: netaddr.IPNetwork, floating: list[tuple[int, str]]) -> None:
        """Refuse ``subnet`` if it overlaps a network or holds floating IPs (``floating_ips_in``)."""
        for net in session.scalars(select(models.Network)):
            existing = netaddr.IPNetwork(net.cidr)
            if subnet in existing or existing in subnet:
                raise exception.CidrConflict(cidr=str(subnet), existing=net.cidr, label=net.label)
        inside = [(address, pool) for address, pool in floating if subnet.first <= address <= subnet.last]
        if inside:
            raise exception.FloatingRangeConflict(new=f"network {subnet}", existing=describe_addresses(inside))

    def _create_fixed_ips(self, session: Session, network_id: int, subnet: netaddr.IPNetwork) -> None:
        size = subnet.size
        bottom, top = self.bottom_reserved, self.top_reserved
        now = models.utcnow()
        rows = [{"address": str(subnet[i]), "network_id": network_id, "reserved": i < bottom or size - i <= top,
                 "allocated": False, "leased": False, "created_at": now} for i in range(size)]
        session.execute(models.FixedIp.__table__.insert(), rows)

    def delete_network(self, cidr: str) -> dict:
        """Delete the network whose CIDR is ``cidr`` and its fixed IPs. Raises NetworkNotFound,
        NetworkInUse (while any fixed IP is allocated; addresses merely awaiting DHCP release
        go with the network)."""
        with db.transaction(self.engine) as session:
            net = _idle_network(session, cidr)
            result = network_dict(net)
            ip_ids = select(models.FixedIp.id).where(models.FixedIp.network_id == net.id)
            session.execute(update(models.FloatingIp).where(models.FloatingIp.fixed_ip_id.in_(ip_ids))
                            .values(fixed_ip_id=None))
            session.execute(delete(models.FixedIp).where(models.FixedIp.network_id == net.id))
            session.delete(net)
            return result

    def list_networks(self) -> list[dict]:
        """Every network as ``network_dict``, by id."""
        with db.read_transaction(self.engine) as session:
            return [network_dict(n) for n in session.scalars(select(models.Network).order_by(models.Network.id))]

    # -- network hosts (nova's set_network_host) ---------------------------------------------

    def set_network_host(self, network_id: int, host: str) -> str:
        """nova's ``set_network_host``/``network_set_host``: make ``host`` the network host of
        network ``network_id`` unless another host has it already. Atomic (an UPDATE ... WHERE
        host IS NULL: of two racing claimants exactly one wins, on SQLite and PostgreSQL).
        Returns the network's host afterwards (``host`` or the winner). Raises NetworkNotFound,
        Invalid (bad host name)."""
        host = network_host_name(host)
        with db.transaction(self.engine) as session:
            if session.get(models.Network, network_id) is None:
                raise exception.NetworkNotFound(what=f"with id {network_id}")
            if not _claim(session, [network_id], host):
                db.keep_revision(session)
            return session.scalar(select(models.Network.host).where(models.Network.id == network_id))

    def claim_networks(self, host: str) -> list[dict]:
        """Claim for network host ``host`` every network that has a VIF and no host yet: what
        nova's first allocation on a network did (``_allocate_fixed_ips`` asked the network
        topic to ``set_network_host`` when ``network['host']`` was None, and whichever network
        host took the message became its host). One transaction; networks another host claimed
        meanwhile stay its. Returns the network_dicts claimed by this call (often none)."""
        host = network_host_name(host)
        with db.transaction(self.engine) as session:
            wanted = list(session.scalars(
                select(models.Network.id).where(
                    models.Network.host.is_(None),
                    models.Network.id.in_(select(models.VirtualInterface.network_id)))
                .order_by(models.Network.id)))
            claimed = _claim(session, wanted, host)
            if not claimed:
                db.keep_revision(session)
                return []
            return [network_dict(n) for n in session.scalars(
                select(models.Network).where(models.Network.id.in_(claimed))
                .order_by(models.Network.id))]

    def modify_network_host(self, cidr: str, host: str | None = None,
                            disassociate: bool = False) -> dict:
        """nova-manage ``network modify --host H`` / ``--disassociate-host``: move the network
        with CIDR ``cidr`` to network host ``host`` deliberately (whoever had it), or leave it
        without one (the next network host that sees a VIF on it claims it). Its floating IPs'
        and SNAT's connections do not follow (conntrack state stays on the old host). Returns
        the network_dict. Raises NetworkNotFound, Invalid (neither or both asked for, bad host)."""
        if (host is None) == (not disassociate):
            raise exception.Invalid("network modify needs exactly one of --host HOST (move the "
                                    "network to that network host) or --disassociate-host")
        host = None if disassociate else network_host_name(host)
        with db.transaction(self.engine) as session:
            net = _network_by_cidr(session, cidr)
            if net.host == host:
                db.keep_revision(session)
            net.host = host
            session.flush()
            return network_dict(net)

    def list_fixed_ips(self) -> list[dict]:
        """Every fixed IP: {network (cidr), address, reserved, allocated, leased, lease_end
        (naive UTC ISO text of the last ACK + dhcp_lease_time, None when not leased),
        instance, hostname, host, mac, address_v6 (the VIF's derived IPv6 address on the
        network's /64, None without one)}."""
        with db.read_transaction(self.engine) as session:
            rows = session.execute(
                select(models.FixedIp, models.Network.cidr, models.Instance, models.VirtualInterface.address,
                       models.Network.cidr_v6)
                .join(models.Network, models.FixedIp.network_id == models.Network.id)
                .outerjoin(models.Instance, models.FixedIp.instance_uuid == models.Instance.uuid)
                .outerjoin(models.VirtualInterface, models.FixedIp.virtual_interface_id == models.VirtualInterface.id)
                .order_by(models.FixedIp.id))
            return [{"network": cidr, "address": ip.address, "reserved": ip.reserved, "allocated": ip.allocated,
                     "leased": ip.leased,
                     "lease_end": _iso(leases.lease_end(ip.updated_at, ip.leased,
                                                        self.conf.dhcp_lease_time)),
                     "instance": inst.name if inst else None,
                     "hostname": inst.hostname if inst else None, "host": ip.host, "mac": mac,
                     "address_v6": ipv6.vif_address(cidr_v6, mac, inst.project_id if inst else None,
                                               self.conf.ipv6_backend)}
                    for ip, cidr, inst, mac, cidr_v6 in rows]

    # -- instances --------------------------------------------------------------------------

    def allocate_for_instance(self, instance_name: str, project_id: str, host: str | None = None,
                              vpn: bool = False, security_groups: list[str] | None = None,
                              networks: list[str] | None = None, rx_kbps: int | None = None,
                              tx_kbps: int | None = None) -> dict:
        """Create the instance (if new), one VIF with a unique MAC and one fixed IP; with
        ``networks`` (labels or CIDRs the project may use), one VIF and fixed IP on each.

        Idempotent: for an existing instance, returns its current allocation. Returns an
        ``allocation`` dict. Raises InvalidInstanceName, InstanceProjectMismatch, NoNetworks,
        NoMoreNetworks, NoMoreFixedIps, VirtualInterfaceMacAddressException.
        With ``vpn`` (cloudpipe, VLAN mode) the fixed IP is the project network's reserved
        vpn_private_address. With auto_assign_floating_ip a floating IP is allocated and
        associated in the same transaction. A new instance joins ``security_groups`` of its
        project (default: ``default``, created on first use; a VPN instance: the project's
        ``<project>-vpn`` group admitting UDP 1194 and ICMP, as nova's cloudpipe); raises
        SecurityGroupNotFound, SecurityGroupMixed.
        """
        validation.instance_name(instance_name)
        validation.required(project_id, "an instance's project", "--project")
        bandwidth = bandwidth_limits(rx_kbps, tx_kbps)   # a new instance's limits (set_bandwidth)
        host = host or self.conf.host
        limits.check(models.Instance, project_id=project_id, host=host)   # before its network's
        for attempt in range(_RACE_RETRIES):
            try:
                with db.transaction(self.engine) as session:
                    return self._allocate(session, instance_name, project_id, host, vpn,
                                          security_groups, networks, bandwidth)
            except sa_exc.IntegrityError:
                # Only reachable without SQLite's global write lock (PostgreSQL): a concurrent
                # launch of the same name, or the same random MAC, committed first. Retrying
                # returns that launch's allocation or picks another MAC.
                if attempt == _RACE_RETRIES - 1:
                    raise

    def _allocate(self, session: Session, instance_name: str, project_id: str, host: str,
                  vpn: bool = False, security_groups: list[str] | None = None,
                  networks: list[str] | None = None,
                  bandwidth: tuple[int | None, int | None] = (None, None)) -> dict:
        inst = session.scalar(select(models.Instance).where(models.Instance.name == instance_name))
        if inst is not None:
            if inst.project_id != project_id:
                raise exception.InstanceProjectMismatch(name=instance_name, existing=inst.project_id,
                                                        project=project_id)
            return _allocation(session, inst, self.conf.ipv6_backend)
        hostname = hostname_for(instance_name)
        db.lock_key(session, db.LOCK_HOSTNAME, hostname)   # a_b and a.b launched at once: one wins
        clash = session.scalar(select(models.Instance.name).where(models.Instance.hostname == hostname).limit(1))
        if clash is not None:
            raise exception.HostnameInUse(name=instance_name, hostname=hostname, existing=clash)
        if session.scalar(select(func.count()).select_from(models.Network)) == 0:
            raise exception.NoNetworks()
        if networks:
            if vpn:
                raise exception.Invalid("a VPN instance takes its project's VPN address; "
                                        "do not give it networks")
            nets = self._requested_networks(session, project_id, networks)
            fixed_ips = [self._free_ip_on(session, net) for net in nets]
        else:
            fixed_ips = [self._vpn_fixed_ip(session, project_id) if vpn
                         else self._pick_fixed_ip(session, project_id)]
        inst = models.Instance(uuid=str(uuidlib.uuid4()), name=instance_name,
                               hostname=hostname, project_id=project_id, host=host,
                               rx_kbps=bandwidth[0], tx_kbps=bandwidth[1])
        session.add(inst)
        session.flush()
        if vpn and security_groups is None:
            security_groups = [secgroups.ensure_vpn_group(session, project_id).name]
        secgroups.join_at_launch(session, inst, security_groups)
        for fixed_ip in fixed_ips:
            self._add_vif(session, inst, fixed_ip, host)
        if self.conf.auto_assign_floating_ip and not vpn:
            FloatingIps(self.engine, self.conf).auto_assign(session, fixed_ips[0], project_id)
        return _allocation(session, inst, self.conf.ipv6_backend)

    def _add_vif(self, session: Session, inst: models.Instance, fixed_ip: models.FixedIp,
                 host: str | None) -> models.VirtualInterface:
        """A new VIF (unique MAC) of ``inst`` on ``fixed_ip``'s network, holding ``fixed_ip``."""
        vif = models.VirtualInterface(uuid=str(uuidlib.uuid4()), address=self._unique_mac(session),
                                      instance_uuid=inst.uuid, network_id=fixed_ip.network_id,
                                      port_security=True)
        session.add(vif)
        session.flush()
        fixed_ip.instance_uuid = inst.uuid
        fixed_ip.virtual_interface_id = vif.id
        fixed_ip.allocated = True
        fixed_ip.leased = False
        fixed_ip.host = host
        fixed_ip.updated_at = models.utcnow()
        session.flush()
        return vif

    def _usable_networks(self, session: Session, project_id: str) -> list[models.Network]:
        """Networks ``project_id`` may ask for by name: its own, and (flat modes) shared ones."""
        query = select(models.Network).order_by(models.Network.id)
        if self.vlan_mode:
            query = query.where(models.Network.project_id == project_id)
        else:
            query = query.where((models.Network.project_id == project_id) | models.Network.project_id.is_(None))
        return list(session.scalars(query))

    def _requested_network(self, session: Session, project_id: str, name: str) -> models.Network:
        """The network labelled (or with CIDR) ``name``, if ``project_id`` may use it."""
        net = _network_by_name(session, name)
        usable = self._usable_networks(session, project_id)
        if net.id not in {n.id for n in usable}:
            if net.project_id is not None:
                reason = f"belongs to project {net.project_id}"
            else:
                reason = ("belongs to no project (VLAN mode: give it to the project with "
                          f"'sdn network add-to-project --project {project_id}')")
            raise exception.NetworkNotUsable(
                network=f"{net.label} ({net.cidr})", reason=reason, project=project_id,
                allowed=", ".join(f"{n.label} ({n.cidr})" for n in usable) or "none")
        return net

    def _requested_networks(self, session: Session, project_id: str,
                            names: list[str]) -> list[models.Network]:
        nets = [self._requested_network(session, project_id, name) for name in names]
        seen: set[int] = set()
        for net in nets:
            if net.id in seen:
                raise exception.Invalid(f"network {net.label} ({net.cidr}) is asked for twice; an instance "
                                        "has one VIF per network")
            seen.add(net.id)
        return nets

    @staticmethod
    def _free_ip_on(session: Session, net: models.Network) -> models.FixedIp:
        ip = _free_fixed_ip(session, net.id)
        if ip is None:
            raise exception.NoMoreFixedIps(where=f"{net.label} ({net.cidr})")
        return ip

    def _vpn_fixed_ip(self, session: Session, project_id: str) -> models.FixedIp:
        """The reserved vpn_private_address of the project's VLAN network (nova's cloudpipe)."""
        net = next((n for n in self._candidate_networks(session, project_id) if n.vpn_private_address), None)
        if net is None:
            raise exception.NoVpnNetwork(project=project_id)
        ip = session.scalar(select(models.FixedIp).where(models.FixedIp.address == net.vpn_private_address))
        if ip is None or ip.allocated:
            raise exception.AddressAlreadyAllocated(address=net.vpn_private_address,
                                                    instance=ip.instance_uuid if ip else "?")
        return ip

    def _candidate_networks(self, session: Session, project_id: str) -> list[models.Network]:
        """Networks to allocate from, in order of preference (flat: the project's own, then shared)."""
        own = list(session.scalars(select(models.Network).where(models.Network.project_id == project_id)
                                   .order_by(models.Network.id)))
        shared = list(session.scalars(select(models.Network).where(models.Network.project_id.is_(None))
                                      .order_by(models.Network.id)))
        return own + shared

    def _pick_fixed_ip(self, session: Session, project_id: str) -> models.FixedIp:
        networks = self._candidate_networks(session, project_id)
        for net in networks:
            ip = _free_fixed_ip(session, net.id)
            if ip is not None:
                return ip
        where = ", ".join(n.cidr for n in networks) if networks else f"any network usable by project {project_id}"
        raise exception.NoMoreFixedIps(where=where)

    def _unique_mac(self, session: Session) -> str:
        attempts = self.conf.create_unique_mac_address_attempts
        for _ in range(attempts):
            mac = generate_mac()
            taken = session.scalar(select(models.VirtualInterface.id).where(models.VirtualInterface.address == mac))
            if taken is None:
                return mac
        raise exception.VirtualInterfaceMacAddressException(attempts=attempts)

    def get_allocation(self, instance_name: str) -> dict:
        """The ``allocation`` dict of an existing instance. Raises InstanceNotFound."""
        with db.read_transaction(self.engine) as session:
            return _allocation(session, _instance_by_name(session, instance_name), self.conf.ipv6_backend)

    def list_allocations(self, project_id: str | None = None) -> list[dict]:
        """The ``allocation`` dict of every instance (of ``project_id`` only, when given), by name."""
        with db.read_transaction(self.engine) as session:
            query = select(models.Instance).order_by(models.Instance.name)
            if project_id is not None:
                query = query.where(models.Instance.project_id == project_id)
            return [_allocation(session, inst, self.conf.ipv6_backend) for inst in session.scalars(query)]

    def show_port_security(self, instance_name: str) -> dict:
        """{instance, port_security, allowed_address_pairs: [{mac, ip}]} of the instance's VIF.
        Raises InstanceNotFound, InstanceHasNoVif."""
        with db.read_transaction(self.engine) as session:
            return _port_security(_vif_of(session, instance_name), instance_name)

    def set_port_security(self, instance_name: str, enabled: bool) -> dict:
        """Enable or disable anti-spoofing for every VIF of the instance (e.g. off for a VPN or
        router instance). Returns show_port_security's dict (of its first VIF)."""
        with db.transaction(self.engine) as session:
            vif = _vif_of(session, instance_name)
            for each in session.scalars(select(models.VirtualInterface).where(
                    models.VirtualInterface.instance_uuid == vif.instance_uuid)):
                each.port_security = bool(enabled)
            return _port_security(vif, instance_name)

    def set_bandwidth(self, instance_name: str, rx_kbps: int | None = None,
                      tx_kbps: int | None = None) -> dict:
        """Limit what each VIF of the instance receives (``rx_kbps``) and sends (``tx_kbps``),
        kbit/s; 0 removes a limit, None leaves it as it is. One transaction. Returns
        show_bandwidth's dict. Raises Invalid (a rate outside 0-MAX_KBPS, or neither given),
        InstanceNotFound."""
        rx, tx = bandwidth_limits(rx_kbps, tx_kbps)
        if rx_kbps is None and tx_kbps is None:
            raise exception.Invalid("give --rx-kbps and/or --tx-kbps (kbit/s; 0 removes a limit)")
        with db.transaction(self.engine) as session:
            inst = _instance_by_name(session, instance_name)
            if rx_kbps is not None:
                inst.rx_kbps = rx
            if tx_kbps is not None:
                inst.tx_kbps = tx
            return _bandwidth(inst)

    def show_bandwidth(self, instance_name: str) -> dict:
        """{instance, rx_kbps, tx_kbps} (None: unlimited). Raises InstanceNotFound."""
        with db.read_transaction(self.engine) as session:
            return _bandwidth(_instance_by_name(session, instance_name))

    def add_address_pair(self, instance_name: str, ip: str, mac: str | None = None) -> dict:
        """Allow the VIF to also send from (``mac`` or its own MAC, ``ip``: an address or CIDR,
        IPv4 or IPv6). Raises InvalidCidr, InvalidMac, AddressPairExists."""
        ip_cidr = validation.address_or_cidr(ip)
        with db.transaction(self.engine) as session:
            db.lock_key(session, db.LOCK_INSTANCE, instance_name)   # a racing identical pair waits
            vif = _vif_of(session, instance_name)
            mac = validation.unicast_mac(mac) if mac is not None else vif.address
            if any(p.mac == mac and p.ip_cidr == ip_cidr for p in vif.allowed_address_pairs):
                raise exception.AddressPairExists(name=instance_name, mac=mac, ip=ip_cidr)
            vif.allowed_address_pairs.append(models.AllowedAddressPair(mac=mac, ip_cidr=ip_cidr))
            return _port_security(vif, instance_name)

    def remove_address_pair(self, instance_name: str, ip: str, mac: str | None = None) -> dict:
        """Remove exactly the pair add_address_pair added. Raises AddressPairNotFound."""
        ip_cidr = validation.address_or_cidr(ip)
        with db.transaction(self.engine) as session:
            vif = _vif_of(session, instance_name)
            mac = validation.unicast_mac(mac) if mac is not None else vif.address
            pair = next((p for p in vif.allowed_address_pairs
                         if p.mac == mac and p.ip_cidr == ip_cidr), None)
            if pair is None:
                raise exception.AddressPairNotFound(name=instance_name, mac=mac, ip=ip_cidr)
            vif.allowed_address_pairs.remove(pair)
            return _port_security(vif, instance_name)

    def deallocate_for_instance(self, instance_name: str) -> dict:
        """Delete the instance's VIF and instance row and deallocate its fixed IP.

        The fixed IP stays associated (unusable by others) until its lease is released or
        ``timeout_fixed_ips`` disassociates it, except in FlatManager (no DHCP) or with
        force_dhcp_release, where it is disassociated at once. Returns the allocation that was
        freed. Raises InstanceNotFound.
        """
        with db.transaction(self.engine) as session:
            inst = _instance_by_name(session, instance_name)
            result = _allocation(session, inst, self.conf.ipv6_backend)
            now = models.utcnow()
            for ip in session.scalars(select(models.FixedIp).where(models.FixedIp.instance_uuid == inst.uuid)):
                self._deallocate_fixed_ip(session, ip, now)
            session.flush()
            for vif in session.scalars(select(models.VirtualInterface)
                                       .where(models.VirtualInterface.instance_uuid == inst.uuid)):
                session.delete(vif)
            session.flush()
            session.delete(inst)
            return result

    def _deallocate_fixed_ip(self, session: Session, ip: models.FixedIp, now: datetime.datetime) -> None:
        """nova's deallocate_fixed_ip: floating IPs released, the address no longer allocated;
        it stays associated until its lease is released or times out, unless FlatManager (no
        DHCP) or force_dhcp_release disassociate it at once."""
        FloatingIps.release_for_fixed_ip(session, ip.id)
        ip.allocated = False
        ip.virtual_interface_id = None
        ip.updated_at = now
        if not self.dhcp or self.conf.force_dhcp_release:
            ip.leased = False
            ip.instance_uuid = None
            ip.host = None

    def add_fixed_ip_to_instance(self, instance_name: str, network: str) -> dict:
        """nova's add_fixed_ip_to_instance: a new VIF (unique MAC, its own port
        ``tap<uuid[:11]>``) on ``network`` (label or CIDR the project may use) with a fixed IP.
        Returns the allocation. Raises InstanceNotFound, NetworkNotFound, NetworkLabelAmbiguous,
        NetworkNotUsable, InstanceHasVifOnNetwork, NoMoreFixedIps."""
        with db.transaction(self.engine) as session:
            inst = _instance_by_name(session, instance_name)
            net = self._requested_network(session, inst.project_id, network)
            vif = session.scalar(select(models.VirtualInterface).where(
                models.VirtualInterface.instance_uuid == inst.uuid,
                models.VirtualInterface.network_id == net.id).limit(1))
            if vif is not None:
                held = session.scalar(select(models.FixedIp.address).where(
                    models.FixedIp.virtual_interface_id == vif.id).limit(1))
                raise exception.InstanceHasVifOnNetwork(name=instance_name, network=f"{net.label} ({net.cidr})",
                                                        address=held or "none")
            self._add_vif(session, inst, self._free_ip_on(session, net), inst.host)
            return _allocation(session, inst, self.conf.ipv6_backend)

    def remove_fixed_ip_from_instance(self, instance_name: str, address: str) -> dict:
        """nova's remove_fixed_ip_from_instance: deallocate ``address`` (as deallocation does:
        its floating IPs released, DHCP association per the manager) and delete the VIF holding
        it (its port security, address pairs and flows go with it). Returns
        {allocation (after), removed: {address, mac, vif_uuid, port_name, network}}. Raises
        InstanceNotFound, FixedIpNotOfInstance, LastVifOfInstance."""
        address = validation.ipv4_address(address, "fixed IP (--address)")
        with db.transaction(self.engine) as session:
            inst = _instance_by_name(session, instance_name)
            held = list(session.scalars(select(models.FixedIp).where(
                models.FixedIp.instance_uuid == inst.uuid, models.FixedIp.allocated.is_(True))
                .order_by(models.FixedIp.id)))
            ip = next((i for i in held if i.address == address), None)
            if ip is None:
                raise exception.FixedIpNotOfInstance(address=address, name=instance_name,
                                                     allowed=", ".join(i.address for i in held) or "none")
            vif = session.get(models.VirtualInterface, ip.virtual_interface_id)
            vifs = session.scalar(select(func.count()).select_from(models.VirtualInterface)
                                  .where(models.VirtualInterface.instance_uuid == inst.uuid))
            if vifs <= 1:
                raise exception.LastVifOfInstance(address=address, name=instance_name)
            net = session.get(models.Network, vif.network_id)
            removed = {"address": address, "mac": vif.address, "vif_uuid": vif.uuid,
                       "port_name": view.vif_port_name(vif.uuid), "network": net.cidr}
            now = models.utcnow()
            for other in session.scalars(select(models.FixedIp).where(
                    models.FixedIp.virtual_interface_id == vif.id)):
                self._deallocate_fixed_ip(session, other, now)
            session.flush()
            session.delete(vif)
            session.flush()
            return {"allocation": _allocation(session, inst, self.conf.ipv6_backend), "removed": removed}

    def add_network_to_project(self, project_id: str, network: str | None = None) -> dict:
        """nova's add_network_to_project (VLAN mode): give ``project_id`` one more network, the
        lowest one no project has, or ``network`` (label or CIDR, which must be free). Returns
        its network_dict. Raises Invalid (not VLAN mode), NoMoreNetworks, NetworkNotFound,
        NetworkAlreadyInProject."""
        validation.required(project_id, "a project", "--project")
        limits.check(models.Network, project_id=project_id)
        if not self.vlan_mode:
            raise exception.Invalid(f"network add-to-project applies to network_manager=vlan only, not "
                                    f"{self.conf.network_manager}: flat networks are shared by every project")
        with db.transaction(self.engine) as session:
            db.lock_key(session, db.LOCK_PROJECT_NETWORKS, project_id)   # as a first launch does
            if network is None:
                net = session.scalar(select(models.Network).where(models.Network.project_id.is_(None))
                                     .order_by(models.Network.id).limit(1).with_for_update(skip_locked=True))
                if net is None:
                    raise exception.NoMoreNetworks(project=project_id)
            else:
                net = _network_by_name(session, network)
                # its owner as of now, row-locked: two projects asking for it at once must not
                # both see it free (the second would overwrite the first's association)
                session.refresh(net, with_for_update=True)
                if net.project_id == project_id:
                    raise exception.NetworkAlreadyInProject(
                        network=f"{net.label} ({net.cidr})", project=project_id,
                        advice="name a network no project has, or none for the lowest free one")
                if net.project_id is not None:
                    raise exception.NetworkAlreadyInProject(
                        network=f"{net.label} ({net.cidr})", project=net.project_id,
                        advice=f"a VLAN network serves one project; name one no project has for {project_id}")
            net.project_id = project_id
            session.flush()
            return network_dict(net)

    def disassociate_project(self, cidr: str) -> dict:
        """nova's network disassociate (VLAN mode): the network of CIDR ``cidr`` belongs to no
        project any more (the next project to need one may get it). Returns its network_dict.
        Raises Invalid (not VLAN mode), NetworkNotFound, NetworkInUse (while any of its fixed
        IPs is allocated: the project's instances still use it)."""
        if not self.vlan_mode:
            raise exception.Invalid(f"network disassociate applies to network_manager=vlan only, not "
                                    f"{self.conf.network_manager}: flat networks belong to no project")
        with db.transaction(self.engine) as session:
            net = _idle_network(session, cidr)
            net.project_id = None
            session.flush()
            return network_dict(net)

    def list_leases(self, network: str | None = None) -> list[dict]:
        """DHCP leases held now (either backend records them in ``fixed_ips``): {network (cidr),
        label, address, mac, instance, hostname, lease_end (naive UTC ISO)}, for addresses a VIF
        still holds (a deallocated address awaiting release or expiry is not a lease any server
        renews; ``fixed list`` shows it). ``network``: label or CIDR. Raises NetworkNotFound."""
        with db.read_transaction(self.engine) as session:
            query = (select(models.FixedIp, models.Network, models.Instance, models.VirtualInterface.address)
                     .join(models.Network, models.FixedIp.network_id == models.Network.id)
                     .join(models.VirtualInterface, models.FixedIp.virtual_interface_id == models.VirtualInterface.id)
                     .outerjoin(models.Instance, models.FixedIp.instance_uuid == models.Instance.uuid)
                     .where(models.FixedIp.leased.is_(True), models.FixedIp.allocated.is_(True))
                     .order_by(models.FixedIp.id))
            if network is not None:
                query = query.where(models.FixedIp.network_id == _network_by_name(session, network).id)
            return [{"network": net.cidr, "label": net.label, "address": ip.address, "mac": mac,
                     "instance": inst.name if inst else None, "hostname": inst.hostname if inst else None,
                     "lease_end": _iso(leases.lease_end(ip.updated_at, ip.leased, self.conf.dhcp_lease_time))}
                    for ip, net, inst, mac in session.execute(query)]

    # -- DHCP lease events and the disassociation task ----------------------------------------

    def lease_fixed_ip(self, address: str, mac: str | None = None) -> None:
        """DHCP ACK sent for ``address`` (nova's dhcpbridge ``add``/``old``): mark it leased
        (``sdn.leases``). Raises FixedIpNotFound, FixedIpNotAssociated, FixedIpMacMismatch."""
        leases.one(self.engine, leases.LEASE, address, mac)

    def release_fixed_ip(self, address: str, mac: str | None = None) -> None:
        """DHCP lease of ``address`` released or expired (dhcpbridge ``del``): clear ``leased``,
        and disassociate the address if the instance no longer holds it (``sdn.leases``).
        Raises FixedIpNotFound, FixedIpNotAssociated, FixedIpMacMismatch."""
        leases.one(self.engine, leases.RELEASE, address, mac)

    def timeout_fixed_ips(self, now: datetime.datetime | None = None) -> int:
        """Disassociate fixed IPs deallocated and unleased for longer than
        fixed_ip_disassociate_timeout seconds before ``now`` (naive UTC). Returns how many."""
        now = now or models.utcnow()
        cutoff = now - datetime.timedelta(seconds=self.conf.fixed_ip_disassociate_timeout)
        with db.transaction(self.engine) as session:
            expired = list(session.scalars(select(models.FixedIp).where(
                models.FixedIp.allocated.is_(False), models.FixedIp.leased.is_(False),
                models.FixedIp.instance_uuid.is_not(None), models.FixedIp.updated_at < cutoff)))
            for ip in expired:
                ip.instance_uuid = None
                ip.host = None
                ip.updated_at = now
            return len(expired)


class FlatManager(NetworkManager):
    """No DHCP: fixed IPs are disassociated immediately on deallocation."""


class FlatDHCPManager(NetworkManager):
    dhcp = True


class VlanManager(NetworkManager):
    """One network per project; each VLAN network also reserves its cloudpipe VPN address
    (subnet[2]) and ``cnt_vpn_clients`` addresses below the broadcast."""

    dhcp = True
    vlan_mode = True
    bottom_reserved = NetworkManager.bottom_reserved + 1

    @property
    def top_reserved(self) -> int:
        return NetworkManager.top_reserved + self.conf.cnt_vpn_clients

    @staticmethod
    def _own_networks(session: Session, project_id: str) -> list[models.Network]:
        return list(session.scalars(select(models.Network).where(models.Network.project_id == project_id)
                                    .order_by(models.Network.id).execution_options(populate_existing=True)))

    def _candidate_networks(self, session: Session, project_id: str) -> list[models.Network]:
        """The project's networks; at its first instance, associate the lowest free network.

        The association is serialised per project, so simultaneous first launches of one
        project (several processes or hosts) end with one network, never one each: with no
        network yet, the transaction takes the project's advisory lock (``db.lock_key``, a
        no-op on SQLite whose BEGIN IMMEDIATE serialises every writer) and looks again before
        picking. Why this lock: the pick alone (``FOR UPDATE SKIP LOCKED``) lets each
        transaction take a different free network; locking the lowest free network without
        SKIP LOCKED would serialise the first launches of *every* new project on one row, and
        the waiter, seeing it taken, would move on to the next free network unless it also
        re-checked its project; a per-project row lock needs a projects table sdn does not
        have. The advisory lock serialises only launches of the same new project, costs one
        round trip and only while the project has no network, and ends with the transaction.
        """
        own = self._own_networks(session, project_id)
        if own:
            return own
        db.lock_key(session, db.LOCK_PROJECT_NETWORKS, project_id)
        own = self._own_networks(session, project_id)   # a launch that held the lock may have picked
        if own:
            return own
        free = session.scalar(select(models.Network).where(models.Network.project_id.is_(None))
                              .order_by(models.Network.id).limit(1).with_for_update(skip_locked=True))
        if free is None:
            raise exception.NoMoreNetworks(project=project_id)
        free.project_id = project_id
        session.flush()
        return [free]


MANAGERS = {"flat": FlatManager, "flatdhcp": FlatDHCPManager, "vlan": VlanManager}


def get_manager(engine: Engine, conf) -> NetworkManager:
    """The manager class named by ``conf.network_manager`` (flat, flatdhcp or vlan)."""
    return MANAGERS[conf.network_manager](engine, conf)


# -- helpers shared by the managers -------------------------------------------------------------

def free_fixed_ip_query(network_id: int):
    """The lowest unreserved, unassociated fixed IP of a network, row-locked for the caller.

    PostgreSQL renders ``FOR UPDATE SKIP LOCKED`` so concurrent allocators take different rows;
    SQLite ignores it and relies on the BEGIN IMMEDIATE write lock instead.
    """
    return (select(models.FixedIp)
            .where(models.FixedIp.network_id == network_id, models.FixedIp.reserved.is_(False),
                   models.FixedIp.allocated.is_(False), models.FixedIp.instance_uuid.is_(None))
            .order_by(models.FixedIp.id).limit(1).with_for_update(skip_locked=True))


def _free_fixed_ip(session: Session, network_id: int) -> models.FixedIp | None:
    return session.scalar(free_fixed_ip_query(network_id))


def _network_by_cidr(session: Session, cidr: str) -> models.Network:
    normal = validation.network_lookup(cidr)
    net = session.scalar(select(models.Network).where(models.Network.cidr == normal))
    if net is None:
        raise exception.NetworkNotFound(what=f"with CIDR {normal}")
    return net


def _idle_network(session: Session, cidr: str) -> models.Network:
    """The network of CIDR ``cidr`` if none of its fixed IPs is allocated. Raises
    NetworkNotFound, NetworkInUse."""
    net = _network_by_cidr(session, cidr)
    busy = session.scalar(select(func.count()).select_from(models.FixedIp).where(
        models.FixedIp.network_id == net.id, models.FixedIp.allocated.is_(True)))
    if busy:
        raise exception.NetworkInUse(cidr=net.cidr, count=busy)
    return net


def _network_by_name(session: Session, name: str) -> models.Network:
    """The network with label ``name``, or with CIDR ``name`` when it has a '/'. Raises
    NetworkNotFound, NetworkLabelAmbiguous."""
    name = validation.required(name, "a network (label or CIDR)", "--network")
    if "/" in name:
        return _network_by_cidr(session, name)
    nets = list(session.scalars(select(models.Network).where(models.Network.label == name)
                                .order_by(models.Network.id)))
    if not nets:
        raise exception.NetworkNotFound(what=f"labelled {name}")
    if len(nets) > 1:
        raise exception.NetworkLabelAmbiguous(label=name, count=len(nets),
                                              cidrs=", ".join(n.cidr for n in nets))
    return nets[0]


#: longest host name networks.host holds
MAX_HOST = 255


def network_host_name(host) -> str:
    """A network host's name as given (config ``host``, ``--host``). Raises Invalid when empty,
    longer than MAX_HOST or holding whitespace."""
    host = validation.required(host, "a network host's name", "--host")
    if len(host) > MAX_HOST or any(c.isspace() for c in host):
        raise exception.Invalid(f"network host name {host[:40]!r} is not usable: at most {MAX_HOST} "
                                "characters, no whitespace (the host option of that controller)")
    return host


def _claim(session: Session, network_ids: list[int], host: str) -> list[int]:
    """Set ``host`` on each of ``network_ids`` that has no host, one UPDATE ... WHERE host IS
    NULL each (a concurrent claimant's committed claim makes it match nothing: on PostgreSQL
    the UPDATE waits for that row lock and re-reads the row). Returns the ids set here."""
    won = []
    for network_id in network_ids:
        result = session.execute(update(models.Network)
                                 .where(models.Network.id == network_id, models.Network.host.is_(None))
                                 .values(host=host))
        if result.rowcount:
            won.append(network_id)
    return won


def _instance_by_name(session: Session, name: str) -> models.Instance:
    inst = session.scalar(select(models.Instance).where(models.Instance.name == name))
    if inst is None:
        raise exception.InstanceNotFound(name=name)
    return inst


#: most IPv6 DNS servers of a network (Neutron's max_dns_nameservers default is 5)
MAX_DNS_V6 = 5


@dataclass(frozen=True)
class Ipv6Settings:
    """What ``network create`` gives each new network on the IPv6 side (checked input)."""

    range: netaddr.IPNetwork
    gateway: str | None          # None: each /64's ::1
    gateway_source: str          # how to name it in a message
    mode: str                    # ipv6_ra_mode == ipv6_address_mode
    dns: tuple[str, ...]

    def apply(self, net: models.Network, subnet: netaddr.IPNetwork) -> None:
        """Give ``net`` the /64 ``subnet``. Raises Invalid when the gateway is not on it."""
        if self.gateway is not None:
            gw = netaddr.IPAddress(self.gateway)
            if gw not in subnet or gw == subnet.network:
                raise exception.Invalid(
                    f"{self.gateway_source} {self.gateway} is not a host address of network "
                    f"{net.label}'s /64 {subnet}; give an address inside it (one network per "
                    "command), or none for the /64's ::1")
        net.cidr_v6 = str(subnet)
        net.gateway_v6 = self.gateway or str(subnet[1])
        net.netmask_v6 = str(subnet.prefixlen)
        net.ipv6_ra_mode = net.ipv6_address_mode = self.mode
        net.dns_v6 = ",".join(self.dns) or None


def ipv6_settings(conf, cidr_v6: str | None = None, gateway_v6: str | None = None,
                  ipv6_ra_mode: str | None = None, ipv6_address_mode: str | None = None,
                  dns_v6: list[str] | None = None) -> Ipv6Settings | None:
    """Checked IPv6 options of ``network create`` with the config defaults filled in; None when
    the new networks get no IPv6 (no ``cidr_v6`` and use_ipv6 off). Raises Invalid /
    InvalidCidr / InvalidAddress naming the option and what is allowed: an IPv6 option without
    IPv6, a mode outside slaac | dhcpv6-stateless | dhcpv6-stateful, two different modes, and
    ipv6_backend account_identifier with a mode where guests form their own address (SLAAC)."""
    if cidr_v6 is None and conf.use_ipv6:
        cidr_v6 = conf.fixed_range_v6
    if cidr_v6 is None:
        given = [opt for opt, value in (("--gateway-v6", gateway_v6), ("--ipv6-ra-mode", ipv6_ra_mode),
                                         ("--ipv6-address-mode", ipv6_address_mode), ("--dns-v6", dns_v6))
                 if value is not None]
        if given:
            raise exception.Invalid(f"{', '.join(given)} need IPv6 on the new networks: give "
                                    "--fixed-range-v6 or set use_ipv6 = true")
        return None
    prefix = validation.ipv6_network(cidr_v6, "the IPv6 range (--fixed-range-v6)")
    for option, value in (("--ipv6-ra-mode", ipv6_ra_mode), ("--ipv6-address-mode", ipv6_address_mode)):
        if value is not None and value not in ipv6.MODES:
            raise exception.Invalid(f"{option} {value!r} is not an IPv6 mode; allowed values are "
                                    f"{', '.join(ipv6.MODES)}")
    if ipv6_ra_mode and ipv6_address_mode and ipv6_ra_mode != ipv6_address_mode:
        raise exception.Invalid(f"--ipv6-ra-mode {ipv6_ra_mode} and --ipv6-address-mode {ipv6_address_mode} "
                                "differ; sdn is always the router, give one of them or the same value")
    mode = ipv6_ra_mode or ipv6_address_mode or conf.ipv6_address_mode
    if conf.ipv6_backend == "account_identifier" and mode != "dhcpv6-stateful":
        raise exception.Invalid(f"ipv6_backend account_identifier addresses cannot be formed by SLAAC "
                                f"(guests form EUI-64 ones), so mode {mode} cannot hand them out; use "
                                "--ipv6-address-mode dhcpv6-stateful (or ipv6_backend rfc2462)")
    if gateway_v6 is not None:
        gateway, source = validation.ipv6_address(gateway_v6, "IPv6 gateway (--gateway-v6)"), "--gateway-v6"
    else:
        gateway, source = conf.gateway_v6, "gateway_v6 (config)"
    if dns_v6 is None:
        dns = tuple(conf.dns_v6)
    else:
        dns = tuple(dict.fromkeys(validation.ipv6_address(d, "IPv6 DNS server (--dns-v6)") for d in dns_v6))
    if len(dns) > MAX_DNS_V6:
        raise exception.Invalid(f"{len(dns)} IPv6 DNS servers given; at most {MAX_DNS_V6}")
    return Ipv6Settings(range=prefix, gateway=gateway, gateway_source=source, mode=mode, dns=dns)


def _iso(when: datetime.datetime | None) -> str | None:
    return when.isoformat(sep=" ", timespec="seconds") if when else None


def network_dict(net: models.Network) -> dict:
    """{id, label, cidr, netmask, gateway, broadcast, dhcp_start, dns1, dns2, vlan, bridge,
    bridge_interface, project_id, vpn_public_address, vpn_public_port, vpn_private_address,
    cidr_v6, gateway_v6, ipv6_ra_mode, ipv6_address_mode, dns_v6 (list), host (its network host, None until
    claimed), created_at,
    updated_at (naive UTC ISO 8601 text or None)}; the IPv6 keys are None ([] for dns_v6) on a
    network without a /64."""
    keys = ("id", "label", "cidr", "netmask", "gateway", "broadcast", "dhcp_start", "dns1", "dns2", "vlan",
            "bridge", "bridge_interface", "project_id", "vpn_public_address", "vpn_public_port",
            "vpn_private_address", "cidr_v6", "gateway_v6", "ipv6_ra_mode", "ipv6_address_mode", "host")
    return {**{k: getattr(net, k) for k in keys}, "dns_v6": list(db.split_list(net.dns_v6)),
            **{k: getattr(net, k).isoformat() if getattr(net, k) else None
               for k in ("created_at", "updated_at")}}


_VIF_KEYS = ("network_id", "cidr", "vlan", "vif_uuid", "mac", "address", "port_name", "gateway",
             "address_v6", "cidr_v6", "gateway_v6")


def _allocation(session: Session, inst: models.Instance, ipv6_backend: str = "rfc2462") -> dict:
    """{instance, instance_uuid, project, host, network_id, cidr, vlan, vif_uuid, mac, address,
    port_name, gateway, address_v6, cidr_v6, gateway_v6, vifs}: the VIF keys are the first
    VIF's (None if the instance has none); ``vifs`` lists every VIF, by id, with those keys and
    ``label``. ``address_v6`` is derived from the MAC (``sdn.ipv6.to_global`` with
    ``ipv6_backend``), None on a network without IPv6."""
    vifs = []
    for vif in session.scalars(select(models.VirtualInterface).where(
            models.VirtualInterface.instance_uuid == inst.uuid).order_by(models.VirtualInterface.id)):
        ip = session.scalar(select(models.FixedIp).where(models.FixedIp.virtual_interface_id == vif.id)
                            .order_by(models.FixedIp.id).limit(1))
        net = session.get(models.Network, vif.network_id)
        vifs.append({"network_id": net.id, "cidr": net.cidr, "vlan": net.vlan, "vif_uuid": vif.uuid,
                     "mac": vif.address, "address": ip.address if ip else None,
                     "port_name": view.vif_port_name(vif.uuid), "gateway": net.gateway, "label": net.label,
                     "address_v6": ipv6.vif_address(net.cidr_v6, vif.address, inst.project_id, ipv6_backend),
                     "cidr_v6": net.cidr_v6, "gateway_v6": net.gateway_v6})
    first = vifs[0] if vifs else dict.fromkeys(_VIF_KEYS)
    return {"instance": inst.name, "instance_uuid": inst.uuid, "project": inst.project_id, "host": inst.host,
            **{k: first[k] for k in _VIF_KEYS}, "vifs": vifs}


#: highest bandwidth limit, kbit/s (10 Gbit/s; OpenFlow meters and tc rates hold it)
MAX_KBPS = 10_000_000


def bandwidth_limits(rx_kbps: int | None, tx_kbps: int | None) -> tuple[int | None, int | None]:
    """Checked (rx, tx) limits in kbit/s: 0 (no limit) becomes None, None stays None. Raises
    Invalid for anything but a whole number within 0-MAX_KBPS."""
    out = []
    for value, option in ((rx_kbps, "--rx-kbps"), (tx_kbps, "--tx-kbps")):
        if value is not None:
            value = validation.count(value, f"{option} (kbit/s, 0 = unlimited)", minimum=0,
                                     maximum=MAX_KBPS) or None
        out.append(value)
    return out[0], out[1]


def rxtx_kbps(factor: float, base: int) -> int:
    """nova's rxtx_factor x rxtx_base, kbit/s (at least 1). Raises Invalid when ``base`` is 0
    (not configured) or ``factor`` is not positive."""
    if not base:
        raise exception.Invalid("--rxtx-factor needs rxtx_base (kbit/s for a factor of 1.0) in "
                                "the configuration; or give --rx-kbps/--tx-kbps")
    if not factor > 0:
        raise exception.Invalid(f"--rxtx-factor must be above 0, not {factor}")
    return min(MAX_KBPS, max(1, round(factor * base)))


def _bandwidth(inst: models.Instance) -> dict:
    return {"instance": inst.name, "rx_kbps": inst.rx_kbps, "tx_kbps": inst.tx_kbps}


def _vif_of(session: Session, instance_name: str) -> models.VirtualInterface:
    inst = _instance_by_name(session, instance_name)
    vif = session.scalar(select(models.VirtualInterface)
                         .where(models.VirtualInterface.instance_uuid == inst.uuid)
                         .order_by(models.VirtualInterface.id).limit(1))
    if vif is None:
        raise exception.InstanceHasNoVif(name=instance_name)
    return vif


def _port_security(vif: models.VirtualInterface, instance_name: str) -> dict:
    return {"instance": instance_name, "mac": vif.address, "port_security": vif.port_security,
            "allowed_address_pairs": [{"mac": p.mac, "ip": p.ip_cidr}
                                      for p in vif.allowed_address_pairs]}

