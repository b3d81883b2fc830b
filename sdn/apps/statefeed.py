"""Which switches a batch of state changes concerns (the change feed, ``sdn.db.changes``).

A datapath must recompile when a change may alter what it holds. Cheap and conservative:
changes confined to some networks (rows of ``networks``, ``fixed_ips``,
``virtual_interfaces``) concern a datapath only if one of those networks is present on it
(a VIF of it plugged there), unless the datapath sees every network anyway (a transit switch
with two or more trunks, the router with the public port, a DHCP relay port) or has ports no
VIF is bound to yet (a VIF created for one of them would be new there), and unless some
security group rule names a remote group (its members' addresses, from any network, are in
the flows of every VIF the rule covers). Anything else (security
groups and rules, floating IPs, instances, provider rules, bulk statements) concerns every
datapath.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sdn.flows.context import Binding


def datapath_affected(binding: Binding | None, ports: Mapping[str, int],
                      touched_networks: set[int] | None, *, remote_groups: bool = False,
                      vif_port_prefix: str = "tap") -> bool:
    """True if a datapath with ``binding`` (its last compile's; None: never compiled) and
    ``ports`` (name -> ofport) must recompile after changes confined to ``touched_networks``
    (None: not confined, every datapath must); ``remote_groups``: some rule names a remote
    group."""
    if touched_networks is None or binding is None:
        return True
    if not touched_networks:
        return False
    if remote_groups or binding.public_port is not None or binding.relays \
            or len(binding.trunks) >= 2:
        return True
    bound = set(binding.vifs)
    if any(name.startswith(vif_port_prefix) and ofport not in bound
           for name, ofport in ports.items()):
        return True
    return bool(touched_networks & {vif.network_id for vif in binding.vifs.values()})


def touched(changes: Iterable) -> set[int] | None:
    """Network ids the changes are confined to (``sdn.db.changes.networks_touched``)."""
    from sdn.db.changes import networks_touched
    return networks_touched(changes)
