"""sdn's REST API (``sdn api``): nova's os-networks/os-floating-ips/os-security-groups shapes and
sdn's instances on the CLI's managers. See docs/API.md; ``app`` builds it, ``server`` runs it."""
