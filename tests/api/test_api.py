"""The REST API through a real server and client: ``sdn api`` runs as a subprocess (one per
module) on a free port with a temporary config and SQLite database, and ``requests`` calls every
route. JSON bodies are compared with the key sets of nova's API samples; refusals are checked
for their status, their message (the CLI's) and for leaving the state as it was.

No Open vSwitch is needed (the plug routes are exercised against ovsdb only when it runs)."""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

ADMIN = "admin-0123456789abcdef"
ALPHA = "alpha-0123456789abcdef"
BETA = "beta-0123456789abcdefgh"

# Key sets of nova's API samples (openstack/nova doc/api_samples/...): what clients parse.
#: os-networks/network-show-resp.json, network-create-resp.json, networks-list-resp.json
NOVA_NETWORK = {"bridge", "bridge_interface", "broadcast", "cidr", "cidr_v6", "created_at", "deleted",
                "deleted_at", "dhcp_server", "dhcp_start", "dns1", "dns2", "enable_dhcp", "gateway",
                "gateway_v6", "host", "id", "injected", "label", "mtu", "multi_host", "netmask",
                "netmask_v6", "priority", "project_id", "rxtx_base", "share_address", "updated_at",
                "vlan", "vpn_private_address", "vpn_public_address", "vpn_public_port"}
#: nova.api.openstack.compute.networks.network_dict: what a non-admin sees
NOVA_NETWORK_USER = {"id", "cidr", "netmask", "gateway", "broadcast", "dns1", "dns2", "cidr_v6",
                     "gateway_v6", "label", "netmask_v6"}
#: os-floating-ips/floating-ips-get-resp.json
NOVA_FLOATING_IP = {"fixed_ip", "id", "instance_id", "ip", "pool"}
#: os-floating-ip-pools/floatingippools-list-resp.json
NOVA_POOL = {"name"}
#: os-floating-ips-bulk/floating-ips-bulk-list-resp.json, floating-ips-bulk-create-resp.json
NOVA_BULK_INFO = {"address", "instance_uuid", "fixed_ip", "interface", "pool", "project_id"}
NOVA_BULK_CREATE = {"interface", "ip_range", "pool"}
#: os-security-groups/security-groups-get-resp.json, security-group-rules-post-resp.json
NOVA_SECURITY_GROUP = {"description", "id", "name", "rules", "tenant_id"}
NOVA_RULE = {"from_port", "group", "id", "ip_protocol", "ip_range", "parent_group_id", "to_port"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sdn(conf: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdn.cli", "--config-file", str(conf), *argv],
                          capture_output=True, text=True, timeout=60)


class Server:
    """One ``sdn api`` process on a temporary config; ``call`` sends a request with a token."""

    def __init__(self, root: Path, scheme: str = "http", extra: str = ""):
        self.root = root
        self.port = _free_port()
        self.db = root / "sdn.sqlite"
        self.tokens = root / "tokens"
        self.tokens.write_text(f"# test tokens\n{ADMIN} admin\n{ALPHA} project:alpha\n"
                               f"{BETA} project:beta\n")
        self.tokens.chmod(0o600)
        self.conf = root / "sdn.conf"
        self.conf.write_text(f"[DEFAULT]\nnetwork_manager = vlan\ndefault_floating_pool = nova\n"
                             f"public_interface = eth9\n[database]\nconnection = sqlite:///{self.db}\n"
                             f"[ovs]\novsdb_connection = unix:/var/run/openvswitch/db.sock\n"
                             f"[api]\nport = {self.port}\ntoken_file = {self.tokens}\n{extra}")
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.proc = None
        self.verify: str | bool = True

    def start(self) -> "Server":
        if not self.db.exists():
            assert _sdn(self.conf, "db", "sync").returncode == 0
        self.log = open(self.root / f"api-{self.port}.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "sdn.cli", "--config-file", str(self.conf),
                                      "api"], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.root / f"api-{self.port}.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError("sdn api did not start listening")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.log.close()

    def call(self, method: str, path: str, token: str | None = ADMIN, body=None, project: str | None = None,
             **kwargs) -> requests.Response:
        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if project is not None:
            headers["X-Project-Id"] = project
        return requests.request(method, self.url + path, headers=headers, json=body, timeout=30,
                                verify=self.verify, **kwargs)

    def state(self) -> dict:
        """Everything the API can change, read through the CLI's managers."""
        from sdn import config, manager
        from sdn.db import api as db
        from sdn.floating import FloatingIps
        from sdn.secgroups import SecurityGroups

        conf = config.load([], [str(self.conf)], conf=config.make_conf())
        engine = db.get_engine(conf.database.connection)
        try:
            mgr = manager.get_manager(engine, conf)
            return {"networks": mgr.list_networks(), "fixed": mgr.list_fixed_ips(),
                    "floating": FloatingIps(engine, conf).list(),
                    "groups": SecurityGroups(engine, conf).list(),
                    "revision": db.current_revision(engine)}
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("api")).start()
    yield server
    server.stop()


