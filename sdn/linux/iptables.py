"""nova's IptablesManager, rebuilt: wrapped chains kept in memory, applied atomically.

Design (nova ``linux_net.IptablesManager``, FIELD-NOTES §3):

* Every chain sdn creates is *wrapped* with the binary name: chain ``snat`` becomes
  ``sdn-agent-snat``. The built-in chains are wrapped too (``sdn-agent-FORWARD``) and jumped to
  from the real built-in chain, so sdn never has to touch a foreign rule.
* Unwrapped chains shared by every sdn binary: ``sdn-filter-top`` (jumped to first from FORWARD
  and OUTPUT) and ``sdn-postrouting-bottom`` (jumped to from POSTROUTING, runs ``$snat``).
* ``$name`` in a rule expands to the wrapped chain name (``-j $snat`` -> ``-j sdn-agent-snat``).
* ``apply()`` reads the table with ``iptables-save -c``, drops every line sdn owns (its chains,
  rules in them, jumps to them), inserts the desired chains and rules (de-duplicated), and
  writes the table back with **one** ``iptables-restore -c`` per table, under a lock. Rules sdn
  does not own are written back unchanged, counters included. If the table already holds
  exactly the desired rules nothing is written (a restarted agent changes nothing).
* Removing a rule or a chain from the manager removes exactly it at the next ``apply()``,
  because ownership is by chain name, not by remembering what was written.

The text transformation (``rewrite_table``) is pure and unit-tested; the same class drives
``ebtables-save``/``ebtables-restore`` (same dump format) for the anti-spoof chains.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

LOG = logging.getLogger("sdn.linux.iptables")

#: nova: binary_name = basename(argv[0])[:16]; sdn's data plane process is ``sdn agent``.
BINARY_NAME = "sdn-agent"
MAX_BINARY_NAME = 16


@dataclass(frozen=True)
class Rule:
    chain: str      #: chain name as given (unwrapped name when wrap=True)
    rule: str       #: rule body after ``-A CHAIN`` ($name expanded at render time)
    wrap: bool = True
    top: bool = False


@dataclass
class Table:
    """Desired chains and rules of one table (in memory only)."""

    name: str
    builtin_chains: tuple[str, ...]
    binary_name: str = BINARY_NAME
    chains: list[str] = field(default_factory=list)            #: wrapped chains (short names)
    unwrapped_chains: list[str] = field(default_factory=list)  #: shared chains (full names)
    rules: list[Rule] = field(default_factory=list)
    #: the rules ever added (a superset of ``rules``): add_rule's duplicate check without a
    #: scan of ``rules`` -- security groups make tens of thousands of rules on a busy host
    _added: set = field(default_factory=set, repr=False, compare=False)

    def wrapped(self, chain: str) -> str:
        return f"{self.binary_name}-{chain}"

    def add_chain(self, name: str, wrap: bool = True) -> None:
        target = self.chains if wrap else self.unwrapped_chains
        if name not in target:
            target.append(name)

    def remove_chain(self, name: str, wrap: bool = True) -> None:
        """Remove the chain, its rules and every rule jumping to it (nova semantics)."""
        target = self.chains if wrap else self.unwrapped_chains
        if name not in target:
            return
        full = self.wrapped(name) if wrap else name
        self.rules = [r for r in self.rules
                      if not (r.chain == name and r.wrap == wrap)
                      and full not in _targets(self._expand(r.rule))]
        target.remove(name)

    def add_rule(self, chain: str, rule: str, wrap: bool = True, top: bool = False) -> None:
        if wrap and chain not in self.chains:
            raise ValueError(f"unknown chain {chain!r} in table {self.name}; add_chain it first")
        if not wrap and chain not in self.unwrapped_chains and chain not in self.builtin_chains:
            raise ValueError(f"unknown unwrapped chain {chain!r} in table {self.name}")
        r = Rule(chain, rule, wrap, top)
        if r in self._added and r in self.rules:     # de-duplicated in memory
            return
        self._added.add(r)
        self.rules.append(r)

    def remove_rule(self, chain: str, rule: str, wrap: bool = True, top: bool = False) -> None:
        with contextlib.suppress(ValueError):
            self.rules.remove(Rule(chain, rule, wrap, top))

    def empty_chain(self, chain: str, wrap: bool = True) -> None:
        self.rules = [r for r in self.rules if not (r.chain == chain and r.wrap == wrap)]

    # -- rendering ------------------------------------------------------------------------

    def _expand(self, text: str) -> str:
        """``$name`` -> wrapped chain name, for every chain of this table (a ``$`` word that
        names no chain of the table stays as it is)."""
        if "$" not in text:
            return text
        chains = set(self.chains)
        return _DOLLAR_WORD.sub(lambda m: self.wrapped(m.group(1)) if m.group(1) in chains
                                else m.group(0), text)

    def owned_chains(self) -> list[str]:
        return [self.wrapped(c) for c in self.chains] + list(self.unwrapped_chains)

    def rendered_rules(self) -> list[tuple[str, str, bool]]:
        """(full chain, expanded rule, top) in insertion order, de-duplicated."""
        out, seen = [], set()
        for r in self.rules:
            chain = self.wrapped(r.chain) if r.wrap else r.chain
            item = (chain, " ".join(self._expand(r.rule).split()), r.top)
            if (item[0], item[1]) not in seen:
                seen.add((item[0], item[1]))
                out.append(item)
        return out


_DOLLAR_WORD = re.compile(r"\$(\S+)")


def _targets(rule: str) -> set[str]:
    tokens = rule.split()
    return {tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t in ("-j", "--jump", "-g", "--goto")}


def _split_rule(line: str) -> tuple[str | None, str, str]:
    """``[p:b] -A CHAIN body`` -> (counters or None, CHAIN, body)."""
    counters = None
    if line.startswith("["):
        counters, _, line = line.partition(" ")
    parts = line.split(None, 2)
    return counters, parts[1], (parts[2] if len(parts) > 2 else "")


def rewrite_table(saved: str, table: Table, *, prefix: str, chain_policy: str = "- [0:0]",
                  counters: bool = True) -> str:
    """The new dump of ``table.name``: ``saved`` minus everything sdn owns, plus ``table``'s
    chains and rules. ``prefix`` identifies sdn's chains (``sdn-``): any chain named
    ``<prefix>...`` is sdn's, so chains of an older configuration are removed too.

    Order inside a built-in chain: sdn's ``top`` rules, then the foreign rules, then sdn's other
    rules. ``saved`` is one table's section of a ``*-save -c`` dump (other sections ignored).
    ``counters`` False writes no ``[packets:bytes]`` prefixes (ebtables-restore has no ``-c``).
    """
    def ours(chain: str) -> bool:
        return chain.startswith(prefix)

    decls: list[str] = []          # foreign (and built-in) chain declarations, in order
    foreign: dict[str, list[str]] = {}
    in_table = False
    for raw in saved.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            in_table = line[1:] == table.name
            continue
        if not in_table:
            continue
        if line == "COMMIT":
            in_table = False
            continue
        if line.startswith(":"):
            name = line[1:].split()[0]
            if not ours(name):
                decls.append(line)
                foreign.setdefault(name, [])
            continue
        count, chain, body = _split_rule(line)
        if ours(chain) or any(ours(t) for t in _targets(body)):
            continue
        keep = f"{count} " if count and counters else ""
        foreign.setdefault(chain, []).append(f"{keep}-A {chain} {body}".rstrip())

    desired = table.rendered_rules()
    out = [f"*{table.name}"] + decls
    out += [f":{c} {chain_policy}" for c in table.owned_chains()]
    chains_in_order = [d[1:].split()[0] for d in decls] + table.owned_chains()
    zero = "[0:0] " if counters else ""
    by_chain: dict[str, list[tuple[str, bool]]] = {}
    for c, body, top in desired:
        by_chain.setdefault(c, []).append((body, top))
    for chain in chains_in_order:
        mine = by_chain.get(chain, [])
        out += [f"{zero}-A {chain} {body}" for body, top in mine if top]
        out += foreign.get(chain, [])
        out += [f"{zero}-A {chain} {body}" for body, top in mine if not top]
    out.append("COMMIT")
    return "\n".join(out) + "\n"


def table_signature(dump: str, table: str) -> dict[str, tuple[str, ...]]:
    """{chain: rule bodies in order} of one table of a dump, counters and comments ignored
    (used to decide whether a rewrite would change anything)."""
    sig: dict[str, list[str]] = {}
    in_table = False
    for raw in dump.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            in_table = line[1:] == table
        elif not in_table or not line or line.startswith("#") or line == "COMMIT":
            continue
        elif line.startswith(":"):
            sig.setdefault(line[1:].split()[0], [])
        else:
            _, chain, body = _split_rule(line)
            sig.setdefault(chain, []).append(" ".join(body.split()))
    return {k: tuple(v) for k, v in sig.items()}


Runner = Callable[[Sequence[str], str | None], str]


def run_command(argv: Sequence[str], stdin: str | None = None) -> str:
    """Run argv (optionally feeding ``stdin``); return stdout; raise RuntimeError with stderr."""
    proc = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


class _Family:
    def __init__(self, save: str, restore: str, tables: dict[str, Table], chain_policy: str,
                 iptables: bool):
        self.save, self.restore, self.tables = save, restore, tables
        #: iptables-restore takes -c (counters) and -w (xtables lock); ebtables-restore neither
        self.chain_policy, self.iptables = chain_policy, iptables

    def rewrite(self, saved: str, name: str) -> str:
        return rewrite_table(saved, self.tables[name], prefix="sdn-", chain_policy=self.chain_policy,
                             counters=self.iptables)

    def restore_argv(self) -> list[str]:
        return [self.restore, "-c", "-w", "10"] if self.iptables else [self.restore]


_THREAD_LOCK = threading.Lock()


class IptablesManager:
    """IPv4 (filter, nat, raw) and IPv6 (filter, raw) tables with nova's wrapped layout, plus an
    optional ebtables nat table (``ebtables=True``) for per-VIF anti-spoof chains.

    ``runner(argv, stdin) -> stdout`` runs the save/restore commands (tests pass a fake);
    ``lock_file`` serialises ``apply()`` between processes (nova's ``iptables`` lock).
    """

    def __init__(self, binary_name: str = BINARY_NAME, *, use_ipv6: bool = True, ebtables: bool = False,
                 runner: Runner = run_command, lock_file: str | None = None):
        if len(binary_name) > MAX_BINARY_NAME:
            raise ValueError(f"binary name {binary_name!r} is longer than {MAX_BINARY_NAME} characters")
        self.binary_name = binary_name
        self.runner = runner
        self.lock_file = lock_file
        # raw: the security groups' conntrack zones (sdn.linux.iptables_firewall)
        self.ipv4 = {"filter": Table("filter", ("INPUT", "OUTPUT", "FORWARD"), binary_name),
                     "nat": Table("nat", ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"), binary_name),
                     "raw": Table("raw", ("PREROUTING", "OUTPUT"), binary_name)}
        self.ipv6 = {"filter": Table("filter", ("INPUT", "OUTPUT", "FORWARD"), binary_name),
                     "raw": Table("raw", ("PREROUTING", "OUTPUT"), binary_name)}
        self.ebtables = {"nat": Table("nat", ("PREROUTING", "OUTPUT", "POSTROUTING"), binary_name)}
        self._families = [_Family("iptables-save", "iptables-restore", self.ipv4, "- [0:0]", True)]
        if use_ipv6:
            self._families.append(_Family("ip6tables-save", "ip6tables-restore", self.ipv6, "- [0:0]", True))
        if ebtables:
            self._families.append(_Family("ebtables-save", "ebtables-restore", self.ebtables, "RETURN", False))
        self.reset()

    def reset(self) -> None:
        """Back to nova's skeleton: wrapped built-ins jumped to from the real ones, the shared
        top/bottom chains and ``snat``/``float-snat`` -- no other rules."""
        for tables in (self.ipv4, self.ipv6):
            for table in tables.values():
                table.chains.clear()
                table.unwrapped_chains.clear()
                table.rules.clear()
                for chain in table.builtin_chains:
                    if table.name == "nat" and chain == "INPUT":
                        continue        # nova never wrapped nat INPUT
                    table.add_chain(chain)
                    table.add_rule(chain, f"-j ${chain}", wrap=False, top=True)
            filt = tables["filter"]
            filt.add_chain("sdn-filter-top", wrap=False)
            filt.add_rule("FORWARD", "-j sdn-filter-top", wrap=False, top=True)
            filt.add_rule("OUTPUT", "-j sdn-filter-top", wrap=False, top=True)
            filt.add_chain("local")
            filt.add_rule("sdn-filter-top", "-j $local", wrap=False)
        nat = self.ipv4["nat"]
        nat.add_chain("sdn-postrouting-bottom", wrap=False)
        nat.add_rule("POSTROUTING", "-j sdn-postrouting-bottom", wrap=False)
        nat.add_chain("snat")
        nat.add_rule("sdn-postrouting-bottom", "-j $snat", wrap=False)
        nat.add_chain("float-snat")
        nat.add_rule("snat", "-j $float-snat")
        eb = self.ebtables["nat"]
        eb.chains.clear()
        eb.unwrapped_chains.clear()
        eb.rules.clear()

    @contextlib.contextmanager
    def _lock(self):
        with _THREAD_LOCK:
            if not self.lock_file:
                yield
                return
            os.makedirs(os.path.dirname(self.lock_file) or ".", exist_ok=True)
            with open(self.lock_file, "a") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)

    def render(self, family_save: str, table: str, saved: str) -> str:
        """What apply() would restore for ``table`` of the ``family_save`` family given ``saved``."""
        return next(f for f in self._families if f.save == family_save).rewrite(saved, table)

    def apply(self) -> list[str]:
        """Write every table whose sdn part differs from the desired one; returns the
        ``<save-command>:<table>`` names that were restored (empty: nothing changed)."""
        changed = []
        with self._lock():
            for fam in self._families:
                for name, table in fam.tables.items():
                    saved = self.runner([fam.save, "-c", "-t", name], None)
                    new = fam.rewrite(saved, name)
                    if table_signature(new, name) == table_signature(saved, name):
                        continue
                    self.runner(fam.restore_argv(), new)
                    changed.append(f"{fam.save}:{name}")
        if changed:
            LOG.info("iptables: restored %s", ", ".join(changed))
        return changed

    def remove_all(self) -> list[str]:
        """Remove every chain and rule sdn owns (tables emptied of sdn, foreign rules kept)."""
        for fam in self._families:
            for table in fam.tables.values():
                table.chains.clear()
                table.unwrapped_chains.clear()
                table.rules.clear()
        try:
            return self.apply()
        finally:
            self.reset()


def format_rules(rules: Iterable[Rule]) -> list[str]:
    return [f"{r.chain} {r.rule}" for r in rules]
