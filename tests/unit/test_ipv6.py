"""sdn.ipv6: nova's address derivations, checked with nova's own test vectors
(nova/tests/unit/test_ipv6.py) and the kernel's link-local form."""

import pytest

from sdn import ipv6

MAC = "02:16:3e:33:44:55"


def test_rfc2462_nova_vectors():
    assert ipv6.to_global("2001:db8::", MAC, "test") == "2001:db8::16:3eff:fe33:4455"
    assert ipv6.to_mac("2001:db8::216:3eff:fe33:4455") == "00:16:3e:33:44:55"


def test_account_identifier_nova_vectors():
    assert ipv6.to_global("2001:db8::", MAC, "test", "account_identifier") == \
        "2001:db8::a94a:8fe5:ff33:4455"
    assert ipv6.to_mac("2001:db8::a94a:8fe5:ff33:4455", "account_identifier") == MAC


def test_default_backend_is_rfc2462_and_prefix_length_is_accepted():
    assert ipv6.to_global("fd00:0:0:1::/64", "fa:16:3e:12:34:56", None) == \
        "fd00::1:f816:3eff:fe12:3456"


def test_rfc2462_round_trip():
    mac = "fa:16:3e:7f:00:01"
    assert ipv6.to_mac(ipv6.to_global("fd00:0:0:5::/64", mac, "p")) == mac


def test_account_identifier_depends_on_project():
    a = ipv6.to_global("fd00::/64", MAC, "alpha", "account_identifier")
    b = ipv6.to_global("fd00::/64", MAC, "beta", "account_identifier")
    assert a != b and a.endswith(":ff33:4455") and b.endswith(":ff33:4455")


def test_link_local_is_the_kernels_modified_eui64():
    # what Linux puts on an interface with this MAC (addr_gen_mode eui64)
    assert ipv6.link_local("fa:16:3e:00:00:01") == "fe80::f816:3eff:fe00:1"
    assert ipv6.link_local("0a:58:0a:00:00:01") == "fe80::858:aff:fe00:1"


@pytest.mark.parametrize("backend", ipv6.BACKENDS)
def test_bad_mac_named(backend):
    with pytest.raises(ValueError, match="Bad mac for to_global_ipv6: 02:16:3e:33:44:5Z"):
        ipv6.to_global("2001:db8::", "02:16:3e:33:44:5Z", "test", backend)


@pytest.mark.parametrize("backend", ipv6.BACKENDS)
def test_bad_prefix_named(backend):
    with pytest.raises(ValueError, match="Bad prefix for to_global_ipv6: 2001::1::2"):
        ipv6.to_global("2001::1::2", MAC, "test", backend)
    with pytest.raises(ValueError, match="Bad prefix"):
        ipv6.to_global("10.0.0.0/24", MAC, "test", backend)


def test_unknown_backend_lists_allowed():
    with pytest.raises(ValueError, match="rfc2462, account_identifier"):
        ipv6.to_global("fd00::/64", MAC, "p", "eui")


def test_account_identifier_needs_project():
    with pytest.raises(ValueError, match="project"):
        ipv6.to_global("fd00::/64", MAC, None, "account_identifier")


# -- the same results as nova's code, for any MAC, prefix and project ------------------------------

def _nova_rfc2462(prefix, mac, project_id):
    """nova/ipv6/rfc2462.py to_global, verbatim but for the i18n wrapper."""
    import netaddr
    mac64 = netaddr.EUI(mac).modified_eui64().value
    return (netaddr.IPAddress(mac64) | netaddr.IPNetwork(prefix).ip).format()


def _nova_account_identifier(prefix, mac, project_id):
    """nova/ipv6/account_identifier.py to_global, verbatim but for six/i18n."""
    import hashlib
    import netaddr
    addr = int(hashlib.sha1(project_id.encode("utf-8")).hexdigest()[:8], 16) << 32
    project_hash = netaddr.IPAddress(addr)
    static_num = netaddr.IPAddress(0xff << 24)
    mac_addr = netaddr.IPAddress(netaddr.EUI(mac).value & 0xffffff)
    return (project_hash ^ static_num ^ mac_addr | netaddr.IPNetwork(prefix).ip).format()


from hypothesis import given, settings, strategies as st  # noqa: E402

_macs = st.integers(0, 2**48 - 1).flatmap(lambda v: st.sampled_from([
    ":".join(f"{b:02x}" for b in v.to_bytes(6, "big")),
    ":".join(f"{b:02X}" for b in v.to_bytes(6, "big")),
    "-".join(f"{b:02x}" for b in v.to_bytes(6, "big")),
    f"{v:012x}"[:4] + "." + f"{v:012x}"[4:8] + "." + f"{v:012x}"[8:]]))
_prefixes = st.one_of(
    st.integers(0, 2**64 - 1).map(lambda hi: f"{__import__('ipaddress').IPv6Address(hi << 64)}/64"),
    st.sampled_from(["::/64", "2001:db8::", "fd00::/48", "::ffff:0:0/96"]))


@settings(max_examples=400, deadline=None)
@given(prefix=_prefixes, mac=_macs, project=st.text(min_size=1, max_size=40))
def test_same_addresses_as_novas_code(prefix, mac, project):
    assert ipv6.to_global(prefix, mac, project) == _nova_rfc2462(prefix, mac, project)
    assert ipv6.to_global(prefix, mac, project, "account_identifier") == \
        _nova_account_identifier(prefix, mac, project)
