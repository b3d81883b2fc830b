"""Errors an operator can act on.

Every message says what is wrong and what is allowed. ``exit_code`` is what the CLI returns:
2 for bad input (usage), 1 for an operation the current state refuses.
"""

from __future__ import annotations


class SdnError(Exception):
    """Base class; ``str(err)`` is a complete one-line message for the operator."""

    exit_code = 1
    msg_fmt = "an unknown error occurred"

    def __init__(self, message: str | None = None, **kwargs):
        self.kwargs = kwargs
        super().__init__(message if message is not None else self.msg_fmt.format(**kwargs))


class Invalid(SdnError):
    """Input that can never succeed, whatever the state: a usage error."""

    exit_code = 2


class ConfigError(Invalid):
    msg_fmt = "invalid value {value!r} for option [{group}] {name}: {allowed}"


class FieldTooLong(Invalid):
    msg_fmt = "{field} is {length} characters long; at most {limit} are allowed"


class InvalidCidr(Invalid):
    msg_fmt = "invalid CIDR {cidr!r}: {reason}"


class VlanOutOfRange(Invalid):
    msg_fmt = "{reason}; VLAN ids must be within 1-4094"


class CidrConflict(SdnError):
    msg_fmt = "requested CIDR {cidr} overlaps existing network {existing} ({label}); choose a range that does not overlap"


class Ipv6RangeFull(SdnError):
    msg_fmt = ("the IPv6 range {range} has {free} free /64s, {count} needed (used by {used}); "
               "give another --fixed-range-v6 or a larger fixed_range_v6")


class VlanInUse(SdnError):
    msg_fmt = "VLAN {vlan} is already used by network {cidr} ({label}); choose another --vlan"


class NetworkNotFound(SdnError):
    msg_fmt = "no network {what}; see 'sdn network list'"


class NetworkInUse(SdnError):
    msg_fmt = "network {cidr} still has {count} allocated fixed IP(s); delete those instances first"


class NoNetworks(SdnError):
    msg_fmt = "no networks exist; create one with 'sdn network create'"


class NoMoreNetworks(SdnError):
    msg_fmt = ("no unassigned network left for project {project}; every network already belongs to a "
               "project, create more with 'sdn network create'")


class NoMoreFixedIps(SdnError):
    msg_fmt = "no free fixed IP left in {where}; release addresses or create a larger network"


class FixedIpNotFound(SdnError):
    msg_fmt = "no fixed IP {address} exists in any network"


class FixedIpNotAssociated(SdnError):
    msg_fmt = "fixed IP {address} was {event} but is not associated with any instance; the event is ignored"


class AddressAlreadyAllocated(SdnError):
    msg_fmt = "fixed IP {address} is already allocated to instance {instance}"


class FixedIpMacMismatch(SdnError):
    msg_fmt = "fixed IP {address} belongs to MAC {expected}, not {mac}; the lease event is ignored"


class VirtualInterfaceMacAddressException(SdnError):
    msg_fmt = "could not generate a unique MAC address after {attempts} attempts; raise create_unique_mac_address_attempts"


class InvalidInstanceName(Invalid):
    msg_fmt = "invalid instance name {name!r}: use letters, digits, '-' or '_' (up to 63 characters)"


class InstanceNotFound(SdnError):
    msg_fmt = "no instance named {name}; see 'sdn fixed list'"


class InstanceProjectMismatch(SdnError):
    msg_fmt = "instance {name} already exists in project {existing}, not {project}; use another name"


class InstanceNotInProject(SdnError):
    msg_fmt = ("instance {name} belongs to project {existing}, not {project}; a project's floating IP "
               "can only be associated with that project's own instances")


class HostnameInUse(SdnError):
    msg_fmt = ("instance name {name} gives hostname {hostname}, which instance {existing} already has "
               "(names differing only in case, '_', '.' or trailing '-' share a hostname); use another name")


class InvalidAddress(Invalid):
    msg_fmt = "invalid {what} {value!r}: expected {allowed}"


class FloatingRangeConflict(SdnError):
    msg_fmt = ("{new} overlaps {existing}; an address cannot be both a fixed IP and a floating IP, "
               "choose a range that does not overlap")


class BridgeNotFound(SdnError):
    msg_fmt = "no Open vSwitch bridge {bridge}; name an existing bridge ({existing}) or create it first"


class PortNotCreated(SdnError):
    msg_fmt = ("Open vSwitch could not attach device {port} to {bridge} ({reason}); the port was removed. "
               "Create the device first (e.g. a veth or tap end named {port}) or pass --internal")


