"""The remote-group ipsets of the security groups: read with ``ipset save``, changed with one
``ipset restore`` (creates, adds, deletes), and sets no rule uses any more destroyed *after*
the iptables rules referencing them are gone (the kernel refuses to destroy a set in use).

Pure text functions (``parse_save``, ``update_script``, ``stale_sets``) are unit-tested; the
two I/O functions take nova-style ``runner(argv, stdin) -> stdout``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from sdn.linux.iptables import Runner, run_command
from sdn.linux.iptables_firewall import IpSet

LOG = logging.getLogger("sdn.linux.ipset")


def parse_save(text: str) -> dict[str, tuple[str, set[str]]]:
    """``ipset save`` -> {set name: (family, members)} (family ``inet``/``inet6``)."""
    sets: dict[str, tuple[str, set[str]]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "create":
            family = parts[parts.index("family") + 1] if "family" in parts[:-1] else "inet"
            sets[parts[1]] = (family, set())
        elif len(parts) >= 3 and parts[0] == "add" and parts[1] in sets:
            sets[parts[1]][1].add(parts[2])
    return sets


def update_script(current: Mapping[str, tuple[str, set[str]]], desired: Mapping[str, IpSet]) -> str:
    """The ``ipset restore`` input creating missing sets and adding/deleting members (empty:
    nothing to do). Members are compared as ipset prints them (hosts without a prefix)."""
    lines = []
    for name, want in sorted(desired.items()):
        have = current.get(name)
        if have is None:
            lines.append(f"create {name} hash:net family {want.family}")
            have_members: set[str] = set()
        else:
            have_members = have[1]
        wanted = set(want.members)
        lines += [f"add {name} {m}" for m in sorted(wanted - have_members)]
        lines += [f"del {name} {m}" for m in sorted(have_members - wanted)]
    return "".join(line + "\n" for line in lines)


def stale_sets(current: Mapping[str, object], desired: Mapping[str, IpSet], prefix: str) -> list[str]:
    """Sets this binary owns (``prefix``) that no rule uses any more."""
    return sorted(n for n in current if n.startswith(prefix) and n not in desired)


def ensure(desired: Mapping[str, IpSet], prefix: str, runner: Runner = run_command) -> list[str]:
    """Create/fill the sets (before the iptables rules using them); returns change notes.
    Raises RuntimeError when sets are needed and the ``ipset`` command is missing."""
    try:
        saved = runner(["ipset", "save"], None)
    except FileNotFoundError:
        if not desired:
            return []
        raise RuntimeError("remote-group rules need the ipset command (Debian package ipset)") from None
    current = {n: v for n, v in parse_save(saved).items() if n.startswith(prefix)}
    script = update_script(current, desired)
    if not script:
        return []
    runner(["ipset", "restore", "-exist"], script)
    return [f"ipset {line}" for line in script.splitlines()]


def destroy_stale(desired: Mapping[str, IpSet], prefix: str, runner: Runner = run_command) -> list[str]:
    """Destroy the sets no rule uses (after the iptables apply); a refusal is logged and
    retried at the next reconcile."""
    try:
        saved = runner(["ipset", "save"], None)
    except FileNotFoundError:
        return []           # no ipset command: no set was ever made
    changes = []
    for name in stale_sets(parse_save(saved), desired, prefix):
        try:
            runner(["ipset", "destroy", name], None)
            changes.append(f"ipset destroy {name}")
        except RuntimeError as err:
            LOG.warning("could not destroy ipset %s (retrying later): %s", name, err)
    return changes
