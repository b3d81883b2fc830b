"""``sdn agent`` supervises its raw-socket DHCP servers (issue 10): a server whose thread has
stopped is seen by the poll loop and replaced at the next reconcile, with a change logged."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from sdn.linux.agent import Agent
from sdn.view import StateView, VifView
from tests.unit.test_dhcp_server import NET


def _agent() -> Agent:
    """An Agent with only what its DHCP step reads (no database, no host changes)."""
    agent = Agent.__new__(Agent)
    agent.conf = SimpleNamespace(dhcp_driver="scapy")
    agent.raw = {}
    agent.dhcp = True
    agent._record = lambda events: None
    return agent


VIF = VifView(uuid="0123456789abcdef", mac="fa:16:3e:00:00:01", network_id=NET.id, instance="i",
              hostname="vm", addresses=("10.0.0.7",))
VIEW = StateView(revision=1, networks={NET.id: NET}, vifs=(VIF,))
# the VIF's tap does not exist in this namespace: the server runs and retries opening it
PLAN = SimpleNamespace(dnsmasq=[SimpleNamespace(bridge="brsup0", network_id=NET.id)],
                       ports={VIF.port_name: "brsup0"})



def crash_serving_thread(runner) -> None:
    """Make ``runner``'s serving thread die of a bug escaping ``server.serve_once``, and wait
    until it has (the agents' supervision must then restart it)."""
    died = threading.Event()

    def crash(timeout=0.5):
        died.set()
        raise RuntimeError("simulated bug in the serving loop")
    runner.server.serve_once = crash
    assert died.wait(5)
    runner.thread.join(5)

def test_a_dead_raw_dhcp_server_is_restarted_at_the_next_reconcile():
    agent = _agent()
    try:
        assert agent._dhcp(VIEW, PLAN) == ["raw DHCP on brsup0 started"]
        first = agent.raw["brsup0"]
        assert first.alive() and agent.raw_dhcp_alive()
        assert set(first.server._wanted) == {VIF.port_name}      # bound to the VIF's tap
        assert agent._dhcp(VIEW, PLAN) == []                      # healthy: nothing to do

        crash_serving_thread(first)     # a bug escaping serve_once
        assert not first.alive() and not agent.raw_dhcp_alive()  # what the poll loop checks

        assert agent._dhcp(VIEW, PLAN) == ["raw DHCP on brsup0 restarted"]
        second = agent.raw["brsup0"]
        assert second is not first and second.alive() and agent.raw_dhcp_alive()
    finally:
        for raw in agent.raw.values():
            raw.close()


def test_a_dead_commit_thread_counts_as_a_dead_server():
    agent = _agent()
    try:
        agent._dhcp(VIEW, PLAN)
        raw = agent.raw["brsup0"]
        wait = threading.Event()
        for _ in range(50):
            if raw.server._committer is not None:
                break
            wait.wait(0.05)
        raw.server._committer.close()          # the lease-commit thread ends
        assert not raw.alive()
        assert agent._dhcp(VIEW, PLAN) == ["raw DHCP on brsup0 restarted"]
        assert agent.raw["brsup0"].alive()
    finally:
        for r in agent.raw.values():
            r.close()