def refused(api: Server, status: int, method: str, path: str, token: str | None = ADMIN, body=None,
            project: str | None = None, **kwargs) -> str:
    """Send a request that must be refused with ``status``: the body is nova's fault with that
    code, and nothing in the database changed (not even the state revision). Returns the message."""
    before = api.state()
    resp = api.call(method, path, token, body, project, **kwargs)
    assert resp.status_code == status, resp.text
    (fault,) = resp.json().values()
    assert fault["code"] == status and fault["message"]
    assert "\n" not in fault["message"] and "Traceback" not in fault["message"]
    assert api.state() == before
    return fault["message"]


def ok(resp: requests.Response, status: int = 200):
    assert resp.status_code == status, resp.text
    return resp.json() if resp.content else None


# -- the service itself ----------------------------------------------------------------------------

def test_openapi_describes_every_route(api):
    spec = ok(requests.get(api.url + "/openapi.json", timeout=10))
    paths = spec["paths"]
    for path, methods in {
        "/os-networks": {"get", "post"}, "/os-networks/add": {"post"},
        "/os-networks/{network_id}": {"get", "delete"}, "/os-networks/{network_id}/action": {"post"},
        "/os-floating-ips": {"get", "post"}, "/os-floating-ips/{floating_ip_id}": {"get", "delete"},
        "/os-floating-ip-pools": {"get"}, "/os-floating-ips-bulk": {"get", "post"},
        "/os-floating-ips-bulk/{host}": {"get"}, "/os-floating-ips-bulk/delete": {"put"},
        "/os-security-groups": {"get", "post"}, "/os-security-groups/{group_id}": {"get", "delete"},
        "/os-security-group-rules": {"post"}, "/os-security-group-rules/{rule_id}": {"delete"},
        "/instances": {"get", "post"}, "/instances/{name}": {"get", "delete"},
        "/instances/{name}/action": {"post"}, "/instances/{name}/os-security-groups": {"get"},
        "/instances/{name}/port_security": {"put"},
        "/instances/{name}/allowed_address_pairs": {"get", "post", "delete"},
        "/instances/{name}/plug": {"get", "put", "delete"},
    }.items():
        assert methods <= set(paths[path]), path
    # request models are described: the network create body names nova's keys
    schemas = spec["components"]["schemas"]
    assert {"label", "cidr"} <= set(schemas["NetworkCreate"]["properties"])
    assert schemas["NetworkCreate"]["required"] == ["label", "cidr"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_authentication_and_scope_refusals(api):
    resp = api.call("GET", "/os-networks", token=None)
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    assert "Authorization: Bearer" in resp.json()["unauthorized"]["message"]
    assert api.call("GET", "/os-networks", token="not-a-token-of-the-file").status_code == 401
    assert requests.get(api.url + "/os-networks", headers={"Authorization": f"Basic {ADMIN}"},
                        timeout=10).status_code == 401
    # a project token cannot speak for another project, nor do an operator's work
    msg = refused(api, 403, "GET", "/os-floating-ips", token=ALPHA, project="beta")
    assert msg == "this token is for project alpha; it cannot act for project beta"
    assert refused(api, 403, "POST", "/os-networks", token=ALPHA,
                   body={"network": {"label": "x", "cidr": "10.99.0.0/24"}}) == \
        "only an admin token may create networks"
    refused(api, 403, "POST", "/os-floating-ips-bulk", token=ALPHA,
            body={"floating_ips_bulk_create": {"ip_range": "198.51.100.0/28"}})
    refused(api, 403, "GET", "/os-floating-ips-bulk", token=BETA)
    # an admin acting for a project must name it
    assert "X-Project-Id" in refused(api, 400, "POST", "/os-floating-ips", body={})


def test_bad_requests_are_one_line_400s(api):
    assert "not a JSON object" in refused(api, 400, "POST", "/os-networks", data="{nope")
    resp = requests.post(api.url + "/os-networks", data="{nope", timeout=10, headers={
        "Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})
    assert resp.status_code == 400 and "not a JSON object" in resp.json()["badRequest"]["message"]
    assert "network.colour: not an accepted key" in refused(
        api, 400, "POST", "/os-networks", body={"network": {"label": "x", "cidr": "10.98.0.0/24",
                                                            "colour": "red"}})
    assert "network.cidr" in refused(api, 400, "POST", "/os-networks", body={"network": {"label": "x"}})
    resp = api.call("GET", "/no-such-thing")
    assert resp.status_code == 404 and "itemNotFound" in resp.json()


# -- os-networks ---------------------------------------------------------------------------------

def test_networks_create_list_show_delete_as_nova(api):
    body = ok(api.call("POST", "/os-networks", body={"network": {"label": "n-crud", "cidr": "10.31.0.0/24",
                                                                "vlan": 301, "dns2": "192.0.2.53"}}))
    net = body["network"]
    assert set(net) == NOVA_NETWORK
    assert (net["cidr"], net["gateway"], net["vlan"], net["bridge"], net["dns2"]) == \
        ("10.31.0.0/24", "10.31.0.1", 301, "br301", "192.0.2.53")
    listed = ok(api.call("GET", "/os-networks"))["networks"]
    assert all(set(n) == NOVA_NETWORK for n in listed) and net["id"] in {n["id"] for n in listed}
    assert ok(api.call("GET", f"/os-networks/{net['id']}"))["network"] == net
    # the CLI sees what the API created
    cli = json.loads(_sdn(api.conf, "network", "list", "--json").stdout)
    assert any(n["cidr"] == "10.31.0.0/24" and n["vlan"] == 301 for n in cli)
    assert ok(api.call("DELETE", f"/os-networks/{net['id']}"), 202) is None
    msg = refused(api, 404, "GET", f"/os-networks/{net['id']}")
    assert msg == f"no network with id {net['id']}; see 'sdn network list'"


def test_network_refusals_change_nothing_and_say_what_the_cli_says(api):
    ok(api.call("POST", "/os-networks", body={"network": {"label": "n-ref", "cidr": "10.32.0.0/24",
                                                         "vlan": 302}}))
    # overlap: 409 with the CLI's own words
    msg = refused(api, 409, "POST", "/os-networks", body={"network": {"label": "n-ref2",
                                                                       "cidr": "10.32.0.0/25"}})
    cli = _sdn(api.conf, "network", "create", "--label", "n-ref2", "--fixed_range_v4", "10.32.0.0/25",
               "--num_networks", "1")
    assert cli.returncode == 1 and cli.stderr.strip() == f"sdn: error: {msg}"
    assert "overlaps existing network 10.32.0.0/24 (n-ref)" in msg
    assert "VLAN 302 is already used" in refused(
        api, 409, "POST", "/os-networks", body={"network": {"label": "n-ref3", "cidr": "10.33.0.0/24",
                                                              "vlan": 302}})
    assert "VLAN ids must be within 1-4094" in refused(
        api, 400, "POST", "/os-networks", body={"network": {"label": "n-ref4", "cidr": "10.34.0.0/24",
                                                              "vlan": 5000}})
    assert refused(api, 400, "POST", "/os-networks",
                   body={"network": {"label": "n-ref5", "cidr": "10.300.0.0/24"}}).startswith("invalid CIDR")
    refused(api, 404, "DELETE", "/os-networks/9999")
    refused(api, 404, "GET", "/os-networks/not-a-number")


def test_network_add_and_disassociate_actions(api):
    net = ok(api.call("POST", "/os-networks", body={"network": {"label": "n-add", "cidr": "10.35.0.0/24",
                                                               "vlan": 305}}))["network"]
    assert net["project_id"] is None
    # os-networks/add gives the project of X-Project-Id this network
    assert ok(api.call("POST", "/os-networks/add", body={"id": net["id"]}, project="gamma"), 202) is None
    assert ok(api.call("GET", f"/os-networks/{net['id']}"))["network"]["project_id"] == "gamma"
    assert "already belongs to project gamma" in refused(
        api, 409, "POST", "/os-networks/add", body={"id": net["id"]}, project="gamma")
    # a project sees its own and shared networks, with nova's non-admin fields; not others'
    refused(api, 404, "GET", f"/os-networks/{net['id']}", token=ALPHA)
    assert net["id"] not in {n["id"] for n in ok(api.call("GET", "/os-networks", token=ALPHA))["networks"]}
    assert "not supported" in refused(api, 501, "POST", f"/os-networks/{net['id']}/action",
                                      body={"associate_host": "h1"})
    assert "exactly one action" in refused(api, 400, "POST", f"/os-networks/{net['id']}/action",
                                           body={"disassociate": None, "disassociate_project": None})
    refused(api, 403, "POST", f"/os-networks/{net['id']}/action", token=ALPHA, body={"disassociate": None})
    assert ok(api.call("POST", f"/os-networks/{net['id']}/action", body={"disassociate_project": None}),
              202) is None
    assert ok(api.call("GET", f"/os-networks/{net['id']}"))["network"]["project_id"] is None
    ok(api.call("POST", "/os-networks/add", body={"id": net["id"]}, project="gamma"), 202)
    assert ok(api.call("POST", f"/os-networks/{net['id']}/action", body={"disassociate": None}), 202) is None
    assert ok(api.call("GET", f"/os-networks/{net['id']}"))["network"]["project_id"] is None


# -- instances, floating IPs, security groups (one project's world) --------------------------------

@pytest.fixture(scope="module")
def world(api):
    """alpha's and beta's networks, floating IPs in pool nova, and one instance each."""
    for label, cidr, vlan, project in (("alpha-net", "10.40.0.0/24", 340, "alpha"),
                                       ("beta-net", "10.41.0.0/24", 341, "beta")):
        ok(api.call("POST", "/os-networks", body={"network": {"label": label, "cidr": cidr, "vlan": vlan,
                                                             "project_id": project}}))
    created = ok(api.call("POST", "/os-floating-ips-bulk", body={
        "floating_ips_bulk_create": {"ip_range": "203.0.113.0/29", "host": "nethost1"}}))
    assert set(created["floating_ips_bulk_create"]) == NOVA_BULK_CREATE
    assert created["floating_ips_bulk_create"] == {"ip_range": "203.0.113.0/29", "pool": "nova",
                                                   "interface": "eth9"}
    a1 = ok(api.call("POST", "/instances", token=ALPHA, body={"instance": {"name": "a1"}}))["instance"]
    b1 = ok(api.call("POST", "/instances", token=BETA, body={"instance": {"name": "b1"}}))["instance"]
    return {"a1": a1, "b1": b1}


def test_instance_launch_show_and_scope(api, world):
    a1 = world["a1"]
    assert a1["name"] == "a1" and a1["project_id"] == "alpha" and a1["port_security_enabled"] is True
    (vif,) = a1["vifs"]
    assert vif["cidr"] == "10.40.0.0/24" and vif["fixed_ip"] == "10.40.0.3"
    assert vif["port_name"] == "tap" + vif["id"][:11]
    assert a1["security_groups"] == [{"name": "default"}]
    # launch is idempotent, as the CLI's
    assert ok(api.call("POST", "/instances", token=ALPHA, body={"instance": {"name": "a1"}}))["instance"] == a1
    assert ok(api.call("GET", "/instances/a1", token=ALPHA))["instance"] == a1
    listed = ok(api.call("GET", "/instances", token=ALPHA))["instances"]
    assert "a1" in {i["name"] for i in listed} and "b1" not in {i["name"] for i in listed}
    assert next(i for i in listed if i["name"] == "a1")["vifs"] == a1["vifs"]
    assert {"a1", "b1"} <= {i["name"] for i in ok(api.call("GET", "/instances"))["instances"]}
    cli = json.loads(_sdn(api.conf, "instance", "show", "a1", "--json").stdout)
    assert (cli["address"], cli["mac"]) == (vif["fixed_ip"], vif["mac_address"])
    # beta cannot see alpha's instance, and learns nothing from a clashing name
    assert refused(api, 404, "GET", "/instances/a1", token=BETA) == "no instance named a1; see 'sdn fixed list'"
    refused(api, 404, "DELETE", "/instances/a1", token=BETA)
    refused(api, 404, "PUT", "/instances/a1/port_security", token=BETA, body={"port_security_enabled": False})
    msg = refused(api, 409, "POST", "/instances", token=BETA, body={"instance": {"name": "a1"}})
    assert msg == "instance name a1 is taken; use another name" and "alpha" not in msg
    # the admin sees the CLI's message
    assert "already exists in project alpha" in refused(
        api, 409, "POST", "/instances", project="beta", body={"instance": {"name": "a1"}})
    # invalid input is the manager's 400
    assert "invalid instance name" in refused(api, 400, "POST", "/instances", token=ALPHA,
                                              body={"instance": {"name": "no spaces"}})
    # a network of another project: as if it did not exist
    beta_net = next(n for n in ok(api.call("GET", "/os-networks"))["networks"] if n["label"] == "beta-net")
    refused(api, 404, "POST", "/instances", token=ALPHA,
            body={"instance": {"name": "a9", "networks": [{"uuid": beta_net["id"]}]}})


def test_instance_port_security_and_address_pairs(api, world):
    body = ok(api.call("PUT", "/instances/a1/port_security", token=ALPHA, body={"port_security_enabled": False}))
    assert body["instance"]["port_security_enabled"] is False
    ok(api.call("PUT", "/instances/a1/port_security", token=ALPHA, body={"port_security_enabled": True}))
    pairs = ok(api.call("POST", "/instances/a1/allowed_address_pairs", token=ALPHA,
                        body={"allowed_address_pair": {"ip_address": "10.40.0.200"}}))["allowed_address_pairs"]
    mac = world["a1"]["vifs"][0]["mac_address"]
    assert pairs == [{"ip_address": "10.40.0.200", "mac_address": mac}]
    assert ok(api.call("GET", "/instances/a1/allowed_address_pairs", token=ALPHA))["allowed_address_pairs"] == pairs
    assert "already allows" in refused(api, 409, "POST", "/instances/a1/allowed_address_pairs", token=ALPHA,
                                       body={"allowed_address_pair": {"ip_address": "10.40.0.200"}})
    assert "invalid MAC" in refused(api, 400, "POST", "/instances/a1/allowed_address_pairs", token=ALPHA,
                                    body={"allowed_address_pair": {"ip_address": "10.40.0.201",
                                                                   "mac_address": "01:00:5e:00:00:01"}})
    assert ok(api.call("DELETE", "/instances/a1/allowed_address_pairs", token=ALPHA,
                       params={"ip_address": "10.40.0.200"}))["allowed_address_pairs"] == []
    refused(api, 404, "DELETE", "/instances/a1/allowed_address_pairs", token=ALPHA,
            params={"ip_address": "10.40.0.200"})


def test_floating_ips_as_nova(api, world):
    pools = ok(api.call("GET", "/os-floating-ip-pools", token=ALPHA))["floating_ip_pools"]
    assert all(set(p) == NOVA_POOL for p in pools) and {"name": "nova"} in pools
    info = ok(api.call("GET", "/os-floating-ips-bulk"))["floating_ip_info"]
    assert {f["address"] for f in info} >= {f"203.0.113.{i}" for i in range(1, 7)}
    assert all(set(f) == NOVA_BULK_INFO for f in info)
    assert {f["address"] for f in ok(api.call("GET", "/os-floating-ips-bulk/nethost1"))["floating_ip_info"]} \
        == {f"203.0.113.{i}" for i in range(1, 7)}
    refused(api, 404, "GET", "/os-floating-ips-bulk/nohost")
    fip = ok(api.call("POST", "/os-floating-ips", token=ALPHA, body={"pool": "nova"}))["floating_ip"]
    assert set(fip) == NOVA_FLOATING_IP and fip["pool"] == "nova" and fip["fixed_ip"] is None
    assert ok(api.call("GET", "/os-floating-ips", token=ALPHA))["floating_ips"] == [fip]
    assert ok(api.call("GET", f"/os-floating-ips/{fip['id']}", token=ALPHA))["floating_ip"] == fip
    # beta does not see alpha's floating IP
    assert ok(api.call("GET", "/os-floating-ips", token=BETA))["floating_ips"] == []
    refused(api, 404, "GET", f"/os-floating-ips/{fip['id']}", token=BETA)
    refused(api, 404, "DELETE", f"/os-floating-ips/{fip['id']}", token=BETA)
    assert "no free floating IP left in pool empty" in refused(api, 404, "POST", "/os-floating-ips",
                                                                token=ALPHA, body={"pool": "empty"})
    # associate with a1 (nova's addFloatingIp server action)
    ok(api.call("POST", "/instances/a1/action", token=ALPHA, body={"addFloatingIp": {"address": fip["ip"]}}), 202)
    shown = ok(api.call("GET", f"/os-floating-ips/{fip['id']}", token=ALPHA))["floating_ip"]
    assert shown["fixed_ip"] == "10.40.0.3" and shown["instance_id"] == world["a1"]["id"]
    # refusals while associated: deallocate, bulk delete, associate again, beta's instance
    assert "disassociate it before you deallocate it" in refused(api, 409, "DELETE",
                                                                 f"/os-floating-ips/{fip['id']}", token=ALPHA)
    assert "disassociate it before you delete it" in refused(api, 409, "PUT", "/os-floating-ips-bulk/delete",
                                                             body={"ip_range": "203.0.113.0/29"})
    refused(api, 404, "POST", "/instances/b1/action", token=ALPHA, body={"addFloatingIp": {"address": fip["ip"]}})
    assert "not allocated to project beta" in refused(
        api, 404, "POST", "/instances/b1/action", token=BETA, body={"removeFloatingIp": {"address": fip["ip"]}})
    ok(api.call("POST", "/instances/a1/action", token=ALPHA, body={"removeFloatingIp": {"address": fip["ip"]}}), 202)
    assert "is not associated" in refused(api, 409, "POST", "/instances/a1/action", token=ALPHA,
                                          body={"removeFloatingIp": {"address": fip["ip"]}})
    assert ok(api.call("DELETE", f"/os-floating-ips/{fip['id']}", token=ALPHA), 202) is None
    assert ok(api.call("GET", "/os-floating-ips", token=ALPHA))["floating_ips"] == []


def test_floating_bulk_create_and_delete(api):
    assert "overlaps network 10.40.0.0/24 (alpha-net)" in refused(api, 409, "POST", "/os-floating-ips-bulk", body={
        "floating_ips_bulk_create": {"ip_range": "10.40.0.128/28"}})
    assert refused(api, 400, "POST", "/os-floating-ips-bulk", body={
        "floating_ips_bulk_create": {"ip_range": "203.0.113.300"}}).startswith("invalid")
    ok(api.call("POST", "/os-floating-ips-bulk", body={"floating_ips_bulk_create": {
        "ip_range": "198.51.100.16/30", "pool": "extra", "interface": "eth7"}}))
    assert {"name": "extra"} in ok(api.call("GET", "/os-floating-ip-pools"))["floating_ip_pools"]
    assert ok(api.call("PUT", "/os-floating-ips-bulk/delete", body={"ip_range": "198.51.100.16/30"})) == \
        {"floating_ips_bulk_delete": "198.51.100.16/30"}
    refused(api, 404, "PUT", "/os-floating-ips-bulk/delete", body={"ip_range": "198.51.100.16/30"})


def test_security_groups_and_rules_as_nova(api, world):
    g = ok(api.call("POST", "/os-security-groups", token=ALPHA,
                    body={"security_group": {"name": "web", "description": "web servers"}}))["security_group"]
    assert set(g) == NOVA_SECURITY_GROUP and g["tenant_id"] == "alpha" and g["rules"] == []
    assert "already has a security group 'web'" in refused(
        api, 409, "POST", "/os-security-groups", token=ALPHA, body={"security_group": {"name": "web"}})
    rule = ok(api.call("POST", "/os-security-group-rules", token=ALPHA, body={"security_group_rule": {
        "parent_group_id": g["id"], "ip_protocol": "tcp", "from_port": 22, "to_port": 22,
        "cidr": "10.0.0.0/24"}}))["security_group_rule"]
    assert set(rule) == NOVA_RULE
    assert (rule["ip_protocol"], rule["from_port"], rule["to_port"], rule["ip_range"], rule["group"],
            rule["parent_group_id"]) == ("tcp", 22, 22, {"cidr": "10.0.0.0/24"}, {}, g["id"])
    default = next(x for x in ok(api.call("GET", "/os-security-groups", token=ALPHA))["security_groups"]
                   if x["name"] == "default")
    by_group = ok(api.call("POST", "/os-security-group-rules", token=ALPHA, body={"security_group_rule": {
        "parent_group_id": g["id"], "ip_protocol": "icmp", "group_id": default["id"]}}))["security_group_rule"]
    assert by_group["group"] == {"name": "default", "tenant_id": "alpha"} and by_group["ip_range"] == {}
    shown = ok(api.call("GET", f"/os-security-groups/{g['id']}", token=ALPHA))["security_group"]
    assert [r["id"] for r in shown["rules"]] == [rule["id"], by_group["id"]]
    assert all(set(r) == NOVA_RULE for r in shown["rules"])
    listed = ok(api.call("GET", "/os-security-groups", token=ALPHA))["security_groups"]
    assert all(set(x) == NOVA_SECURITY_GROUP and x["tenant_id"] == "alpha" for x in listed)
    # refusals: a duplicate rule, bad ports, beta touching alpha's group
    assert "already has this rule" in refused(api, 409, "POST", "/os-security-group-rules", token=ALPHA, body={
        "security_group_rule": {"parent_group_id": g["id"], "ip_protocol": "tcp", "from_port": 22,
                                "to_port": 22, "cidr": "10.0.0.0/24"}})
    refused(api, 400, "POST", "/os-security-group-rules", token=ALPHA, body={"security_group_rule": {
        "parent_group_id": g["id"], "ip_protocol": "tcp", "from_port": 80, "to_port": 70000}})
    refused(api, 404, "GET", f"/os-security-groups/{g['id']}", token=BETA)
    refused(api, 404, "POST", "/os-security-group-rules", token=BETA, body={"security_group_rule": {
        "parent_group_id": g["id"], "ip_protocol": "udp", "from_port": 53, "to_port": 53}})
    refused(api, 404, "DELETE", f"/os-security-group-rules/{rule['id']}", token=BETA)
    # instance membership (nova's server actions) and the server's groups
    ok(api.call("POST", "/instances/a1/action", token=ALPHA, body={"addSecurityGroup": {"name": "web"}}), 202)
    groups = ok(api.call("GET", "/instances/a1/os-security-groups", token=ALPHA))["security_groups"]
    assert sorted(x["name"] for x in groups) == ["default", "web"]
    assert all(set(x) == NOVA_SECURITY_GROUP for x in groups)
    assert "in use by 1 instance(s) (a1)" in refused(api, 409, "DELETE", f"/os-security-groups/{g['id']}",
                                                     token=ALPHA)
    ok(api.call("POST", "/instances/a1/action", token=ALPHA, body={"removeSecurityGroup": {"name": "web"}}), 202)
    assert "takes an object, not null" in refused(api, 400, "POST", "/instances/a1/action", token=ALPHA,
                                                  body={"addSecurityGroup": None})
    assert "exactly one action" in refused(api, 400, "POST", "/instances/a1/action", token=ALPHA, body={})
    assert "is not in security group" in refused(api, 400, "POST", "/instances/a1/action", token=ALPHA,
                                                 body={"removeSecurityGroup": {"name": "web"}})
    assert ok(api.call("DELETE", f"/os-security-group-rules/{by_group['id']}", token=ALPHA), 202) is None
    assert ok(api.call("DELETE", f"/os-security-group-rules/{rule['id']}", token=ALPHA), 202) is None
    refused(api, 404, "DELETE", f"/os-security-group-rules/{rule['id']}", token=ALPHA)
    assert ok(api.call("DELETE", f"/os-security-groups/{g['id']}", token=ALPHA), 202) is None
    refused(api, 404, "GET", f"/os-security-groups/{g['id']}", token=ALPHA)


def test_fixed_ip_actions_and_instance_delete(api, world):
    net = ok(api.call("POST", "/os-networks", body={"network": {"label": "alpha-two", "cidr": "10.42.0.0/24",
                                                               "vlan": 342, "project_id": "alpha"}}))["network"]
    ok(api.call("POST", "/instances", token=ALPHA, body={"instance": {"name": "a2"}}))
    ok(api.call("POST", "/instances/a2/action", token=ALPHA, body={"addFixedIp": {"networkId": net["id"]}}), 202)
    vifs = ok(api.call("GET", "/instances/a2", token=ALPHA))["instance"]["vifs"]
    assert [v["cidr"] for v in vifs] == ["10.40.0.0/24", "10.42.0.0/24"]
    assert "already has a VIF on network" in refused(api, 409, "POST", "/instances/a2/action", token=ALPHA,
                                                      body={"addFixedIp": {"networkId": net["id"]}})
    ok(api.call("POST", "/instances/a2/action", token=ALPHA,
                body={"removeFixedIp": {"address": vifs[1]["fixed_ip"]}}), 202)
    assert "last VIF" in refused(api, 409, "POST", "/instances/a2/action", token=ALPHA,
                                 body={"removeFixedIp": {"address": vifs[0]["fixed_ip"]}})
    # the network with a2's fixed IP cannot go; without, it can
    alpha_net = next(n for n in ok(api.call("GET", "/os-networks"))["networks"] if n["label"] == "alpha-net")
    msg = refused(api, 409, "DELETE", f"/os-networks/{alpha_net['id']}")
    assert "still has 2 allocated fixed IP(s)" in msg
    assert refused(api, 409, "POST", f"/os-networks/{alpha_net['id']}/action",
                   body={"disassociate_project": None}) == msg
    assert ok(api.call("DELETE", "/instances/a2", token=ALPHA), 204) is None
    refused(api, 404, "GET", "/instances/a2", token=ALPHA)
    ok(api.call("DELETE", f"/os-networks/{net['id']}"), 202)


def test_concurrent_requests_get_distinct_addresses(api, world):
    from concurrent.futures import ThreadPoolExecutor

    names = [f"par{i}" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        launched = list(pool.map(lambda n: api.call("POST", "/instances", token=ALPHA,
                                                    body={"instance": {"name": n}}), names))
        allocated = list(pool.map(lambda _: api.call("POST", "/os-floating-ips", token=ALPHA), range(4)))
    addresses = [ok(r)["instance"]["vifs"][0]["fixed_ip"] for r in launched]
    assert len(set(addresses)) == 8
    ips = [ok(r)["floating_ip"]["ip"] for r in allocated]
    assert len(set(ips)) == 4
    with ThreadPoolExecutor(8) as pool:
        assert {r.status_code for r in pool.map(lambda n: api.call("DELETE", f"/instances/{n}", token=ALPHA),
                                                names)} == {204}
    for fip in ok(api.call("GET", "/os-floating-ips", token=ALPHA))["floating_ips"]:
        ok(api.call("DELETE", f"/os-floating-ips/{fip['id']}", token=ALPHA), 202)


def _ovs_or_skip() -> None:
    if not Path("/var/run/openvswitch/db.sock").exists() or os.geteuid() != 0:
        pytest.skip("no ovsdb-server (or not root): the plug routes talk to Open vSwitch")


def test_plug_state_needs_an_existing_bridge(api, world):
    _ovs_or_skip()
    msg = refused(api, 404, "GET", "/instances/a1/plug", token=ALPHA, params={"bridge": "br-api-nope"})
    assert msg.startswith("no Open vSwitch bridge br-api-nope")
    refused(api, 404, "GET", "/instances/a1/plug", token=BETA, params={"bridge": "br-api-nope"})
    refused(api, 404, "PUT", "/instances/a1/plug", token=ALPHA, body={"bridge": "br-api-nope"})


def test_plug_and_unplug_on_a_bridge_of_our_own(api, world):
    _ovs_or_skip()
    bridge = f"brapi{os.getpid() % 100000}"
    subprocess.run(["ovs-vsctl", "--may-exist", "add-br", bridge, "--", "set", "bridge", bridge,
                    "datapath_type=netdev"], check=True, timeout=30)
    try:
        port = world["a1"]["vifs"][0]["port_name"]
        state = ok(api.call("GET", "/instances/a1/plug", token=ALPHA, params={"bridge": bridge}))["plug"]
        assert state["bridge"] == bridge and [(p["port_name"], p["plugged"]) for p in state["ports"]] == \
            [(port, False)]
        state = ok(api.call("PUT", "/instances/a1/plug", token=ALPHA,
                            body={"bridge": bridge, "internal": True}))["plug"]
        assert [(p["port_name"], p["plugged"]) for p in state["ports"]] == [(port, True)]
        ports = subprocess.run(["ovs-vsctl", "list-ports", bridge], capture_output=True, text=True,
                               check=True, timeout=30).stdout.split()
        assert ports == [port]
        iface_id = subprocess.run(["ovs-vsctl", "get", "Interface", port, "external_ids:iface-id"],
                                  capture_output=True, text=True, check=True, timeout=30).stdout.strip()
        assert iface_id.strip('"') == world["a1"]["vifs"][0]["id"]
        state = ok(api.call("DELETE", "/instances/a1/plug", token=ALPHA, params={"bridge": bridge}))["plug"]
        assert [(p["port_name"], p["plugged"]) for p in state["ports"]] == [(port, False)]
    finally:
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", bridge], timeout=30)


def test_launch_with_networks_groups_and_limits(api, world):
    nets = {n["label"]: n for n in ok(api.call("GET", "/os-networks", token=ALPHA))["networks"]}
    assert "beta-net" not in nets
    g = ok(api.call("POST", "/os-security-groups", token=ALPHA,
                    body={"security_group": {"name": "db"}}))["security_group"]
    inst = ok(api.call("POST", "/instances", token=ALPHA, body={"instance": {
        "name": "a3", "networks": [{"uuid": nets["alpha-net"]["id"]}], "security_groups": [{"name": "db"}],
        "rx_kbps": 1000, "tx_kbps": 0}}))["instance"]
    assert [v["network_label"] for v in inst["vifs"]] == ["alpha-net"]
    assert inst["security_groups"] == [{"name": "db"}]
    assert (inst["rx_kbps"], inst["tx_kbps"]) == (1000, None)
    assert "no security group 'nope'" in refused(api, 404, "POST", "/instances", token=ALPHA, body={
        "instance": {"name": "a4", "security_groups": [{"name": "nope"}]}})
    assert "--rx-kbps" in refused(api, 400, "POST", "/instances", token=ALPHA, body={
        "instance": {"name": "a4", "rx_kbps": -1}})
    ok(api.call("DELETE", "/instances/a3", token=ALPHA), 204)
    ok(api.call("DELETE", f"/os-security-groups/{g['id']}", token=ALPHA), 202)


# -- start-up refusals and TLS -------------------------------------------------------------------

def test_start_refuses_a_readable_token_file_and_half_tls(tmp_path):
    server = Server(tmp_path)
    assert _sdn(server.conf, "db", "sync").returncode == 0
    server.tokens.chmod(0o644)
    run = _sdn(server.conf, "api")
    assert run.returncode != 0 and "chmod 600" in run.stderr and "Traceback" not in run.stderr
    server.tokens.chmod(0o600)
    server.conf.write_text(server.conf.read_text() + f"cert_file = {tmp_path / 'nope.pem'}\n")
    run = _sdn(server.conf, "api")
    assert run.returncode != 0 and "cert_file and key_file go together" in run.stderr


def _self_signed(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sdn-api-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "api.pem", directory / "api.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def test_tls_with_a_self_signed_certificate(tmp_path):
    cert, key = _self_signed(tmp_path)
    server = Server(tmp_path, scheme="https", extra=f"cert_file = {cert}\nkey_file = {key}\n").start()
    try:
        server.verify = str(cert)
        assert ok(server.call("GET", "/os-networks")) == {"networks": []}
        assert server.call("GET", "/os-networks", token=None).status_code == 401
        # the certificate is checked: an unknown CA is refused by the client ...
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(server.url + "/os-networks", timeout=10)
        # ... and plain HTTP gets no API answer
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://127.0.0.1:{server.port}/os-networks", timeout=10,
                         headers={"Authorization": f"Bearer {ADMIN}"})
    finally:
        server.stop()


def test_token_file_changes_apply_without_restart(api):
    new = "gamma-0123456789abcdef"
    assert api.call("GET", "/os-networks", token=new).status_code == 401
    original = api.tokens.read_text()
    try:
        api.tokens.write_text(original + f"{new} project:gamma\n")
        os.utime(api.tokens, (time.time() + 5, time.time() + 5))
        assert ok(api.call("GET", "/os-floating-ips", token=new)) == {"floating_ips": []}
    finally:
        api.tokens.write_text(original)
        os.utime(api.tokens, (time.time() + 10, time.time() + 10))
    assert api.call("GET", "/os-networks", token=new).status_code == 401
