import pytest

from sdn import config, exception
from tests.unit.conftest import write_conf


def load(tmp_path, **sections):
    return config.load([], [write_conf(tmp_path / "t.conf", **sections)], conf=config.make_conf())


def test_defaults_match_nova(tmp_path):
    conf = load(tmp_path, DEFAULT={})
    assert conf.network_manager == "vlan"
    assert conf.fixed_range == "10.0.0.0/8"
    assert (conf.num_networks, conf.network_size, conf.vlan_start, conf.vpn_start) == (1, 256, 100, 1000)
    assert conf.cnt_vpn_clients == 0
    assert conf.flat_network_dns == "8.8.4.4"
    assert (conf.dhcp_domain, conf.dhcp_lease_time) == ("novalocal", 120)
    assert conf.fixed_ip_disassociate_timeout == 600
    assert conf.create_unique_mac_address_attempts == 5
    assert conf.network_device_mtu is None
    assert conf.floating_range == "4.4.4.0/24"
    assert conf.metadata_port == 8775
    assert conf.fixed_range_v6 == "fd00::/48"
    assert conf.allow_same_net_traffic is True
    assert conf.dmz_cidr == []
    assert conf.database.connection == "sqlite:////var/lib/sdn/sdn.sqlite"
    assert conf.ovs.integration_bridge == "br-int"
    assert conf.ovs.datapath_type == "netdev"
    assert conf.ovs.ofp_tcp_listen_port == 6653
    assert conf.ovs.trunk_interfaces == []
    assert conf.ovs.dhcp_rate_limit == 100


def test_my_ip_substitution(tmp_path):
    conf = load(tmp_path, DEFAULT={"my_ip": "192.0.2.7"})
    assert conf.vpn_ip == conf.routing_source_ip == conf.metadata_host == "192.0.2.7"


@pytest.mark.parametrize("value, expected", [
    ("flat", "flat"), ("FlatDHCP", "flatdhcp"),
    ("nova.network.manager.VlanManager", "vlan"),
    ("nova.network.manager.FlatDHCPManager", "flatdhcp"),
    ("nova.network.manager.FlatManager", "flat"),
])
def test_network_manager_accepts_nova_class_paths(tmp_path, value, expected):
    assert load(tmp_path, DEFAULT={"network_manager": value}).network_manager == expected


@pytest.mark.parametrize("group, name, value, words", [
    ("DEFAULT", "network_manager", "quantum", ["network_manager", "'quantum'", "flat, flatdhcp, vlan"]),
    ("DEFAULT", "vlan_start", "5000", ["vlan_start", "1..4094"]),
    ("DEFAULT", "fixed_range", "10.0.0/x", ["fixed_range", "IPv4 CIDR"]),
    ("DEFAULT", "network_driver", "nope", ["network_driver", "ovs, linux"]),
    ("DEFAULT", "flat_injected", "maybe", ["flat_injected"]),
    ("ovs", "datapath_type", "kernel", ["[ovs] datapath_type", "netdev, system"]),
    ("ovs", "ofp_tcp_listen_port", "70000", ["ofp_tcp_listen_port", "65535"]),
])
def test_invalid_values_name_option_and_allowed(tmp_path, group, name, value, words):
    with pytest.raises(exception.ConfigError) as err:
        load(tmp_path, **{group: {name: value}})
    for word in words:
        assert word in str(err.value)


def test_missing_config_file_is_clear(tmp_path):
    with pytest.raises(exception.ConfigError, match="does not exist"):
        config.load([], [str(tmp_path / "nope.conf")], conf=config.make_conf())


def test_binary_config_file_is_named(tmp_path):
    path = tmp_path / "random.conf"
    path.write_bytes(b"[DEFAULT]\nhost = \xff\xfe\x00garbage\n")
    with pytest.raises(exception.ConfigError) as err:
        config.load([], [str(path)], conf=config.make_conf())
    assert f"config file {path} is not a UTF-8 INI file" in str(err.value)
    assert "byte 17 is b'\\xff'" in str(err.value)
