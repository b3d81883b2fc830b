"""The metadata service: the pure documents, the one-transaction read, the HTTP edge, the verb."""

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdn import cli, exception
from sdn.floating import FloatingIps
from sdn.metadata import document, server, store
from sdn.metadata.document import InstanceRecord, NetworkInfo, PortInfo, Settings
from tests.unit.conftest import write_conf

NET = NetworkInfo(id=1, label="alpha", cidr="10.0.0.0/24", netmask="255.255.255.0",
                  gateway="10.0.0.1", dns=("10.0.0.2", "8.8.4.4"))
UUID = "3f0c1c2e-6b8f-4d3a-9a55-0d8c5e0e7a11"
VIF = "9b7a6c1e-0f2d-4e3b-8c4d-5e6f7a8b9c0d"
REC = InstanceRecord(uuid=UUID, name="vm1", hostname="vm1", project_id="alpha",
                     ports=(PortInfo(vif_uuid=VIF, mac="fa:16:3e:00:00:05", network=NET,
                                     addresses=("10.0.0.5",)),),
                     floating_ips=("203.0.113.7",))

EXPECTED = {
    "links": [{"id": "tap9b7a6c1e-0f", "vif_id": VIF, "type": "ovs", "mtu": None,
               "ethernet_mac_address": "fa:16:3e:00:00:05"}],
    "networks": [{"id": "network0", "type": "ipv4", "link": "tap9b7a6c1e-0f",
                  "ip_address": "10.0.0.5", "netmask": "255.255.255.0",
                  "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.0.1"}],
                  "network_id": "1",
                  "services": [{"type": "dns", "address": "10.0.0.2"},
                               {"type": "dns", "address": "8.8.4.4"}]}],
    "services": [{"type": "dns", "address": "10.0.0.2"}, {"type": "dns", "address": "8.8.4.4"}],
}


def get(path, record=REC, address="10.0.0.5", **kw):
    return document.respond(record, address, path, Settings(**kw))


# -- the pure documents ---------------------------------------------------------------------

def test_network_data_is_openstacks_format_exactly():
    r = get("/openstack/latest/network_data.json")
    assert (r.status, r.content_type) == (200, "application/json")
    assert json.loads(r.body) == EXPECTED


def test_flatmanager_guests_get_addresses_only_with_flat_injected(make_conf):
    """nova's FlatManager told a guest its address only with flat_injected (into the image)."""
    from sdn.metadata.server import settings_from
    told = json.loads(get("/openstack/latest/network_data.json").body)
    assert told["networks"] == EXPECTED["networks"]
    untold = json.loads(get("/openstack/latest/network_data.json", addresses=False).body)
    assert untold == {**EXPECTED, "networks": []}
    assert settings_from(make_conf(network_manager="flat")).addresses is False
    assert settings_from(make_conf(network_manager="flat", flat_injected=True)).addresses is True
    assert settings_from(make_conf(network_manager="flatdhcp")).addresses is True


def test_link_type_and_mtu_follow_the_settings():
    doc = json.loads(get("/openstack/latest/network_data.json", link_type="bridge", mtu=1450).body)
    assert (doc["links"][0]["type"], doc["links"][0]["mtu"]) == ("bridge", 1450)


