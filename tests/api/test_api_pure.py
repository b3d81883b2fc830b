"""The API's pure parts: token file parsing, who sees what, error statuses, nova's shapes."""

from __future__ import annotations

import pytest

from sdn import exception
from sdn.api import auth, errors, views

TOKEN = "t" * 16


def test_token_file_lines_scopes_and_comments():
    tokens = auth.parse_tokens(f"# comment\n\n{TOKEN}a admin  # the operator\n{TOKEN}b project:alpha\n")
    assert tokens == {TOKEN + "a": auth.Principal(admin=True),
                      TOKEN + "b": auth.Principal(admin=False, project="alpha")}


@pytest.mark.parametrize("text, expected", [
    (f"{TOKEN}", "expected 'TOKEN SCOPE'"),
    (f"{TOKEN} admin extra", "got 3 field(s)"),
    ("short admin", "use at least 16"),
    (f"{TOKEN} root", "scope 'root' is not admin or project:<id>"),
    (f"{TOKEN} project:", "is not admin or project:<id>"),
    (f"{TOKEN} admin\n{TOKEN} project:a", "line 2: this token is already listed"),
])
def test_token_file_refusals_name_the_line(text, expected):
    with pytest.raises(exception.ConfigError) as err:
        auth.parse_tokens(text, "tokens")
    assert expected in str(err.value) and str(err.value).startswith("tokens line")


def test_token_file_must_be_private(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"{TOKEN} admin\n")
    path.chmod(0o640)
    with pytest.raises(exception.ConfigError, match="chmod 600"):
        auth.TokenFile(str(path)).load()
    path.chmod(0o600)
    tokens = auth.TokenFile(str(path))
    tokens.load()
    assert tokens.lookup(TOKEN) == auth.Principal(admin=True)
    assert tokens.lookup(TOKEN + "x") is None and tokens.lookup("") is None
    with pytest.raises(exception.ConfigError, match="token_file is not set"):
        auth.TokenFile(None)


def test_principal_visibility():
    admin, alpha = auth.Principal(admin=True), auth.Principal(admin=False, project="alpha")
    as_alpha = auth.Principal(admin=True, project="alpha")
    assert admin.sees("beta") and admin.owns("beta") and admin.sees(None)
    assert alpha.sees("alpha") and alpha.sees(None) and not alpha.sees("beta")
    assert alpha.owns("alpha") and not alpha.owns(None) and not alpha.owns("beta")
    assert as_alpha.sees("alpha") and not as_alpha.sees("beta") and not as_alpha.owns("beta")


@pytest.mark.parametrize("err, status", [
    (exception.InvalidCidr(cidr="x", reason="y"), 400),
    (exception.InvalidInstanceName(name="a b"), 400),
    (exception.NetworkNotFound(what="with id 3"), 404),
    (exception.InstanceNotFound(name="a"), 404),
    (exception.FloatingIpNotAllocated(address="1.2.3.4", project="p"), 404),
    (exception.NoMoreFloatingIps(pool="nova"), 404),
    (exception.CidrConflict(cidr="a", existing="b", label="c"), 409),
    (exception.NetworkInUse(cidr="a", count=1), 409),
    (exception.SecurityGroupExists(project="p", name="web"), 409),
    (exception.FloatingIpInUse(address="a", action="delete"), 409),
    (exception.DatabaseLocked(url="u", reason="r"), 503),
])
def test_status_of_errors(err, status):
    assert errors.status_of(err) == status
    fault = errors.fault(status, str(err))
    (name,) = fault
    assert fault[name] == {"code": status, "message": str(err)}


def test_network_view_admin_and_user_fields():
    net = {"id": 7, "label": "n", "cidr": "10.0.0.0/24", "netmask": "255.255.255.0", "gateway": "10.0.0.1",
           "broadcast": "10.0.0.255", "dhcp_start": "10.0.0.3", "dns1": None, "dns2": None, "vlan": 100,
           "bridge": "br100", "bridge_interface": None, "project_id": "p", "vpn_public_address": "1.2.3.4",
           "vpn_public_port": 1000, "vpn_private_address": "10.0.0.2", "cidr_v6": "fd00:0:0:1::/64",
           "host": "h", "created_at": "2026-01-01T00:00:00", "updated_at": None}
    full = views.network(net, True, dhcp=True, injected=False, mtu=1400)
    assert set(full) == set(views.NETWORK_FIELDS + views.NETWORK_ADMIN_FIELDS) and len(full) == 32
    assert (full["id"], full["gateway_v6"], full["netmask_v6"], full["dhcp_server"], full["mtu"]) == \
        ("7", "fd00:0:0:1::1", "64", "10.0.0.1", 1400)
    user = views.network(net, False, dhcp=False, injected=False, mtu=None)
    assert set(user) == set(views.NETWORK_FIELDS) and "project_id" not in user
