"""sdn errors as HTTP statuses, in nova's fault body.

One table decides the status of every ``sdn.exception.SdnError``: the message is the CLI's
(``str(err)``), only the transport differs. nova's fault body is ``{"<faultName>": {"code": N,
"message": "..."}}`` (nova.api.openstack.wsgi.Fault; names from webob's exceptions).
"""

from __future__ import annotations

from sdn import exception

#: nova's fault names by status
FAULT_NAMES = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound",
               405: "badMethod", 409: "conflictingRequest", 413: "overLimit",
               415: "badMediaType", 500: "computeFault", 501: "notImplemented",
               503: "serviceUnavailable"}

#: lookups that found nothing (the CLI's exit code 1, like every refusal)
NOT_FOUND = (exception.NetworkNotFound, exception.FixedIpNotFound, exception.InstanceNotFound,
             exception.FloatingIpNotFound, exception.SecurityGroupNotFound,
             exception.SecurityGroupRuleNotFound, exception.ProviderRuleNotFound,
             exception.AddressPairNotFound, exception.BridgeNotFound, exception.NoNetworks,
             # another project's floating IP is "not found" for this one (nova: 404)
             exception.FloatingIpNotAllocated,
             # nova answers 404 "No more floating IPs in pool" (floating_ips.create)
             exception.NoMoreFloatingIps)

#: the service, not the request, is at fault: the database is missing, locked or unusable
UNAVAILABLE = (exception.DatabaseMissing, exception.DatabaseLocked, exception.DatabasePermission,
               exception.DatabaseUnusable)


def status_of(err: exception.SdnError) -> int:
    """HTTP status of an sdn error: 400 bad input (exit code 2: ``exception.Invalid`` and its
    subclasses), 404 a lookup that found nothing, 503 a database the service cannot use, 409
    every other refusal by the current state (in use, exists, overlaps, no more addresses)."""
    if isinstance(err, exception.Invalid):
        return 400
    if isinstance(err, NOT_FOUND):
        return 404
    if isinstance(err, UNAVAILABLE):
        return 503
    return 409


def fault(status: int, message: str) -> dict:
    """nova's fault body for ``status``."""
    return {FAULT_NAMES.get(status, "computeFault"): {"code": status, "message": message}}


class HttpError(exception.SdnError):
    """A refusal decided by the API layer itself (auth, scope, unsupported action), with its
    status. Its message follows the same rule: what is wrong and what is allowed."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