def test_several_vifs_ipv6_and_dns_once():
    other = NetworkInfo(id=2, label="beta", cidr="10.1.0.0/25", netmask="255.255.255.128",
                        gateway="10.1.0.1", dns=("8.8.4.4",), cidr_v6="fd00:0:0:2::/64")
    rec = InstanceRecord(uuid=UUID, name="vm1", hostname="vm1", project_id="alpha", ports=(
        REC.ports[0], PortInfo(vif_uuid="aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
                               mac="fa:16:3e:00:00:06", network=other, addresses=("10.1.0.9",))))
    doc = document.network_data(rec)
    assert [link["id"] for link in doc["links"]] == ["tap9b7a6c1e-0f", "tapaaaaaaaa-bb"]
    assert [(n["id"], n["type"], n["link"], n["ip_address"], n["netmask"], n["network_id"])
            for n in doc["networks"]] == [
        ("network0", "ipv4", "tap9b7a6c1e-0f", "10.0.0.5", "255.255.255.0", "1"),
        ("network1", "ipv4", "tapaaaaaaaa-bb", "10.1.0.9", "255.255.255.128", "2"),
        # EUI-64 of fa:16:3e:00:00:06 in the network's /64, default route via its first address
        ("network2", "ipv6", "tapaaaaaaaa-bb", "fd00::2:f816:3eff:fe00:6", "ffff:ffff:ffff:ffff::",
         "2")]
    assert doc["networks"][2]["routes"] == [{"network": "::", "netmask": "::", "gateway": "fd00:0:0:2::1"}]
    assert doc["services"] == [{"type": "dns", "address": "10.0.0.2"}, {"type": "dns", "address": "8.8.4.4"}]


def test_no_gateway_no_route():
    net = NetworkInfo(id=3, label="x", cidr="10.2.0.0/24", netmask="255.255.255.0", gateway=None)
    rec = InstanceRecord(uuid=UUID, name="n", hostname="n", project_id="p",
                         ports=(PortInfo(VIF, "fa:16:3e:00:00:07", net, ("10.2.0.3",)),))
    assert document.network_data(rec)["networks"][0]["routes"] == []
    assert document.network_data(rec)["services"] == []


def test_meta_data_json_and_ec2_basics():
    md = json.loads(get("/openstack/latest/meta_data.json").body)
    assert md["uuid"] == UUID and md["hostname"] == "vm1" and md["project_id"] == "alpha"
    values = {k: get(f"/latest/meta-data/{k}").body.decode() for k in document.EC2_KEYS}
    assert values == {"hostname": "vm1.novalocal", "local-hostname": "vm1.novalocal",
                      "instance-id": "i-3f0c1c2e", "local-ipv4": "10.0.0.5",
                      "public-ipv4": "203.0.113.7"}
    assert get("/latest/meta-data/hostname", domain="").body == b"vm1"
    no_fip = InstanceRecord(uuid=UUID, name="vm1", hostname="vm1", project_id="alpha", ports=REC.ports)
    assert get("/latest/meta-data/public-ipv4", record=no_fip).body == b""
    assert get("/2009-04-04/meta-data/instance-id").body == b"i-3f0c1c2e"
    assert get("/latest/meta-data/").body.decode().splitlines() == list(document.EC2_KEYS)


@pytest.mark.parametrize("path,body", [
    ("/", b"latest\n2009-04-04"), ("/openstack", b"latest"), ("/openstack/", b"latest"),
    ("/openstack/latest/", b"meta_data.json\nnetwork_data.json"), ("/latest", b"meta-data/"),
    ("//openstack//latest/network_data.json?x=1", None),
    ("http://169.254.169.254/openstack/latest/network_data.json", None)])
def test_listings_and_path_forms(path, body):
    r = get(path)
    assert r.status == 200
    if body is not None:
        assert r.body == body


@pytest.mark.parametrize("path", [
    "/openstack/2012-08-10/network_data.json", "/openstack/latest/user_data", "/latest/user-data",
    "/latest/meta-data/nope", "/latest/meta-data/hostname/x", "/nope", "/../etc/passwd",
    "/openstack/latest/../latest/network_data.json", "", "*", "no-slash"])
def test_unknown_paths_404(path):
    assert get(path).status == 404


def test_unknown_source_gets_404_for_everything():
    for path in ("/", "/openstack/latest/network_data.json", "/latest/meta-data/local-ipv4"):
        r = document.respond(None, "10.9.9.9", path)
        assert (r.status, r.body) == (404, b"404 Not Found\n")


