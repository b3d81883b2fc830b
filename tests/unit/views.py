"""State views for unit tests of features other than security groups: every VIF without a
group joins one stateless group allowing everything, so those tests see their own feature's
behaviour, not the firewall's (which has its own tests in test_security_groups.py)."""

from __future__ import annotations

import dataclasses

from sdn.view import RuleView, SecurityGroupView, StateView

OPEN = SecurityGroupView(id=9000, name="open", project_id="tests", stateful=False, rules=tuple(
    RuleView(id=9000 + i, direction=d, ethertype=e)
    for i, (d, e) in enumerate(((d, e) for d in ("ingress", "egress") for e in ("IPv4", "IPv6")),
                               start=1)))


def open_view(revision, networks, vifs, floating_ips=(), **kwargs) -> StateView:
    """``StateView(...)`` with every group-less VIF in :data:`OPEN`."""
    vifs = tuple(v if v.security_groups else dataclasses.replace(v, security_groups=(OPEN.id,))
                 for v in vifs)
    return StateView(revision, networks, vifs, floating_ips,
                     security_groups={OPEN.id: OPEN, **kwargs.pop("security_groups", {})},
                     **kwargs)
