"""Bandwidth limits per VIF on the Linux backend (``instance set-bandwidth``): tc on the tap.

- What the VIF receives (``rx_kbps``) leaves the tap toward the instance: an HTB root qdisc
  ``1:`` on the tap with one class ``1:1`` (rate = ceil = the limit), which queues (shapes)
  rather than drops, so TCP settles at the rate.
- What the VIF sends (``tx_kbps``) arrives on the tap: its ingress qdisc redirects every frame
  (u32 match-all, ``mirred egress redirect``) to an IFB device ``ifb<uuid[:11]>`` whose HTB
  root shapes it the same way; the frame then continues into the bridge (IFB re-injects it).

:func:`plan` (pure) gives each present VIF port its :class:`Limits`; :func:`commands` (pure)
the tc/ip commands that install them; :func:`apply` talks to the kernel through ``tc``/``ip``
(iproute2) in the agent's network namespace: one ``tc qdisc show`` per reconcile, then the
classes of limited ports only. Nothing is changed for a port whose limits are already in
place; limits removed lose their qdiscs and IFB device, the IFB of a port gone is deleted.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from sdn.view import StateView

IFB_PREFIX = "ifb"
_RATE = re.compile(r"class htb 1:1 .*?\brate (\d+)([KMG]?)bit")
_SCALE = {"": 0.001, "K": 1, "M": 1000, "G": 1000_000}


@dataclass(frozen=True)
class Limits:
    """kbit/s; None = unlimited in that direction."""

    rx_kbps: int | None = None
    tx_kbps: int | None = None

    def __bool__(self) -> bool:
        return bool(self.rx_kbps or self.tx_kbps)


def ifb_name(port: str) -> str:
    """IFB device shaping what ``port`` (``tap<uuid[:11]>``) sends: ``ifb<uuid[:11]>``."""
    return IFB_PREFIX + port[3:]


def plan(view: StateView, present_ports) -> dict[str, Limits]:
    """Limits of every VIF port present on this host that has one."""
    present = set(present_ports)
    return {vif.port_name: Limits(vif.rx_kbps, vif.tx_kbps) for vif in view.vifs
            if vif.port_name in present and (vif.rx_kbps or vif.tx_kbps)}


def _htb(dev: str, kbps: int) -> list[list[str]]:
    return [["tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "1"],
            ["tc", "class", "replace", "dev", dev, "parent", "1:", "classid", "1:1", "htb",
             "rate", f"{kbps}kbit", "ceil", f"{kbps}kbit", "quantum", "1514"]]


def commands(port: str, want: Limits, have: Limits) -> list[list[str]]:
    """The commands that take ``port`` from ``have`` to ``want`` (none if equal)."""
    cmds: list[list[str]] = []
    if want.rx_kbps != have.rx_kbps:
        if want.rx_kbps:
            cmds += _htb(port, want.rx_kbps)
        else:
            cmds.append(["tc", "qdisc", "del", "dev", port, "root"])
    if want.tx_kbps != have.tx_kbps:
        ifb = ifb_name(port)
        if want.tx_kbps:
            if not have.tx_kbps:
                cmds += [["ip", "link", "add", ifb, "type", "ifb"],
                         ["ip", "link", "set", ifb, "up"]]
            cmds += _htb(ifb, want.tx_kbps)
            if not have.tx_kbps:
                cmds += [["tc", "qdisc", "replace", "dev", port, "handle", "ffff:", "ingress"],
                         ["tc", "filter", "replace", "dev", port, "parent", "ffff:", "protocol",
                          "all", "prio", "1", "u32", "match", "u32", "0", "0", "action",
                          "mirred", "egress", "redirect", "dev", ifb]]
        else:
            cmds += [["tc", "qdisc", "del", "dev", port, "ingress"],
                     ["ip", "link", "del", ifb]]
    return cmds


def parse_rate(tc_class_show: str) -> int | None:
    """kbit/s of HTB class 1:1 in ``tc class show`` output; None if there is none."""
    match = _RATE.search(tc_class_show)
    if not match:
        return None
    return int(round(int(match.group(1)) * _SCALE[match.group(2)]))


def _run(cmd: list[str], check: bool = True) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def shaped(qdisc_show: str) -> tuple[set[str], set[str]]:
    """(devices with an HTB root ``1:``, devices with an ingress qdisc) in ``tc qdisc show``
    output (all devices: one command per reconcile, not one per port)."""
    htb, ingress = set(), set()
    for line in qdisc_show.splitlines():
        words = line.split()
        if len(words) > 4 and words[0] == "qdisc" and words[3] == "dev":
            if words[1] == "htb" and words[2] == "1:" and "root" in words:
                htb.add(words[4])
            elif words[1] == "ingress":
                ingress.add(words[4])
    return htb, ingress


def read(port: str, links, htb: set[str], ingress: set[str]) -> Limits:
    """What ``port`` holds now (``links``: the host's link names; ``htb``/``ingress``: from
    :func:`shaped`)."""
    rx = parse_rate(_run(["tc", "class", "show", "dev", port], check=False)) if port in htb else None
    ifb, tx = ifb_name(port), None
    if port in ingress and ifb in links and ifb in htb:
        tx = parse_rate(_run(["tc", "class", "show", "dev", ifb], check=False))
    return Limits(rx, tx)


def apply(wanted: dict[str, Limits], links) -> list[str]:
    """Make every port in ``links`` hold ``wanted`` (ports absent from it: no limits); delete
    IFB devices of ports that are gone. Returns the changes made. Reads the kernel's qdiscs
    once, then the classes of ports that are (or are to be) limited only."""
    links = set(links)
    htb, ingress = shaped(_run(["tc", "qdisc", "show"]))
    changes = []
    for port in sorted(p for p in links if p.startswith("tap")):
        want = wanted.get(port, Limits())
        if not want and port not in htb and port not in ingress:
            continue
        have = read(port, links, htb, ingress)
        if want == have:
            continue
        for cmd in commands(port, want, have):
            _run(cmd, check=cmd[2] != "del")      # a qdisc already gone is fine
        changes.append(f"tc {port}: receives {want.rx_kbps or 'unlimited'}, sends "
                       f"{want.tx_kbps or 'unlimited'} (kbit/s)")
    for ifb in sorted(n for n in links if n.startswith(IFB_PREFIX) and len(n) == 14
                      and "tap" + n[3:] not in links):
        _run(["ip", "link", "del", ifb], check=False)
        changes.append(f"deleted {ifb} (its port is gone)")
    return changes
