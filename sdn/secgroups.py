"""Security groups with nova's semantics (nova.compute.api.SecurityGroupAPI, Essex) plus
Neutron's direction/ethertype, and the operator's provider rules (nova ``provider_fw_rules``).

A project's groups have unique names; ``default`` is created on first use with nova's (and
Neutron's) defaults: no ingress rule (inbound new connections are dropped, but those from the
instance's own network while ``allow_same_net_traffic``), and egress allowed for IPv4 and IPv6.
Every new group starts the same way. Instances join groups at launch (``default`` unless told
otherwise) and by add/remove later; what a group means on the wire is ``sdn.firewall``.
Every operation is one transaction; a refused one changes nothing.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from sdn import exception, validation
from sdn.db import api as db
from sdn.db import models

DEFAULT = "default"
_PROTOCOL_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmpv6", 132: "sctp"}


def protocol_name(number: int | None) -> str:
    """``tcp`` for 6 ..., ``any`` for None, the number otherwise."""
    return "any" if number is None else _PROTOCOL_NAMES.get(number, str(number))


def describe_rule(rule: dict) -> str:
    """One line: ``ingress IPv4 tcp 22-22 from 10.0.0.0/8`` / ``... from group web``."""
    ports = ""
    if rule["port_min"] is not None or rule["port_max"] is not None:
        if rule["protocol"] in ("icmp", "icmpv6"):
            ports = f" type {rule['port_min']}" + (f" code {rule['port_max']}"
                                                   if rule["port_max"] is not None else "")
        else:
            ports = f" {rule['port_min']}-{rule['port_max']}"
    side = "from" if rule["direction"] == "ingress" else "to"
    remote = f"group {rule['remote_group']}" if rule["remote_group"] else rule["remote_cidr"]
    return f"{rule['direction']} {rule['ethertype']} {rule['protocol']}{ports} {side} {remote}"


def _find(session: Session, project_id: str, name: str) -> models.SecurityGroup | None:
    return session.scalar(select(models.SecurityGroup).where(
        models.SecurityGroup.project_id == project_id, models.SecurityGroup.name == name))


def _lock_name(session: Session, project_id: str, name: str) -> None:
    """Serialise with every transaction creating this group or changing its rules (``db.lock_key``):
    of two racing creators the second sees the first's group."""
    db.lock_key(session, db.LOCK_SECGROUP, f"{project_id}/{name}")


def _find_or_lock(session: Session, project_id: str, name: str) -> models.SecurityGroup | None:
    """The group, or None after taking its name's lock (so creating it cannot race)."""
    group = _find(session, project_id, name)
    if group is None:
        _lock_name(session, project_id, name)
        group = _find(session, project_id, name)
    return group


def ensure_default(session: Session, project_id: str) -> models.SecurityGroup:
    """The project's ``default`` group, created (with its egress rules) if missing."""
    group = _find_or_lock(session, project_id, DEFAULT)
    return group if group is not None else _new_group(session, DEFAULT, project_id, DEFAULT, True)


def ensure_vpn_group(session: Session, project_id: str) -> models.SecurityGroup:
    """nova cloudpipe's group for a project's VPN instance: ``<project>-vpn`` admitting
    OpenVPN (UDP 1194) and ICMP from anywhere (created on first use)."""
    name = project_id + "-vpn"
    group = _find_or_lock(session, project_id, name)
    if group is None:
        group = _new_group(session, name, project_id, "cloudpipe VPN", True)
        group.rules += [models.SecurityGroupRule(direction="ingress", ethertype="IPv4",
                                                 protocol=17, port_min=1194, port_max=1194),
                        models.SecurityGroupRule(direction="ingress", ethertype="IPv4",
                                                 protocol=1)]
        session.flush()
    return group


def _new_group(session: Session, name: str, project_id: str, description: str,
               stateful: bool) -> models.SecurityGroup:
    group = models.SecurityGroup(name=name, project_id=project_id, description=description,
                                 stateful=stateful)
    group.rules = [models.SecurityGroupRule(direction="egress", ethertype=e)
                   for e in validation.ETHERTYPES]
    session.add(group)
    session.flush()
    return group


def _group(session: Session, name: str, project_id: str) -> models.SecurityGroup:
    if name == DEFAULT:
        return ensure_default(session, project_id)
    group = _find(session, project_id, name)
    if group is None:
        raise exception.SecurityGroupNotFound(project=project_id, name=name)
    return group


def _members(session: Session, group_id: int) -> list[str]:
    return list(session.scalars(
        select(models.Instance.name).join(models.SecurityGroupInstance,
                                          models.SecurityGroupInstance.instance_uuid
                                          == models.Instance.uuid)
        .where(models.SecurityGroupInstance.security_group_id == group_id)
        .order_by(models.Instance.name)))