@settings(max_examples=300, deadline=None)
@given(path=st.text(max_size=200), address=st.text(max_size=40))
def test_any_path_any_address_never_raises(path, address):
    r = document.respond(REC, address, path)
    assert r.status in (200, 404) and isinstance(r.body, bytes)


def test_a_broken_record_is_a_500_not_an_exception():
    broken = InstanceRecord(uuid=None, name="x", hostname=None, project_id="p")   # type: ignore
    assert document.respond(broken, "10.0.0.5", "/latest/meta-data/instance-id").status == 500


# -- the read: one read transaction, nothing written ------------------------------------------

def test_load_instance_reads_the_allocation(make_manager, engine):
    mgr = make_manager("vlan")
    mgr.create_networks("t", "10.40.0.0/24", 2, 64, dns1="10.40.0.53")
    alloc = mgr.allocate_for_instance("v1", "alpha")
    mgr.allocate_for_instance("w1", "beta")
    fips = FloatingIps(engine, mgr.conf)
    fips.create("203.0.113.0/29")
    fip = fips.allocate("alpha")
    fips.associate(fip, "v1", "alpha")
    from sdn.db import api
    before = api.current_revision(engine)
    rec = store.load_instance(engine, alloc["address"])
    assert api.current_revision(engine) == before
    assert (rec.name, rec.hostname, rec.project_id, rec.floating_ips) == ("v1", "v1", "alpha", (fip,))
    (port,) = rec.ports
    assert (port.vif_uuid, port.mac, port.addresses) == (alloc["vif_uuid"], alloc["mac"], (alloc["address"],))
    assert (port.network.cidr, port.network.gateway, port.network.dns) == (
        alloc["cidr"], alloc["gateway"], ("10.40.0.53",))
    doc = document.network_data(rec)
    assert doc["networks"][0]["ip_address"] == alloc["address"]
    assert doc["links"][0]["id"] == alloc["port_name"]
    for unknown in ("10.40.0.60", "10.99.0.1", "not an address", "", "::1"):
        assert store.load_instance(engine, unknown) is None
    mgr.deallocate_for_instance("v1")
    assert store.load_instance(engine, alloc["address"]) is None


# -- the HTTP edge ---------------------------------------------------------------------------

class FakeApp:
    def __init__(self):
        self.fail = False

    def respond(self, address, path):
        if self.fail:
            raise RuntimeError("database is locked\nsecond line")
        rec = REC if address == "127.0.0.1" else None
        return document.respond(rec, "10.0.0.5", path)


@pytest.fixture
def http(caplog):
    caplog.set_level(logging.INFO, logger="sdn.metadata")
    app = FakeApp()
    srv = server.listen("127.0.0.1", 0, app)
    import threading
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv, app, caplog
    srv.shutdown()
    srv.server_close()


def raw(srv, data: bytes, shut=True) -> bytes:
    with socket.create_connection(srv.server_address[:2], timeout=5) as s:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "sdn.metadata"]


def wait_lines(caplog, n):
    deadline = time.monotonic() + 5
    while len(lines(caplog)) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return lines(caplog)


def test_http_get_head_and_one_log_line_each(http):
    srv, _, caplog = http
    url = f"http://127.0.0.1:{srv.server_address[1]}/openstack/latest/network_data.json"
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.headers["Content-Type"] == "application/json"
        assert json.loads(r.read()) == EXPECTED
    reply = raw(srv, b"HEAD /latest/meta-data/local-ipv4 HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 200") and reply.endswith(b"\r\n\r\n")
    got = wait_lines(caplog, 2)
    assert len(got) == 2
    assert got[0].startswith("127.0.0.1 GET '/openstack/latest/network_data.json' 200 ")
    assert got[1] == "127.0.0.1 HEAD '/latest/meta-data/local-ipv4' 200 8"


