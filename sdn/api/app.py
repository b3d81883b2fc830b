"""The REST API (FastAPI): nova's os-networks, os-floating-ips, os-floating-ip-pools,
os-floating-ips-bulk, os-security-groups and os-security-group-rules, and sdn's instances.

Every route calls the same managers as the CLI (``sdn.manager``, ``sdn.floating``,
``sdn.secgroups``); their errors become HTTP statuses (``sdn.api.errors``) with the CLI's
message. The API layer adds only who may see what: a project token's requests are confined to
its project (another project's resources answer 404, as nova does), operator routes need an
admin token (403). Each manager call is one transaction, so a refused request writes nothing.
See docs/API.md.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Body, Depends, FastAPI, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import exc as sa_exc

from sdn import exception, validation
from sdn.api import errors, views
from sdn.api.auth import Principal, TokenFile

LOG = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="a token of [api] token_file: "
                     "'Authorization: Bearer TOKEN'")


# -- request bodies (nova's request samples; unknown keys are refused) ---------------------------

class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NetworkCreate(_Body):
    label: str = Field(max_length=255)
    cidr: str = Field(description="IPv4 CIDR: the network is exactly this range")
    project_id: str | None = None
    bridge: str | None = None
    bridge_interface: str | None = None
    dns1: str | None = None
    dns2: str | None = None
    vlan: int | None = Field(None, description="VLAN id (vlan manager; nova's vlan_start)")
    vlan_start: int | None = None
    vpn_start: int | None = Field(None, description="VPN public port (vlan manager)")


class NetworkCreateRequest(_Body):
    network: NetworkCreate


class NetworkAddRequest(_Body):
    id: int | str | None = Field(description="network id to give the project; null: the lowest "
                                 "network no project has")


class NetworkAction(_Body):
    """Exactly one of the keys (nova's os-networks and os-networks-associate actions)."""

    disassociate: None = None
    disassociate_project: None = None
    associate_host: str | None = None
    disassociate_host: None = None


class FloatingAllocate(_Body):
    pool: str | None = None


class BulkCreate(_Body):
    ip_range: str = Field(description="CIDR or one address")
    pool: str | None = None
    interface: str | None = None
    host: str | None = Field(None, description="sdn: network host that serves them")


class BulkCreateRequest(_Body):
    floating_ips_bulk_create: BulkCreate


class BulkDeleteRequest(_Body):
    ip_range: str


class SecurityGroupCreate(_Body):
    name: str
    description: str = ""


class SecurityGroupCreateRequest(_Body):
    security_group: SecurityGroupCreate


class RuleCreate(_Body):
    parent_group_id: int | str
    ip_protocol: str | None = Field(None, description="tcp, udp, icmp, icmpv6, sctp, any or 0-255")
    from_port: int | str | None = None
    to_port: int | str | None = None
    cidr: str | None = None
    group_id: int | str | None = Field(None, description="remote group: its members' addresses")


class RuleCreateRequest(_Body):
    security_group_rule: RuleCreate


class NamedRef(_Body):
    name: str


class NetworkRef(_Body):
    uuid: int | str = Field(description="network id (nova's server create 'networks' entry)")


class InstanceCreate(_Body):
    name: str
    host: str | None = None
    security_groups: list[NamedRef] | None = Field(None, description="default: [{'name': 'default'}]")
    networks: list[NetworkRef] | None = Field(None, description="one VIF per network; default: "
                                              "the project's first network with a free address")
    rx_kbps: int | None = Field(None, description="limit of what each VIF receives, kbit/s")
    tx_kbps: int | None = Field(None, description="limit of what each VIF sends, kbit/s")


class InstanceCreateRequest(_Body):
    instance: InstanceCreate


class AddFloatingIp(_Body):
    address: str
    fixed_address: str | None = None


class AddressRef(_Body):
    address: str


class AddFixedIp(_Body):
    networkId: int | str


class InstanceAction(_Body):
    """Exactly one key: nova's server actions on networking."""

    addSecurityGroup: NamedRef | None = None
    removeSecurityGroup: NamedRef | None = None
    addFloatingIp: AddFloatingIp | None = None
    removeFloatingIp: AddressRef | None = None
    addFixedIp: AddFixedIp | None = None
    removeFixedIp: AddressRef | None = None


class PortSecurity(_Body):
    port_security_enabled: bool


class AddressPair(_Body):
    ip_address: str = Field(description="IPv4/IPv6 address or CIDR")
    mac_address: str | None = Field(None, description="default: the VIF's own MAC")


class AddressPairRequest(_Body):
    allowed_address_pair: AddressPair


class PlugRequest(_Body):
    bridge: str
    internal: bool = Field(False, description="create internal ports (else the devices must exist)")


def _one_action(body: BaseModel, null_allowed: bool = True) -> tuple[str, Any]:
    """The one action key given in an action body and its value. Raises Invalid for none,
    several, or (unless ``null_allowed``) a null value."""
    given = sorted(body.model_fields_set)
    if len(given) != 1:
        raise exception.Invalid(f"give exactly one action of {', '.join(type(body).model_fields)}; "
                                f"got {', '.join(given) or 'none'}")
    value = getattr(body, given[0])
    if value is None and not null_allowed:
        raise exception.Invalid(f"{given[0]} takes an object, not null (see /openapi.json)")
    return given[0], value


# -- the application -----------------------------------------------------------------------------

class Services:
    """The managers the CLI uses, on one engine."""

    def __init__(self, conf):
        from sdn import manager
        from sdn.db import api as db
        from sdn.floating import FloatingIps
        from sdn.secgroups import SecurityGroups

        self.conf = conf
        self.engine = db.get_engine(conf.database.connection)
        self.mgr = manager.get_manager(self.engine, conf)
        self.fips = FloatingIps(self.engine, conf)
        self.sgs = SecurityGroups(self.engine, conf)


def create_app(conf, tokens: TokenFile) -> FastAPI:
    """The API on ``conf``'s database; ``tokens`` authenticates every route but /openapi.json."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        sdn_version = version("sdn")
    except PackageNotFoundError:
        sdn_version = "0"
    app = FastAPI(title="sdn", version=sdn_version, docs_url=None, redoc_url=None,
                  description="nova-network's tenant networking API (os-networks, "
                  "os-floating-ips, os-security-groups, ...) and sdn's instances. Errors are "
                  "nova faults: {\"<faultName>\": {\"code\": N, \"message\": \"...\"}}.")
    svc = Services(conf)
    _install_error_handlers(app, conf)

    def principal(creds: HTTPAuthorizationCredentials | None = Depends(_bearer),
                  x_project_id: str | None = Header(None, description="admin tokens: act as this "
                                                    "project")) -> Principal:
        if creds is None:
            raise errors.HttpError(401, "authentication required: send 'Authorization: Bearer "
                                   "TOKEN' with a token of [api] token_file")
        found = tokens.lookup(creds.credentials)
        if found is None:
            raise errors.HttpError(401, "unknown bearer token; use a token listed in [api] token_file")
        if x_project_id is None:
            return found
        if not found.admin and x_project_id != found.project:
            raise errors.HttpError(403, f"this token is for project {found.project}; it cannot "
                                   f"act for project {x_project_id}")
        return Principal(admin=found.admin, project=x_project_id)

    auth = [Depends(principal)]
    for router in (_networks(svc, principal), _floating(svc, principal),
                   _secgroups(svc, principal), _instances(svc, principal)):
        app.include_router(router, dependencies=auth)
    return app


def _install_error_handlers(app: FastAPI, conf) -> None:
    def reply(status: int, message: str) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(errors.fault(status, message), status_code=status, headers=headers)

    @app.exception_handler(errors.HttpError)
    async def _http(_request: Request, err: errors.HttpError):
        return reply(err.status, str(err))

    @app.exception_handler(exception.SdnError)
    async def _sdn(_request: Request, err: exception.SdnError):
        return reply(errors.status_of(err), str(err))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, err: RequestValidationError):
        return reply(400, "invalid request: " + "; ".join(_describe_error(e) for e in err.errors()[:3]))

    @app.exception_handler(sa_exc.OperationalError)
    async def _db(_request: Request, err: sa_exc.OperationalError):
        from sdn.db import api as db

        sdn_err = db.explain(err, conf.database.connection)
        return reply(errors.status_of(sdn_err), str(sdn_err))

    @app.exception_handler(sa_exc.SQLAlchemyError)
    async def _db_other(_request: Request, err: sa_exc.SQLAlchemyError):
        return reply(500, f"database error: {err.__class__.__name__}: {getattr(err, 'orig', None) or err}")

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, err: Exception):
        LOG.exception("unexpected error")
        return reply(500, f"unexpected {err.__class__.__name__}: {err}")

    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def _starlette(_request: Request, err: HTTPException):
        message = {404: "no such resource; see /openapi.json for the routes",
                   405: "method not allowed on this resource; see /openapi.json"}.get(
                       err.status_code, str(err.detail))
        return reply(err.status_code, message)


def _describe_error(e: dict) -> str:
    """One pydantic error as ``where: what``, in the API's words."""
    where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
    if e.get("type") == "json_invalid" or not where and e.get("type") != "missing":
        return "the body is not a JSON object; send one (Content-Type: application/json)"
    where = where or "body"
    if e.get("type") == "extra_forbidden":
        return f"{where}: not an accepted key (the accepted keys are in /openapi.json)"
    return f"{where}: {e.get('msg', 'invalid')}"


def _need_admin(p: Principal, what: str) -> None:
    if not p.admin:
        raise errors.HttpError(403, f"only an admin token may {what}")


def _need_project(p: Principal) -> str:
    if p.project is None:
        raise errors.HttpError(400, "this request acts for a project: an admin token names it with "
                               "the X-Project-Id header")
    return p.project


def _by_id(rows: list[dict], wanted, missing: exception.SdnError, visible=lambda row: True) -> dict:
    """The row of ``rows`` whose integer ``id`` is ``wanted`` (an int or its text) and that
    ``visible`` accepts; else raises ``missing`` (a bad id and another project's alike)."""
    try:
        number = int(wanted)
    except (TypeError, ValueError):
        raise missing from None
    row = next((r for r in rows if r["id"] == number), None)
    if row is None or not visible(row):
        raise missing
    return row


def _network(mgr, network_id, p: Principal) -> dict:
    """The network ``network_id`` if ``p`` may see it. Raises NetworkNotFound."""
    return _by_id(mgr.list_networks(), network_id, exception.NetworkNotFound(what=f"with id {network_id}"),
                  lambda net: p.sees(net["project_id"]))


# -- os-networks ---------------------------------------------------------------------------------

def _networks(svc: Services, principal) -> APIRouter:
    r = APIRouter(prefix="/os-networks", tags=["os-networks"])
    mgr, conf = svc.mgr, svc.conf

    def view(net: dict, p: Principal) -> dict:
        return views.network(net, p.admin, dhcp=mgr.dhcp, injected=bool(conf.flat_injected) and not mgr.vlan_mode,
                             mtu=conf.network_device_mtu)

    def find(network_id, p: Principal) -> dict:
        return _network(mgr, network_id, p)

    @r.get("", summary="List networks (a project: its own and the shared ones)")
    def list_networks(p: Principal = Depends(principal)):
        return {"networks": [view(n, p) for n in mgr.list_networks() if p.sees(n["project_id"])]}

    @r.post("", summary="Create a network of exactly this CIDR (admin)")
    def create_network(body: NetworkCreateRequest, p: Principal = Depends(principal)):
        _need_admin(p, "create networks")
        n = body.network
        if n.vlan is not None and n.vlan_start is not None and n.vlan != n.vlan_start:
            raise exception.Invalid("give vlan or vlan_start, not both")
        cidr = validation.ipv4_network(n.cidr, "the network's cidr")
        (net,) = mgr.create_networks(label=n.label, cidr=n.cidr, num_networks=1, network_size=cidr.size,
                                     vlan_start=n.vlan if n.vlan is not None else n.vlan_start,
                                     vpn_start=n.vpn_start, bridge=n.bridge,
                                     bridge_interface=n.bridge_interface, dns1=n.dns1, dns2=n.dns2,
                                     project_id=n.project_id)
        return {"network": view(net, p)}

    @r.post("/add", status_code=202, summary="Give the project one more network (admin, vlan)")
    def add_network(body: NetworkAddRequest, p: Principal = Depends(principal)) -> Response:
        _need_admin(p, "add networks to projects")
        project = _need_project(p)
        cidr = None if body.id is None else find(body.id, Principal(admin=True))["cidr"]
        mgr.add_network_to_project(project, cidr)
        return Response(status_code=202)

    @r.get("/{network_id}", summary="Show a network")
    def show_network(network_id: str, p: Principal = Depends(principal)):
        return {"network": view(find(network_id, p), p)}

    @r.delete("/{network_id}", status_code=202, summary="Delete a network with no allocated "
              "fixed IPs (admin)")
    def delete_network(network_id: str, p: Principal = Depends(principal)) -> Response:
        _need_admin(p, "delete networks")
        mgr.delete_network(find(network_id, p)["cidr"])
        return Response(status_code=202)

    @r.post("/{network_id}/action", status_code=202,
            summary="disassociate / disassociate_project (the project lets the network go; vlan); "
            "associate_host / disassociate_host are refused (501)")
    def network_action(network_id: str, body: NetworkAction, p: Principal = Depends(principal)) -> Response:
        _need_admin(p, "change networks")
        action, _value = _one_action(body)
        net = find(network_id, p)
        if action in ("associate_host", "disassociate_host"):
            raise errors.HttpError(501, f"{action} is not supported: sdn binds no network to a host "
                                   "(every controller serves every network); use disassociate or "
                                   "disassociate_project")
        mgr.disassociate_project(net["cidr"])
        return Response(status_code=202)

    return r


# -- os-floating-ips, os-floating-ip-pools, os-floating-ips-bulk ----------------------------------

def _floating(svc: Services, principal) -> APIRouter:
    r = APIRouter()
    fips = svc.fips

    def mine(p: Principal) -> list[dict]:
        rows = [f for f in fips.list() if f["project_id"] is not None]
        return rows if p.project is None else [f for f in rows if f["project_id"] == p.project]

    def find(floating_ip_id, p: Principal) -> dict:
        return _by_id(mine(p), floating_ip_id, exception.FloatingIpNotFound(address=f"with id {floating_ip_id}"))

    @r.get("/os-floating-ips", tags=["os-floating-ips"],
           summary="List the project's floating IPs (admin: every allocated one)")
    def list_floating(p: Principal = Depends(principal)):
        return {"floating_ips": [views.floating_ip(f) for f in mine(p)]}

    @r.post("/os-floating-ips", tags=["os-floating-ips"], summary="Allocate a floating IP to the project")
    def allocate_floating(body: FloatingAllocate | None = Body(None), p: Principal = Depends(principal)):
        project = _need_project(p)
        address = fips.allocate(project, body.pool if body else None)
        row = next(f for f in fips.list() if f["address"] == address)
        return {"floating_ip": views.floating_ip(row)}

    @r.get("/os-floating-ips/{floating_ip_id}", tags=["os-floating-ips"], summary="Show a floating IP")
    def show_floating(floating_ip_id: str, p: Principal = Depends(principal)):
        return {"floating_ip": views.floating_ip(find(floating_ip_id, p))}

    @r.delete("/os-floating-ips/{floating_ip_id}", tags=["os-floating-ips"], status_code=202,
              summary="Deallocate a floating IP (refused while associated)")
    def deallocate_floating(floating_ip_id: str, p: Principal = Depends(principal)) -> Response:
        row = find(floating_ip_id, p)
        fips.deallocate(row["address"], row["project_id"])
        return Response(status_code=202)

    @r.get("/os-floating-ip-pools", tags=["os-floating-ip-pools"], summary="List floating IP pools")
    def list_pools(p: Principal = Depends(principal)):
        pools = sorted({f["pool"] for f in fips.list() if f["pool"] is not None})
        return {"floating_ip_pools": [{"name": name} for name in pools]}

    bulk = "os-floating-ips-bulk"

    @r.get(f"/{bulk}", tags=[bulk], summary="List every floating IP (admin)")
    def bulk_list(p: Principal = Depends(principal)):
        _need_admin(p, "list every floating IP")
        return {"floating_ip_info": [views.floating_ip_info(f) for f in fips.list()]}

    @r.get(f"/{bulk}/{{host}}", tags=[bulk], summary="List the floating IPs a host serves (admin)")
    def bulk_list_host(host: str, p: Principal = Depends(principal)):
        _need_admin(p, "list every floating IP")
        rows = [f for f in fips.list() if f["host"] == host]
        if not rows:
            raise exception.FloatingIpNotFound(address=f"served by host {host}")
        return {"floating_ip_info": [views.floating_ip_info(f) for f in rows]}

    @r.post(f"/{bulk}", tags=[bulk], summary="Add a range of floating IPs to a pool (admin)")
    def bulk_create(body: BulkCreateRequest, p: Principal = Depends(principal)):
        _need_admin(p, "create floating IPs")
        b = body.floating_ips_bulk_create
        fips.create(b.ip_range, b.pool, b.host, b.interface)
        return {"floating_ips_bulk_create": {
            "ip_range": b.ip_range, "pool": svc.conf.default_floating_pool if b.pool is None else b.pool,
            "interface": b.interface or svc.conf.public_interface}}

    @r.put(f"/{bulk}/delete", tags=[bulk], summary="Remove a range of floating IPs (admin; none may "
           "be associated)")
    def bulk_delete(body: BulkDeleteRequest, p: Principal = Depends(principal)):
        _need_admin(p, "delete floating IPs")
        fips.delete(body.ip_range)
        return {"floating_ips_bulk_delete": body.ip_range}

    return r


# -- os-security-groups, os-security-group-rules --------------------------------------------------

def _secgroups(svc: Services, principal) -> APIRouter:
    r = APIRouter()
    sgs = svc.sgs

    def find(group_id, p: Principal) -> dict:
        return _by_id(sgs.list(p.project), group_id, exception.SecurityGroupNotFound(
            f"no security group with id {group_id}; see 'sdn secgroup list'"))

    @r.get("/os-security-groups", tags=["os-security-groups"],
           summary="List the project's security groups (admin: every project's)")
    def list_groups(p: Principal = Depends(principal)):
        return {"security_groups": [views.security_group(g) for g in sgs.list(p.project)]}

    @r.post("/os-security-groups", tags=["os-security-groups"],
            summary="Create a security group (no ingress rule, egress allowed)")
    def create_group(body: SecurityGroupCreateRequest, p: Principal = Depends(principal)):
        project = _need_project(p)
        g = sgs.create(body.security_group.name, project, body.security_group.description)
        return {"security_group": views.security_group(g)}

    @r.get("/os-security-groups/{group_id}", tags=["os-security-groups"], summary="Show a security group")
    def show_group(group_id: str, p: Principal = Depends(principal)):
        return {"security_group": views.security_group(find(group_id, p))}

    @r.delete("/os-security-groups/{group_id}", tags=["os-security-groups"], status_code=202,
              summary="Delete a security group no instance uses")
    def delete_group(group_id: str, p: Principal = Depends(principal)) -> Response:
        g = find(group_id, p)
        sgs.delete(g["name"], g["project"])
        return Response(status_code=202)

    @r.post("/os-security-group-rules", tags=["os-security-group-rules"],
            summary="Add an ingress rule: ip_protocol/from_port/to_port and a cidr or group_id")
    def create_rule(body: RuleCreateRequest, p: Principal = Depends(principal)):
        b = body.security_group_rule
        parent = find(b.parent_group_id, p)
        remote = find(b.group_id, p)["name"] if b.group_id is not None else None
        rule = sgs.add_rule(parent["name"], parent["project"], protocol=b.ip_protocol,
                            from_port=b.from_port, to_port=b.to_port, cidr=b.cidr,
                            remote_group=remote)
        return {"security_group_rule": views.rule(rule, parent["id"], tenant_id=parent["project"])}

    @r.delete("/os-security-group-rules/{rule_id}", tags=["os-security-group-rules"], status_code=202,
              summary="Delete a rule")
    def delete_rule(rule_id: str, p: Principal = Depends(principal)) -> Response:
        groups = sgs.list(p.project)
        rule = _by_id([{**r, "group": g} for g in groups for r in g["rules"]], rule_id,
                      exception.SecurityGroupRuleNotFound(what=str(rule_id)))
        sgs.delete_rule(rule["group"]["name"], rule["group"]["project"], rule["id"])
        return Response(status_code=202)

    return r


# -- sdn's instances -----------------------------------------------------------------------------

def _instances(svc: Services, principal) -> APIRouter:
    r = APIRouter(prefix="/instances", tags=["instances"])
    mgr, fips, sgs, conf = svc.mgr, svc.fips, svc.sgs, svc.conf

    def allocation(name: str, p: Principal) -> dict:
        alloc = mgr.get_allocation(name)
        if not p.owns(alloc["project"]):
            raise exception.InstanceNotFound(name=name)   # another project's: as if absent
        return alloc

    def show(name: str) -> dict:
        return {"instance": views.instance(mgr.get_allocation(name), mgr.show_port_security(name),
                                           mgr.show_bandwidth(name), sgs.groups_of(name))}

    def network_cidr(network_id, p: Principal) -> str:
        return _network(mgr, network_id, p)["cidr"]

    @r.get("", summary="List the project's instances (admin: every project's) with their VIFs")
    def list_instances(p: Principal = Depends(principal)):
        return {"instances": [views.instance_summary(a) for a in mgr.list_allocations(p.project)]}

    @r.post("", summary="Launch: allocate VIFs and fixed IPs (idempotent, as 'sdn instance launch')")
    def launch(body: InstanceCreateRequest, p: Principal = Depends(principal)):
        project = _need_project(p)
        i = body.instance
        if not p.admin:
            try:
                taken = mgr.get_allocation(i.name)["project"] != project
            except exception.InstanceNotFound:
                taken = False
            if taken:   # the CLI's message would name the other project
                raise errors.HttpError(409, f"instance name {i.name} is taken; use another name")
        networks = [network_cidr(n.uuid, p) for n in i.networks] if i.networks is not None else None
        mgr.allocate_for_instance(i.name, project, i.host,
                                  security_groups=[g.name for g in i.security_groups]
                                  if i.security_groups is not None else None,
                                  networks=networks, rx_kbps=i.rx_kbps, tx_kbps=i.tx_kbps)
        return show(i.name)

    @r.get("/{name}", summary="Show an instance: VIFs, port security, address pairs, groups")
    def show_instance(name: str, p: Principal = Depends(principal)):
        allocation(name, p)
        return show(name)

    @r.delete("/{name}", status_code=204, summary="Deallocate an instance (its ports stay plugged "
              "until DELETE .../plug)")
    def delete_instance(name: str, p: Principal = Depends(principal)) -> Response:
        allocation(name, p)
        mgr.deallocate_for_instance(name)
        return Response(status_code=204)

    @r.post("/{name}/action", status_code=202, summary="nova's server actions: addSecurityGroup, "
            "removeSecurityGroup, addFloatingIp, removeFloatingIp, addFixedIp, removeFixedIp")
    def instance_action(name: str, body: InstanceAction, p: Principal = Depends(principal)) -> Response:
        action, arg = _one_action(body, null_allowed=False)
        project = allocation(name, p)["project"]
        if action == "addSecurityGroup":
            sgs.add_instance(name, arg.name)
        elif action == "removeSecurityGroup":
            sgs.remove_instance(name, arg.name)
        elif action == "addFloatingIp":
            fips.associate(arg.address, name, project, arg.fixed_address)
        elif action == "removeFloatingIp":
            fips.disassociate(arg.address, project, instance_name=name)
        elif action == "addFixedIp":
            mgr.add_fixed_ip_to_instance(name, network_cidr(arg.networkId, p))
        else:
            mgr.remove_fixed_ip_from_instance(name, arg.address)
        return Response(status_code=202)

    @r.get("/{name}/os-security-groups", summary="The instance's security groups (nova's shape)")
    def instance_groups(name: str, p: Principal = Depends(principal)):
        project = allocation(name, p)["project"]
        names = set(sgs.groups_of(name))
        return {"security_groups": [views.security_group(g) for g in sgs.list(project)
                                    if g["name"] in names]}

    @r.put("/{name}/port_security", summary="Turn anti-spoofing of the instance's VIFs on or off")
    def port_security(name: str, body: PortSecurity, p: Principal = Depends(principal)):
        allocation(name, p)
        mgr.set_port_security(name, body.port_security_enabled)
        return show(name)

    @r.get("/{name}/allowed_address_pairs", summary="Allowed address pairs of the instance's VIF")
    def list_pairs(name: str, p: Principal = Depends(principal)):
        allocation(name, p)
        return {"allowed_address_pairs": views.address_pairs(mgr.show_port_security(name))}

    @r.post("/{name}/allowed_address_pairs", summary="Let the VIF also send from an address pair")
    def add_pair(name: str, body: AddressPairRequest, p: Principal = Depends(principal)):
        allocation(name, p)
        pair = body.allowed_address_pair
        info = mgr.add_address_pair(name, pair.ip_address, pair.mac_address)
        return {"allowed_address_pairs": views.address_pairs(info)}

    @r.delete("/{name}/allowed_address_pairs", summary="Remove an allowed address pair")
    def remove_pair(name: str, ip_address: str = Query(...), mac_address: str | None = Query(None),
                    p: Principal = Depends(principal)):
        allocation(name, p)
        info = mgr.remove_address_pair(name, ip_address, mac_address)
        return {"allowed_address_pairs": views.address_pairs(info)}

    def ovs():
        from sdn import ovs as sdn_ovs

        return sdn_ovs.Ovs(conf.ovs.ovsdb_connection)

    @r.get("/{name}/plug", summary="Plug state: is each VIF's port on the bridge")
    def plug_state(name: str, bridge: str = Query(...), p: Principal = Depends(principal)):
        alloc = allocation(name, p)
        switch = ovs()
        switch.require_bridge(bridge)
        return {"plug": {"bridge": bridge, "ports": [
            {"port_name": v["port_name"], "vif_id": v["vif_uuid"],
             "plugged": switch.port_exists(bridge, v["port_name"])} for v in alloc["vifs"]]}}

    @r.put("/{name}/plug", summary="Add the instance's ports to a bridge (as 'sdn instance plug')")
    def plug(name: str, body: PlugRequest, p: Principal = Depends(principal)):
        alloc = allocation(name, p)
        switch = ovs()
        for v in alloc["vifs"]:
            switch.plug_vif(body.bridge, v["port_name"], v["vif_uuid"], v["mac"], alloc["instance_uuid"],
                            internal=body.internal)
        return plug_state(name, body.bridge, p)

    @r.delete("/{name}/plug", summary="Remove the instance's ports from a bridge")
    def unplug(name: str, bridge: str = Query(...), p: Principal = Depends(principal)):
        alloc = allocation(name, p)
        switch = ovs()
        for v in alloc["vifs"]:
            switch.unplug_vif(bridge, v["port_name"])
        return plug_state(name, bridge, p)

    return r