def _check_one_kind(session: Session, inst: models.Instance, groups: list) -> None:
    """Refuse stateful and stateless groups on one instance (Neutron does too: the
    connection tracking of one would admit what the other must check per packet)."""
    if len({g.stateful for g in groups}) > 1:
        raise exception.SecurityGroupMixed(instance=inst.name, groups=", ".join(
            f"{g.name} ({'stateful' if g.stateful else 'stateless'})" for g in groups))


def join_at_launch(session: Session, inst: models.Instance, names: list[str] | None) -> None:
    """Put a new instance in ``names`` (default: ``["default"]``) of its project."""
    names = [DEFAULT] if names is None else list(dict.fromkeys(names))
    groups = [_group(session, validation.secgroup_name(n), inst.project_id) for n in names]
    _check_one_kind(session, inst, groups)
    for g in groups:
        session.add(models.SecurityGroupInstance(security_group_id=g.id, instance_uuid=inst.uuid))


def rule_dict(rule: models.SecurityGroupRule, session: Session) -> dict:
    remote = session.get(models.SecurityGroup, rule.remote_group_id) if rule.remote_group_id else None
    return {"id": rule.id, "direction": rule.direction, "ethertype": rule.ethertype,
            "protocol": protocol_name(rule.protocol), "port_min": rule.port_min,
            "port_max": rule.port_max,
            "remote_cidr": None if remote else (rule.remote_cidr or
                                                ("0.0.0.0/0" if rule.ethertype == "IPv4" else "::/0")),
            "remote_group": remote.name if remote else None}