@pytest.mark.parametrize("data,status", [
    (b"\x00\xff\xfe garbage\r\n\r\n", b"400"), (b"GET\r\n\r\n", b"400"),
    (b"POST /openstack/latest/network_data.json HTTP/1.0\r\n\r\n", b"501"),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.0\r\n\r\n", b"414"),
    (b"GET /x HTTP/9.9\r\n\r\n", b"505"),
    (b"GET /openstack/latest/network_data.json HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 200 + b"\r\n",
     b"431"),
    (b"GET /nope HTTP/1.0\r\n\r\n", b"404"),
])
def test_any_bytes_in_never_a_traceback_out(http, capsys, data, status):
    srv, _, caplog = http
    reply = raw(srv, data)
    # a status line, or for an HTTP/0.9-style request line the error body alone
    assert reply.split(b" ", 2)[1] == status or reply.startswith(status + b" "), reply[:200]
    assert b"Traceback" not in reply
    got = wait_lines(caplog, 1)
    assert len(got) == 1 and status.decode() in got[0], got
    assert "Traceback" not in capsys.readouterr().err


def test_empty_connection_and_an_app_error(http, capsys):
    srv, app, caplog = http
    assert raw(srv, b"") == b""
    app.fail = True
    reply = raw(srv, b"GET /openstack/latest/network_data.json HTTP/1.0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.0 500") and b"locked" not in reply
    got = wait_lines(caplog, 1)
    assert len(got) == 1 and " 500 " in got[0] and "RuntimeError: database is locked" in got[0]
    assert "\n" not in got[0] and "Traceback" not in capsys.readouterr().err


def test_client_going_away_is_one_line(http, capsys):
    srv, _, caplog = http
    with socket.create_connection(srv.server_address[:2], timeout=5) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.sendall(b"GET /openstack/latest/network_data.json HTTP/1.0\r\n")   # no end of headers
    time.sleep(0.3)
    assert "Traceback" not in capsys.readouterr().err
    assert all("\n" not in line for line in lines(caplog))


# -- the verb ----------------------------------------------------------------------------------

def _conf(tmp_path, db_url, port):
    return write_conf(tmp_path / "meta.conf", DEFAULT={"metadata_host": "127.0.0.1", "metadata_port": port},
                      database={"connection": db_url})


def test_verb_port_taken_is_one_line(tmp_path, db_url, engine, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = cli.main(["--config-file", _conf(tmp_path, db_url, port), "metadata"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"sdn: error: cannot listen on 127.0.0.1:{port}: the port is already in use")


def test_listen_other_errors_are_sdn_errors():
    with pytest.raises(exception.SdnError, match="not an address of this host"):
        server.listen("192.0.2.77", 0, FakeApp())


def test_verb_without_database_is_one_line(tmp_path, capsys):
    conf = _conf(tmp_path, f"sqlite:///{tmp_path}/none/sdn.sqlite", 1)
    assert cli.main(["--config-file", conf, "metadata"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sdn: error: ") and err.count("\n") == 1


def test_verb_serves_and_stops_cleanly_on_sigterm(tmp_path, db_url, engine, make_manager):
    mgr = make_manager("flat")
    mgr.create_networks("flat", "10.41.0.0/24", 1, 256)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "sdn.cli", "--config-file", _conf(tmp_path, db_url, port),
                             "metadata"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert "listening on 127.0.0.1:" in proc.stderr.readline()
        with pytest.raises(urllib.error.HTTPError) as err:    # 127.0.0.1 is no instance's
            urllib.request.urlopen(f"http://127.0.0.1:{port}/openstack/latest/network_data.json", timeout=5)
        assert err.value.code == 404
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rest = proc.stderr.read()
    assert "127.0.0.1 GET '/openstack/latest/network_data.json' 404" in rest
    assert "metadata service stopped" in rest and "Traceback" not in rest


def test_errno_names_used_exist():
    assert errno.EADDRINUSE and errno.EADDRNOTAVAIL