class DatabaseMissing(SdnError):
    msg_fmt = "no sdn database at {url}{detail}; create it with 'sdn db sync'"


class DatabasePermission(SdnError):
    msg_fmt = ("database {url} cannot be {access} by this user ({reason}); check the permissions of the "
               "file and its directory, or run as the user that owns them")


class DatabaseLocked(SdnError):
    msg_fmt = ("database {url} is locked by another process ({reason}); wait for that command to finish "
               "and try again")


class DatabaseUnusable(SdnError):
    msg_fmt = "database {url} is not usable ({reason}); check [database] connection"


class OvsError(SdnError):
    msg_fmt = "Open vSwitch refused {what}: {reason}"


class InvalidMac(Invalid):
    msg_fmt = "invalid MAC address {mac!r}: {reason}"


class AddressPairExists(SdnError):
    msg_fmt = "instance {name} already allows {mac} {ip}; see 'sdn instance show {name}'"


class AddressPairNotFound(SdnError):
    msg_fmt = "instance {name} has no allowed address pair {mac} {ip}; see 'sdn instance show {name}'"


class InstanceHasNoVif(SdnError):
    msg_fmt = "instance {name} has no virtual interface; launch it with 'sdn instance launch'"


class FloatingIpExists(SdnError):
    msg_fmt = "floating range {range} overlaps existing {existing}; nothing was added, choose addresses not yet in use"


class FloatingIpNotFound(SdnError):
    msg_fmt = "no floating IP {address}; see 'sdn floating list'"


class FloatingIpInUse(SdnError):
    msg_fmt = "floating IP {address} is associated; disassociate it before you {action} it"


class NoMoreFloatingIps(SdnError):
    msg_fmt = "no free floating IP left in pool {pool}; add some with 'sdn floating create'"


class FloatingIpNotAllocated(SdnError):
    msg_fmt = "floating IP {address} is not allocated to project {project}"


class FloatingIpNotAssociated(SdnError):
    msg_fmt = "floating IP {address} is not associated with a fixed IP"


class NoVpnNetwork(SdnError):
    msg_fmt = "project {project} has no VLAN network with a VPN; launch an instance in it first"


class SecurityGroupNotFound(SdnError):
    msg_fmt = "project {project} has no security group {name!r}; see 'sdn secgroup list'"


class SecurityGroupExists(SdnError):
    msg_fmt = "project {project} already has a security group {name!r}"


class SecurityGroupInUse(SdnError):
    msg_fmt = "security group {name!r} of project {project} is {reason}; {action}"


class SecurityGroupRuleNotFound(SdnError):
    msg_fmt = "no such rule {what}; see 'sdn secgroup show'"


class SecurityGroupRuleExists(SdnError):
    msg_fmt = "security group {name!r} already has this rule (id {rule_id})"


class SecurityGroupCrossProject(SdnError):
    msg_fmt = ("security group {name!r} belongs to project {owner}, not {project}; a rule may "
               "only grant to groups of its own project")


class SecurityGroupMixed(SdnError):
    msg_fmt = ("instance {instance} would be in stateful and stateless security groups "
               "({groups}); use one kind per instance")


class ProviderRuleNotFound(SdnError):
    msg_fmt = "no provider rule {what}; see 'sdn provider-rule list'"


class ProviderRuleExists(SdnError):
    msg_fmt = "this provider rule exists already (id {rule_id})"


class NetworkLabelAmbiguous(SdnError):
    msg_fmt = "network label {label} names {count} networks ({cidrs}); give the network's CIDR instead"


class NetworkNotUsable(SdnError):
    msg_fmt = "network {network} {reason}; project {project} may use: {allowed}"


class InstanceHasVifOnNetwork(SdnError):
    msg_fmt = ("instance {name} already has a VIF on network {network} (address {address}); "
               "add a fixed IP on another network, or remove that one first")


class FixedIpNotOfInstance(SdnError):
    msg_fmt = "fixed IP {address} is not allocated to instance {name}; its addresses are: {allowed}"


class LastVifOfInstance(SdnError):
    msg_fmt = ("fixed IP {address} is on the last VIF of instance {name}; an instance keeps at least "
               "one VIF: delete the instance instead ('sdn instance delete {name}')")


class NetworkAlreadyInProject(SdnError):
    msg_fmt = "network {network} already belongs to project {project}; {advice}"


class FloatingIpNotOfInstance(SdnError):
    msg_fmt = ("floating IP {address} is associated with {actual}, not with instance {name}; "
               "see 'sdn floating list'")