class SecurityGroups:
    """Security group and provider rule operations on ``engine``."""

    def __init__(self, engine, conf=None):
        self.engine = engine
        self.conf = conf

    # -- groups -------------------------------------------------------------------------------

    def create(self, name: str, project_id: str, description: str = "",
               stateful: bool = True) -> dict:
        """A new group with no ingress rule and egress allowed. Raises SecurityGroupExists."""
        validation.secgroup_name(name)
        validation.required(project_id, "a security group's project", "--project")
        with db.transaction(self.engine) as session:
            _lock_name(session, project_id, name)
            if _find(session, project_id, name) is not None:
                raise exception.SecurityGroupExists(project=project_id, name=name)
            group = _new_group(session, name, project_id, description or name, stateful)
            return self._describe(session, group)

    def delete(self, name: str, project_id: str) -> None:
        """Raises SecurityGroupNotFound, SecurityGroupInUse (``default``; instances in it;
        rules of other groups granting to it)."""
        with db.transaction(self.engine) as session:
            group = _group(session, name, project_id)
            if name == DEFAULT:
                raise exception.SecurityGroupInUse(
                    name=name, project=project_id, reason="the project's default group",
                    action="it cannot be deleted (empty its rules instead)")
            members = _members(session, group.id)
            if members:
                raise exception.SecurityGroupInUse(
                    name=name, project=project_id,
                    reason=f"in use by {len(members)} instance(s) ({', '.join(members[:5])})",
                    action="remove it from them first (sdn instance remove-secgroup)")
            granting = list(session.scalars(
                select(models.SecurityGroup.name).join(
                    models.SecurityGroupRule,
                    models.SecurityGroupRule.parent_group_id == models.SecurityGroup.id)
                .where(models.SecurityGroupRule.remote_group_id == group.id,
                       models.SecurityGroup.id != group.id).distinct()))
            if granting:
                raise exception.SecurityGroupInUse(
                    name=name, project=project_id,
                    reason=f"the remote group of rules in {', '.join(sorted(granting))}",
                    action="delete those rules first")
            session.delete(group)

    def list(self, project_id: str | None = None) -> list[dict]:
        with db.read_transaction(self.engine) as session:
            q = select(models.SecurityGroup).order_by(models.SecurityGroup.project_id,
                                                      models.SecurityGroup.name)
            if project_id is not None:
                q = q.where(models.SecurityGroup.project_id == project_id)
            return [self._describe(session, g) for g in session.scalars(q)]

    def show(self, name: str, project_id: str) -> dict:
        with db.transaction(self.engine) as session:   # may create ``default``
            return self._describe(session, _group(session, name, project_id))

    @staticmethod
    def _describe(session: Session, group: models.SecurityGroup) -> dict:
        return {"id": group.id, "name": group.name, "project": group.project_id,
                "description": group.description, "stateful": group.stateful,
                "rules": [rule_dict(r, session) for r in group.rules],
                "instances": _members(session, group.id)}

    # -- rules --------------------------------------------------------------------------------

    def _rule_spec(self, session: Session, group: models.SecurityGroup, *, direction, ethertype,
                   protocol, from_port, to_port, cidr, remote_group) -> dict:
        direction = validation.direction(direction or "ingress")
        proto = validation.protocol(protocol)
        if cidr not in (None, "") and remote_group not in (None, ""):
            raise exception.Invalid("give a remote CIDR or a remote group, not both")
        if ethertype in (None, ""):
            ethertype = ("IPv6" if proto == 58 or (cidr and ":" in str(cidr)) else "IPv4")
        ether = validation.ethertype(ethertype)
        validation.rule_protocol_family(proto, ether)
        port_min, port_max = validation.rule_ports(proto, from_port, to_port)
        remote_id = None
        remote_cidr = None
        if remote_group not in (None, ""):
            remote = session.scalar(select(models.SecurityGroup).where(
                models.SecurityGroup.name == remote_group,
                models.SecurityGroup.project_id == group.project_id))
            if remote is None:
                other = session.scalar(select(models.SecurityGroup.project_id).where(
                    models.SecurityGroup.name == remote_group).limit(1))
                if other is not None:
                    raise exception.SecurityGroupCrossProject(name=remote_group, owner=other,
                                                              project=group.project_id)
                if remote_group != DEFAULT:
                    raise exception.SecurityGroupNotFound(project=group.project_id,
                                                          name=remote_group)
                remote = ensure_default(session, group.project_id)
            remote_id = remote.id
        else:
            remote_cidr = validation.rule_cidr(cidr, ether) if cidr not in (None, "") else None
            if remote_cidr in ("0.0.0.0/0", "::/0"):
                remote_cidr = None
        return dict(direction=direction, ethertype=ether, protocol=proto, port_min=port_min,
                    port_max=port_max, remote_cidr=remote_cidr, remote_group_id=remote_id)

    @staticmethod
    def _same(rule: models.SecurityGroupRule, spec: dict) -> bool:
        return all(getattr(rule, k) == v for k, v in spec.items())

    def add_rule(self, group_name: str, project_id: str, *, direction=None, ethertype=None,
                 protocol=None, from_port=None, to_port=None, cidr=None,
                 remote_group=None) -> dict:
        """Add an allow rule to a group. nova's form is ``protocol/from_port/to_port`` and a
        ``cidr`` or ``remote_group`` (ingress); Neutron's adds ``direction`` and
        ``ethertype``. No remote means everyone (0.0.0.0/0 or ::/0). Raises Invalid (unknown
        protocol, bad ports), SecurityGroupNotFound, SecurityGroupCrossProject,
        SecurityGroupRuleExists. Returns the rule as a dict."""
        with db.transaction(self.engine) as session:
            _lock_name(session, project_id, group_name)   # a racing identical rule waits, then is refused
            group = _group(session, group_name, project_id)
            spec = self._rule_spec(session, group, direction=direction, ethertype=ethertype,
                                   protocol=protocol, from_port=from_port, to_port=to_port,
                                   cidr=cidr, remote_group=remote_group)
            for rule in group.rules:
                if self._same(rule, spec):
                    raise exception.SecurityGroupRuleExists(name=group.name, rule_id=rule.id)
            rule = models.SecurityGroupRule(**spec)
            group.rules.append(rule)
            session.flush()
            return {**rule_dict(rule, session), "group": group.name}

    def delete_rule(self, group_name: str, project_id: str, rule_id: int | None = None,
                    **spec) -> dict:
        """Delete a rule of a group, by id or by the same fields ``add_rule`` takes. Raises
        SecurityGroupNotFound, SecurityGroupRuleNotFound."""
        with db.transaction(self.engine) as session:
            group = _group(session, group_name, project_id)
            if rule_id is not None:
                found = [r for r in group.rules if r.id == rule_id]
                what = f"{rule_id} in group {group.name!r}"
            else:
                wanted = self._rule_spec(session, group, **{
                    k: spec.get(k) for k in ("direction", "ethertype", "protocol", "from_port",
                                             "to_port", "cidr", "remote_group")})
                found = [r for r in group.rules if self._same(r, wanted)]
                what = f"like that in group {group.name!r}"
            if not found:
                raise exception.SecurityGroupRuleNotFound(what=what)
            out = {**rule_dict(found[0], session), "group": group.name}
            group.rules.remove(found[0])
            return out

    # -- membership ---------------------------------------------------------------------------

    def add_instance(self, instance_name: str, group_name: str) -> list[str]:
        """Put an instance in one more group of its project; returns its groups."""
        with db.transaction(self.engine) as session:
            db.lock_key(session, db.LOCK_INSTANCE, instance_name)   # two racing adds: one row
            inst = _instance(session, instance_name)
            group = _group(session, group_name, inst.project_id)
            groups = self._groups_of(session, inst)
            if group.id not in {g.id for g in groups}:
                _check_one_kind(session, inst, groups + [group])
                session.add(models.SecurityGroupInstance(security_group_id=group.id,
                                                         instance_uuid=inst.uuid))
                groups.append(group)
            return sorted(g.name for g in groups)

    def remove_instance(self, instance_name: str, group_name: str) -> list[str]:
        """Take an instance out of a group; returns its groups. An instance in no group gets
        nothing in but DHCP and its own connections' replies, as a Neutron port with port
        security and no group. Raises SecurityGroupRuleNotFound-like errors for a group the
        instance is not in."""
        with db.transaction(self.engine) as session:
            inst = _instance(session, instance_name)
            group = _group(session, group_name, inst.project_id)
            link = session.scalar(select(models.SecurityGroupInstance).where(
                models.SecurityGroupInstance.instance_uuid == inst.uuid,
                models.SecurityGroupInstance.security_group_id == group.id))
            if link is None:
                raise exception.Invalid(f"instance {instance_name} is not in security group "
                                        f"{group_name!r}")
            session.delete(link)
            session.flush()
            return sorted(g.name for g in self._groups_of(session, inst))

    def groups_of(self, instance_name: str) -> list[str]:
        with db.read_transaction(self.engine) as session:
            return sorted(g.name for g in self._groups_of(session, _instance(session, instance_name)))

    @staticmethod
    def _groups_of(session: Session, inst: models.Instance) -> list[models.SecurityGroup]:
        return list(session.scalars(
            select(models.SecurityGroup).join(models.SecurityGroupInstance,
                                              models.SecurityGroupInstance.security_group_id
                                              == models.SecurityGroup.id)
            .where(models.SecurityGroupInstance.instance_uuid == inst.uuid)
            .order_by(models.SecurityGroup.id)))

    # -- provider rules -----------------------------------------------------------------------

    @staticmethod
    def _provider_spec(protocol, from_port, to_port, cidr) -> dict:
        if cidr in (None, ""):
            raise exception.Invalid("a provider rule needs --cidr (the sources it drops)")
        cidr = validation.rule_cidr(cidr)
        proto = validation.protocol(protocol)
        validation.rule_protocol_family(proto, "IPv6" if ":" in cidr else "IPv4")
        port_min, port_max = validation.rule_ports(proto, from_port, to_port)
        return dict(protocol=proto, port_min=port_min, port_max=port_max, cidr=cidr)

    def add_provider_rule(self, protocol=None, from_port=None, to_port=None, cidr=None) -> dict:
        """Drop inbound new connections from ``cidr`` (protocol/ports as a group rule) to every
        instance, before any tenant rule. Raises Invalid, ProviderRuleExists."""
        spec = self._provider_spec(protocol, from_port, to_port, cidr)
        with db.transaction(self.engine) as session:
            db.lock_key(session, db.LOCK_PROVIDER_RULES, "")
            for rule in session.scalars(select(models.ProviderFirewallRule)):
                if all(getattr(rule, k) == v for k, v in spec.items()):
                    raise exception.ProviderRuleExists(rule_id=rule.id)
            rule = models.ProviderFirewallRule(**spec)
            session.add(rule)
            session.flush()
            return _provider_dict(rule)

    def delete_provider_rule(self, rule_id: int | None = None, **spec) -> dict:
        with db.transaction(self.engine) as session:
            if rule_id is not None:
                rule = session.get(models.ProviderFirewallRule, rule_id)
                what = str(rule_id)
            else:
                wanted = self._provider_spec(**spec)
                rule = next((r for r in session.scalars(select(models.ProviderFirewallRule))
                             if all(getattr(r, k) == v for k, v in wanted.items())), None)
                what = "like that"
            if rule is None:
                raise exception.ProviderRuleNotFound(what=what)
            out = _provider_dict(rule)
            session.delete(rule)
            return out

    def list_provider_rules(self) -> list[dict]:
        with db.read_transaction(self.engine) as session:
            return [_provider_dict(r) for r in session.scalars(
                select(models.ProviderFirewallRule).order_by(models.ProviderFirewallRule.id))]


def _provider_dict(rule: models.ProviderFirewallRule) -> dict:
    return {"id": rule.id, "protocol": protocol_name(rule.protocol), "port_min": rule.port_min,
            "port_max": rule.port_max, "cidr": rule.cidr}


def _instance(session: Session, name: str) -> models.Instance:
    inst = session.scalar(select(models.Instance).where(models.Instance.name == name))
    if inst is None:
        raise exception.InstanceNotFound(name=name)
    return inst
