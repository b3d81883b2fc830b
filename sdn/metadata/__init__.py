"""sdn's metadata service (``sdn metadata``): what cloud-init reads at 169.254.169.254.

Both backends DNAT a guest's ``169.254.169.254:80`` to ``metadata_host:metadata_port`` without
SNAT, so the service sees the guest's fixed IP as the source and answers for the instance that
holds it:

- ``document.py`` (pure): an ``InstanceRecord`` + request path -> status, content type, body;
  OpenStack's ``openstack/latest/network_data.json`` and ``meta_data.json``, EC2's
  ``latest/meta-data/`` basics.
- ``store.py``: the ``InstanceRecord`` of a fixed IP, read in one read-only transaction.
- ``server.py``: the stdlib ``ThreadingHTTPServer`` at the edge (one log line per request,
  SIGTERM clean, any request bytes in and never a traceback out).
"""
