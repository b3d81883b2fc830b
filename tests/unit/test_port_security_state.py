"""Per-VIF port security and allowed address pairs in state: validated, one transaction, and
visible to flow compilation through load_views."""

import pytest

from sdn import exception
from sdn.db import api

pytestmark = pytest.mark.both_databases  # every test using the database runs on SQLite and PostgreSQL


@pytest.fixture
def vlan(make_manager, engine):
    mgr = make_manager("vlan")
    mgr.create_networks("t", "10.40.0.0/24", 1, 64)
    mgr.allocate_for_instance("v1", "p")
    return mgr


def vif_view(engine):
    (vif,) = api.load_views(engine).vifs
    return vif


def test_pairs_reach_the_view_and_default_to_the_vifs_mac(vlan, engine):
    mac = vlan.get_allocation("v1")["mac"]
    vlan.add_address_pair("v1", "10.40.0.32/28")
    vlan.add_address_pair("v1", "10.40.0.40/32", mac="FA-16-3E-11-22-33")
    assert vif_view(engine).allowed_address_pairs == ((mac, "10.40.0.32/28"),
                                                      ("fa:16:3e:11:22:33", "10.40.0.40"))
    vlan.remove_address_pair("v1", "10.40.0.40", mac="fa:16:3e:11:22:33")
    assert vif_view(engine).allowed_address_pairs == ((mac, "10.40.0.32/28"),)


def test_port_security_off_is_explicit_and_reversible(vlan, engine):
    assert vif_view(engine).port_security is True
    vlan.set_port_security("v1", False)
    assert vif_view(engine).port_security is False
    vlan.set_port_security("v1", True)
    assert vif_view(engine).port_security is True


@pytest.mark.parametrize("ip,mac,error", [
    ("10.40.0.300", None, exception.InvalidCidr),
    ("10.40.0.5", "01:00:5e:00:00:01", exception.InvalidMac),
    ("10.40.0.5", "not-a-mac", exception.InvalidMac),
])
def test_bad_pairs_are_refused_and_change_nothing(vlan, engine, ip, mac, error):
    revision = api.current_revision(engine)
    with pytest.raises(error) as err:
        vlan.add_address_pair("v1", ip, mac)
    assert "invalid" in str(err.value)
    assert api.current_revision(engine) == revision
    assert vif_view(engine).allowed_address_pairs == ()


def test_duplicate_and_missing_pairs_are_errors(vlan):
    vlan.add_address_pair("v1", "10.40.0.50")
    with pytest.raises(exception.AddressPairExists):
        vlan.add_address_pair("v1", "10.40.0.50/32")
    with pytest.raises(exception.AddressPairNotFound):
        vlan.remove_address_pair("v1", "10.40.0.51")
    with pytest.raises(exception.InstanceNotFound):
        vlan.set_port_security("nope", False)
