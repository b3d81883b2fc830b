"""The Linux backend (``network_driver = linux``): nova-network's original linux_net data plane.

Linux bridges (``interface``), iptables through an IptablesManager (``iptables``), dnsmasq per
network with ``sdn dhcp-bridge`` as its lease script (``dnsmasq``) or sdn's own responder on a
raw socket, ebtables anti-spoofing per VIF (``desired.antispoof_rules``), IPv6 router
advertisements and DHCPv6 on raw sockets (``ipv6_router``), all computed from the same
``StateView`` the OpenFlow backend compiles (``desired``, pure) and applied by the host agent
``sdn agent`` (``agent``).
"""
