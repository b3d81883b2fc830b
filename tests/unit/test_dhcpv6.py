"""RFC 8415 decisions of sdn.dhcp.dhcpv6 against Scapy, the protocol definition.

Client messages are crafted with Scapy as ISC ``dhclient -6`` sends them (DUID-LLT client
identifier, elapsed time, option request for DNS and domain list, one IA_NA per interface, T1/T2
zero); every reply is parsed by Scapy and rebuilt with Scapy's own UDP checksum and lengths (same
bytes or the test fails)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp6 import (
    DHCP6,
    DHCP6_Advertise,
    DHCP6_Confirm,
    DHCP6_Decline,
    DHCP6_InfoRequest,
    DHCP6_Rebind,
    DHCP6_RelayForward,
    DHCP6_Release,
    DHCP6_Renew,
    DHCP6_Reply,
    DHCP6_Request,
    DHCP6_Solicit,
    DHCP6OptClientId,
    DHCP6OptDNSDomains,
    DHCP6OptDNSServers,
    DHCP6OptElapsedTime,
    DHCP6OptIA_NA,
    DHCP6OptIA_PD,
    DHCP6OptIA_TA,
    DHCP6OptIAAddress,
    DHCP6OptOptReq,
    DHCP6OptPref,
    DHCP6OptRapidCommit,
    DHCP6OptRelayMsg,
    DHCP6OptServerId,
    DHCP6OptStatusCode,
    DUID_EN,
    DUID_LL,
    DUID_LLT,
    dhcp6opts,
    dhcp6statuscodes,
    dhcp6types,
)
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether

from sdn.dhcp import dhcpv6
from sdn.ipv6 import link_local, to_global
from sdn.view import NetworkView, VifView
from tests.unit.test_ra import mutate

MAC = "fa:16:3e:12:34:56"
LLA = link_local(MAC)
PREFIX = "fd00:0:0:1::/64"
ADDRESS = to_global(PREFIX, MAC, "p1")
NET = NetworkView(id=1, label="private", cidr="10.0.0.0/24", netmask="255.255.255.0",
                  gateway="10.0.0.1", broadcast="10.0.0.255", domain="novalocal", lease_time=120,
                  cidr_v6=PREFIX, gateway_v6="fd00:0:0:1::1", ipv6_ra_mode="dhcpv6-stateful",
                  ipv6_address_mode="dhcpv6-stateful", dns_v6=("fd00::53", "2001:db8::35"))
STATELESS = dataclasses.replace(NET, ipv6_ra_mode="dhcpv6-stateless",
                                ipv6_address_mode="dhcpv6-stateless")
SLAAC = dataclasses.replace(NET, ipv6_ra_mode="slaac", ipv6_address_mode="slaac")
VIF = VifView(uuid="0123456789abcdef", mac=MAC, network_id=1, instance="vm-1", hostname="vm-1",
              addresses=("10.0.0.5",), project_id="p1", addresses_v6=(ADDRESS,))
NO_ADDRESS = dataclasses.replace(VIF, addresses_v6=())
GATEWAY_MAC = "0a:58:0a:00:00:01"
GATEWAY_LLA = NET.gateway_lla
SERVER_DUID = DUID_LL(lladdr=GATEWAY_MAC)
CLIENT_DUID = DUID_LLT(lladdr=MAC, timeval=700_000_000)
IAID = 0x3E123456  # dhclient: the last 4 bytes of the MAC
TRID = 0xABCDEF

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def client(message, *options, src=LLA, dst="ff02::1:2", eth_src=MAC, vlan=None, sport=546,
           dport=547) -> bytes:
    """A client message as dhclient -6 sends it: from the link-local address port 546 to
    All_DHCP_Relay_Agents_and_Servers port 547, elapsed time and client identifier first."""
    ether = Ether(src=eth_src, dst="33:33:00:01:00:02")
    if vlan is not None:
        ether = ether / Dot1Q(vlan=vlan)
    head = message() if message is DHCP6_RelayForward else message(trid=TRID)
    pkt = ether / IPv6(src=src, dst=dst) / UDP(sport=sport, dport=dport) / head
    for opt in options:
        pkt = pkt / opt
    return bytes(pkt)


def ia(*addresses, iaid=IAID, lifetime=0):
    return DHCP6OptIA_NA(iaid=iaid, T1=0, T2=0, ianaopts=[
        DHCP6OptIAAddress(addr=a, preflft=lifetime, validlft=lifetime) for a in addresses])


ELAPSED = DHCP6OptElapsedTime()
CLIENT_ID = DHCP6OptClientId(duid=CLIENT_DUID)
SERVER_ID = DHCP6OptServerId(duid=SERVER_DUID)
ORO = DHCP6OptOptReq(reqopts=[23, 24])


def solicit(*extra):
    return client(DHCP6_Solicit, ELAPSED, CLIENT_ID, ORO, ia(), *extra)


def request(*ias, server_id=SERVER_ID):
    return client(DHCP6_Request, ELAPSED, CLIENT_ID, server_id, ORO, *(ias or (ia(ADDRESS),)))


def rebuilt(frame: bytes):
    """Scapy's view of a reply after checking that Scapy, computing UDP checksum and lengths
    itself, builds the same bytes, and that it is a DHCPv6 message from the gateway."""
    assert frame is not None
    pkt = Ether(frame)
    assert isinstance(pkt[UDP].payload, DHCP6), pkt.summary()
    clone = Ether(frame)
    del clone[IPv6].plen, clone[UDP].len, clone[UDP].chksum
    assert bytes(clone) == frame, "Scapy rebuilds different bytes (checksum or length wrong)"
    assert (pkt[Ether].src, pkt[IPv6].src, pkt[UDP].sport) == (GATEWAY_MAC, GATEWAY_LLA, 547)
    return pkt


def dissect(frame: bytes):
    """``rebuilt`` and addressed to the client (dhclient's MAC and link-local address)."""
    pkt = rebuilt(frame)
    assert (pkt[Ether].src, pkt[Ether].dst) == (GATEWAY_MAC, MAC)
    assert (pkt[IPv6].src, pkt[IPv6].dst) == (GATEWAY_LLA, LLA)
    assert (pkt[UDP].sport, pkt[UDP].dport) == (547, 546)
    assert pkt[UDP].payload.trid == TRID
    assert pkt[DHCP6OptServerId].duid == SERVER_DUID
    return pkt


def decide(frame, net=NET, vif=VIF, **kwargs):
    reply, reason = dhcpv6.answer(frame, net, vif, **kwargs)
    assert reason and dhcpv6.handle(frame, net, vif, **kwargs) == reply
    return reply, reason


def reply_to(frame, net=NET, vif=VIF, **kwargs):
    reply, reason = decide(frame, net, vif, **kwargs)
    assert reply is not None, reason
    return dissect(reply)


def ia_status(pkt, layer=DHCP6OptIA_NA):
    opts = pkt[layer].ianaopts if layer is DHCP6OptIA_NA else (
        pkt[layer].iataopts if layer is DHCP6OptIA_TA else pkt[layer].iapdopt)
    return [o.statuscode for o in opts if isinstance(o, DHCP6OptStatusCode)]


def assigned(pkt) -> tuple:
    """(IAID, T1, T2, [(address, preferred, valid)]) of the reply's IA_NA."""
    na = pkt[DHCP6OptIA_NA]
    return na.iaid, na.T1, na.T2, [(o.addr, o.preflft, o.validlft) for o in na.ianaopts
                                   if isinstance(o, DHCP6OptIAAddress)]


def top_status(pkt):
    """Status codes at message level (not inside an IA)."""
    return [o.statuscode for o in _top_options(pkt) if isinstance(o, DHCP6OptStatusCode)]


def _top_options(pkt):
    layer = pkt[UDP].payload.payload
    while layer:
        yield layer
        layer = layer.payload


# ------------------------------------------------------------------------------ constants

def test_constants_match_scapy():
    for code, name in dhcpv6.MESSAGE_TYPE_NAMES.items():
        assert dhcp6types[code] == name
    for code, name in dhcpv6.STATUS_NAMES.items():
        assert dhcp6statuscodes[code] == name
    for code, name in [(dhcpv6.OPT_CLIENTID, "CLIENTID"), (dhcpv6.OPT_SERVERID, "SERVERID"),
                       (dhcpv6.OPT_IA_NA, "IA_NA"), (dhcpv6.OPT_IA_TA, "IA_TA"),
                       (dhcpv6.OPT_IAADDR, "IAADDR"), (dhcpv6.OPT_ORO, "ORO"),
                       (dhcpv6.OPT_PREFERENCE, "PREFERENCE"),
                       (dhcpv6.OPT_ELAPSED_TIME, "ELAPSED_TIME"),
                       (dhcpv6.OPT_STATUS_CODE, "STATUS_CODE"),
                       (dhcpv6.OPT_RAPID_COMMIT, "RAPID_COMMIT"),
                       (dhcpv6.OPT_IA_PD, "OPTION_IA_PD"),
                       (dhcpv6.OPT_IAPREFIX, "OPTION_IAPREFIX")]:
        assert dhcp6opts[code] == name
    assert DHCP6OptDNSServers().optcode == dhcpv6.OPT_DNS_SERVERS
    assert DHCP6OptDNSDomains().optcode == dhcpv6.OPT_DOMAIN_LIST


def test_default_server_duid_is_duid_ll_of_the_gateway_mac():
    assert dhcpv6.duid_ll(GATEWAY_MAC) == bytes(SERVER_DUID)


# ------------------------------------------------------------------------------ stateful

def test_solicit_gets_an_advertise_with_the_derived_address_and_preference_255():
    reply, reason = decide(solicit())
    assert reason == f"ADVERTISE {ADDRESS}"
    pkt = dissect(reply)
    assert pkt.haslayer(DHCP6_Advertise)
    assert pkt[DHCP6OptClientId].duid == CLIENT_DUID
    assert assigned(pkt) == (IAID, 60, 96, [(ADDRESS, 120, 120)])  # T1, T2: 0.5, 0.8 (§21.4)
    assert pkt[DHCP6OptPref].prefval == 255
    assert pkt[DHCP6OptDNSServers].dnsservers == ["fd00::53", "2001:db8::35"]
    assert pkt[DHCP6OptDNSDomains].dnsdomains == ["novalocal."]
    assert top_status(pkt) == []


def test_whole_exchange_solicit_advertise_request_renew_rebind_confirm_release():
    """The server identifier of the ADVERTISE is what the client sends back, as dhclient does."""
    adv = reply_to(solicit())
    server_id = DHCP6OptServerId(duid=adv[DHCP6OptServerId].duid)
    rep = reply_to(request(ia(ADDRESS), server_id=server_id))
    assert rep.haslayer(DHCP6_Reply) and assigned(rep)[3] == [(ADDRESS, 120, 120)]
    for message, ids in ((DHCP6_Renew, (server_id,)), (DHCP6_Rebind, ())):
        rep = reply_to(client(message, ELAPSED, CLIENT_ID, *ids, ORO, ia(ADDRESS, lifetime=120)))
        assert assigned(rep) == (IAID, 60, 96, [(ADDRESS, 120, 120)])
    rep = reply_to(client(DHCP6_Confirm, ELAPSED, CLIENT_ID, ia(ADDRESS)))
    assert top_status(rep) == [0] and not rep.haslayer(DHCP6OptIA_NA)
    rep = reply_to(client(DHCP6_Release, ELAPSED, CLIENT_ID, server_id, ia(ADDRESS)))
    assert top_status(rep) == [0] and not rep.haslayer(DHCP6OptIA_NA)


def test_rapid_commit_solicit_gets_a_reply_with_the_address():
    reply, reason = decide(solicit(DHCP6OptRapidCommit()))
    assert reason == f"REPLY (rapid commit) {ADDRESS}"
    pkt = dissect(reply)
    assert pkt.haslayer(DHCP6_Reply) and pkt.haslayer(DHCP6OptRapidCommit)
    assert assigned(pkt)[3] == [(ADDRESS, 120, 120)]


def test_request_for_another_address_on_link_gets_the_derived_one():
    rep = reply_to(request(ia("fd00:0:0:1::99")))
    assert assigned(rep)[3] == [(ADDRESS, 120, 120)] and ia_status(rep) == []


def test_request_of_a_foreign_prefix_gets_not_on_link():
    """RFC 8415 §18.3.2: an address not appropriate for the link -> the IA with NotOnLink."""
    rep = reply_to(request(ia("fd00:0:0:2::5")))
    assert ia_status(rep) == [dhcpv6.NOT_ON_LINK] and assigned(rep)[3] == []


def test_confirm_of_a_foreign_prefix_gets_not_on_link():
    rep = reply_to(client(DHCP6_Confirm, ELAPSED, CLIENT_ID, ia(ADDRESS, "2001:db8::5")))
    assert top_status(rep) == [dhcpv6.NOT_ON_LINK]


def test_confirm_without_addresses_gets_no_reply():
    """RFC 8415 §18.3.3: no addresses in any IA -> the server MUST NOT reply."""
    assert decide(client(DHCP6_Confirm, ELAPSED, CLIENT_ID, ia()))[0] is None


def test_renew_of_a_stale_address_returns_it_with_lifetime_zero():
    """RFC 8415 §18.3.4: addresses not appropriate -> lifetimes 0, with the current one."""
    rep = reply_to(client(DHCP6_Renew, CLIENT_ID, SERVER_ID, ia("fd00:0:0:1::99")))
    assert assigned(rep)[3] == [(ADDRESS, 120, 120), ("fd00:0:0:1::99", 0, 0)]


def test_release_and_decline_of_another_address_get_no_binding_in_the_ia():
    for message in (DHCP6_Release, DHCP6_Decline):
        rep = reply_to(client(message, CLIENT_ID, SERVER_ID, ia("fd00:0:0:1::99")))
        assert top_status(rep) == [0] and ia_status(rep) == [dhcpv6.NO_BINDING]
        rep = reply_to(client(message, CLIENT_ID, SERVER_ID, ia(ADDRESS)))
        assert top_status(rep) == [0] and not rep.haslayer(DHCP6OptIA_NA)


def test_vif_without_address_gets_no_addrs_avail():
    adv = reply_to(solicit(), vif=NO_ADDRESS)
    assert ia_status(adv) == [dhcpv6.NO_ADDRS_AVAIL] and assigned(adv)[3] == []
    assert top_status(adv) == [dhcpv6.NO_ADDRS_AVAIL]  # RFC 3315 §17.2.2 clients look there
    rep = reply_to(request(), vif=NO_ADDRESS)
    assert ia_status(rep) == [dhcpv6.NO_ADDRS_AVAIL]
    rep = reply_to(client(DHCP6_Renew, CLIENT_ID, SERVER_ID, ia()), vif=NO_ADDRESS)
    assert ia_status(rep) == [dhcpv6.NO_BINDING]
    rep = reply_to(solicit(DHCP6OptRapidCommit()), vif=NO_ADDRESS)
    assert rep.haslayer(DHCP6_Reply) and ia_status(rep) == [dhcpv6.NO_ADDRS_AVAIL]


def test_temporary_addresses_and_prefix_delegation_are_refused_with_a_status():
    adv = reply_to(solicit(DHCP6OptIA_TA(iaid=9), DHCP6OptIA_PD(iaid=10)))
    assert ia_status(adv, DHCP6OptIA_TA) == [dhcpv6.NO_ADDRS_AVAIL]
    assert ia_status(adv, DHCP6OptIA_PD) == [dhcpv6.NO_PREFIX_AVAIL]
    assert adv[DHCP6OptIA_TA].iaid == 9 and adv[DHCP6OptIA_PD].iaid == 10
    assert assigned(adv)[3] == [(ADDRESS, 120, 120)]


def test_a_given_server_duid_is_used_and_required():
    duid = DUID_EN(enterprisenum=32473, id=b"sdn-host")
    adv = Ether(dhcpv6.handle(solicit(), NET, VIF, server_duid=bytes(duid)))
    assert adv[DHCP6OptServerId].duid == duid
    mine = request(server_id=DHCP6OptServerId(duid=duid))
    assert dhcpv6.handle(mine, NET, VIF, server_duid=bytes(duid)) is not None
    assert dhcpv6.handle(mine, NET, VIF) is None  # names another server than the default


def test_lease_time_sets_lifetimes_with_a_floor():
    rep = reply_to(request(), net=dataclasses.replace(NET, lease_time=3600))
    assert assigned(rep)[1:] == (1800, 2880, [(ADDRESS, 3600, 3600)])
    rep = reply_to(request(), net=dataclasses.replace(NET, lease_time=0))
    assert assigned(rep)[3] == [(ADDRESS, 60, 60)]


def test_tagged_request_gets_an_untagged_reply():
    assert dhcpv6.handle(client(DHCP6_Request, CLIENT_ID, SERVER_ID, ia(), vlan=101), NET, VIF)[
        12:14] == b"\x86\xdd"


# ------------------------------------------------------------------------------ validation (§16)

@pytest.mark.parametrize("frame, why", [
    (client(DHCP6_Solicit, ELAPSED, ia()), "SOLICIT without client identifier"),
    (client(DHCP6_Solicit, CLIENT_ID, SERVER_ID, ia()), "SOLICIT naming a server"),
    (client(DHCP6_Request, CLIENT_ID, ia(ADDRESS)), "REQUEST without server identifier"),
    (request(server_id=DHCP6OptServerId(duid=DUID_LL(lladdr="02:00:00:00:00:01"))),
     "REQUEST for another server"),
    (client(DHCP6_Renew, CLIENT_ID, ia(ADDRESS)), "RENEW without server identifier"),
    (client(DHCP6_Rebind, CLIENT_ID, SERVER_ID, ia(ADDRESS)), "REBIND naming a server"),
    (client(DHCP6_Confirm, CLIENT_ID, SERVER_ID, ia(ADDRESS)), "CONFIRM naming a server"),
    (client(DHCP6_Release, CLIENT_ID, ia(ADDRESS)), "RELEASE without server identifier"),
    (client(DHCP6_Decline, SERVER_ID, ia(ADDRESS)), "DECLINE without client identifier"),
    (client(DHCP6_InfoRequest, CLIENT_ID, ia()), "INFORMATION-REQUEST with an IA (§16.12)"),
    (client(DHCP6_InfoRequest, DHCP6OptServerId(duid=DUID_LL(lladdr="02:00:00:00:00:01"))),
     "INFORMATION-REQUEST for another server"),
    (client(DHCP6_Advertise, CLIENT_ID, SERVER_ID, ia(ADDRESS)), "an ADVERTISE from a client"),
    (client(DHCP6_Reply, CLIENT_ID, SERVER_ID), "a REPLY from a client"),
    (client(DHCP6_RelayForward, DHCP6OptRelayMsg(message=DHCP6_Solicit())), "relay message"),
    (client(DHCP6_Solicit, CLIENT_ID, ia(), eth_src="02:00:00:00:00:99"), "another MAC"),
    (client(DHCP6_Solicit, CLIENT_ID, ia(), dst="fe80::1"), "unicast to another server"),
    (client(DHCP6_Solicit, CLIENT_ID, ia(), src="::"), "unspecified source"),
    (client(DHCP6_Solicit, CLIENT_ID, ia(), dport=546), "not the server port"),
    (client(DHCP6_Solicit, DHCP6OptClientId(optlen=2, duid=b"\0\1")), "2-byte DUID"),
])
def test_invalid_messages_get_no_reply(frame, why):
    reply, reason = decide(frame)
    assert reply is None, why
    assert reason.startswith(("ignored", "malformed")), reason


def test_positive_controls_of_the_invalid_messages():
    """Each refusal above differs from an answered message in the one thing it tests."""
    for frame in (solicit(), request(), client(DHCP6_Renew, CLIENT_ID, SERVER_ID, ia(ADDRESS)),
                  client(DHCP6_Rebind, CLIENT_ID, ia(ADDRESS)),
                  client(DHCP6_Confirm, CLIENT_ID, ia(ADDRESS)),
                  client(DHCP6_Release, CLIENT_ID, SERVER_ID, ia(ADDRESS)),
                  client(DHCP6_Decline, CLIENT_ID, SERVER_ID, ia(ADDRESS)),
                  client(DHCP6_InfoRequest, CLIENT_ID, SERVER_ID),
                  client(DHCP6_Solicit, CLIENT_ID, ia(), dst=GATEWAY_LLA),
                  client(DHCP6_Solicit, CLIENT_ID, ia(), dst="ff05::1:3")):
        assert decide(frame)[0] is not None, Ether(frame).summary()


def test_vif_of_another_network_or_a_network_without_ipv6_gets_nothing():
    assert decide(solicit(), vif=dataclasses.replace(VIF, network_id=2))[0] is None
    assert decide(solicit(), net=dataclasses.replace(NET, cidr_v6=None))[0] is None


def test_malformed_option_lengths_are_refused():
    good = solicit()
    assert decide(good)[0] is not None
    cut = good[:-4]  # the IA_NA's length now overruns the message; UDP/IPv6 lengths fixed up
    plen = len(cut) - 54
    cut = cut[:18] + plen.to_bytes(2, "big") + cut[20:58] + plen.to_bytes(2, "big") + cut[60:]
    reply, reason = decide(cut)
    assert reply is None and reason.startswith("malformed"), reason


# ------------------------------------------------------------------------------ modes

def test_stateless_network_answers_information_request_with_dns_and_domains():
    """What dhclient -6 -S sends (RFC 8415 §18.2.6): client id, elapsed time, option request."""
    frame = client(DHCP6_InfoRequest, ELAPSED, CLIENT_ID, ORO)
    for net in (STATELESS, NET):
        reply, reason = decide(frame, net=net)
        pkt = dissect(reply)
        assert reason == "REPLY (INFORMATION-REQUEST)" and pkt.haslayer(DHCP6_Reply)
        assert pkt[DHCP6OptClientId].duid == CLIENT_DUID
        assert pkt[DHCP6OptDNSServers].dnsservers == ["fd00::53", "2001:db8::35"]
        assert pkt[DHCP6OptDNSDomains].dnsdomains == ["novalocal."]
        assert not pkt.haslayer(DHCP6OptIA_NA)


def test_information_request_without_client_identifier_is_answered_without_one():
    pkt = reply_to(client(DHCP6_InfoRequest, ELAPSED, ORO), net=STATELESS)
    assert not pkt.haslayer(DHCP6OptClientId)


def test_stateless_network_hands_out_no_address_and_slaac_answers_nothing():
    assert decide(solicit(), net=STATELESS)[0] is None
    assert decide(request(), net=STATELESS)[0] is None
    for frame in (solicit(), request(), client(DHCP6_InfoRequest, CLIENT_ID)):
        reply, reason = decide(frame, net=SLAAC)
        assert reply is None and "slaac" in reason


def test_no_dns_and_no_domain_leave_the_options_out():
    bare = dataclasses.replace(STATELESS, dns_v6=(), domain="")
    pkt = reply_to(client(DHCP6_InfoRequest, CLIENT_ID, ORO), net=bare)
    assert not pkt.haslayer(DHCP6OptDNSServers) and not pkt.haslayer(DHCP6OptDNSDomains)


# ------------------------------------------------------------------------------ helpers

def test_is_server_message():
    assert dhcpv6.is_server_message(dhcpv6.handle(solicit(), NET, VIF))
    assert dhcpv6.is_server_message(client(DHCP6_Advertise, SERVER_ID, sport=547, dport=546))
    assert dhcpv6.is_server_message(client(DHCP6_Reply, SERVER_ID, sport=5000, dport=546))
    assert not dhcpv6.is_server_message(solicit())
    assert not dhcpv6.is_server_message(b"\x00" * 60)
    assert not dhcpv6.is_server_message(b"")


# ------------------------------------------------------------------------------ properties

addresses = st.sampled_from([ADDRESS, "fd00:0:0:1::99", "fd00:0:0:2::5", "::", "ff02::1"])
some_ia = st.one_of(
    st.builds(lambda a, i: ia(*a, iaid=i), st.lists(addresses, max_size=3), st.integers(0, 5)),
    st.builds(DHCP6OptIA_TA, iaid=st.integers(0, 5)),
    st.builds(DHCP6OptIA_PD, iaid=st.integers(0, 5)),
)
some_option = st.one_of(
    st.just(CLIENT_ID), st.just(SERVER_ID), st.just(ELAPSED), st.just(ORO),
    st.just(DHCP6OptRapidCommit()), some_ia,
    st.builds(DHCP6OptServerId, duid=st.sampled_from([DUID_LL(lladdr="02:00:00:00:00:01"),
                                                       SERVER_DUID])),
    st.builds(DHCP6OptClientId, duid=st.binary(max_size=140)),
)
message_types = st.sampled_from([DHCP6_Solicit, DHCP6_Request, DHCP6_Confirm, DHCP6_Renew,
                                 DHCP6_Rebind, DHCP6_Release, DHCP6_Decline, DHCP6_InfoRequest,
                                 DHCP6_Advertise, DHCP6_Reply])
#: the identifiers each client message carries (RFC 8415 §16), as dhclient sends them
IDENTIFIERS = {DHCP6_Solicit: (CLIENT_ID,), DHCP6_Request: (CLIENT_ID, SERVER_ID),
               DHCP6_Confirm: (CLIENT_ID,), DHCP6_Renew: (CLIENT_ID, SERVER_ID),
               DHCP6_Rebind: (CLIENT_ID,), DHCP6_Release: (CLIENT_ID, SERVER_ID),
               DHCP6_Decline: (CLIENT_ID, SERVER_ID), DHCP6_InfoRequest: (CLIENT_ID,)}


@st.composite
def messages(draw) -> bytes:
    """Mostly well-formed client messages (their identifiers, IAs, random extra options, in
    random order), and some that break §16's rules."""
    message = draw(message_types)
    opts = list(IDENTIFIERS.get(message, ())) if draw(st.integers(0, 9)) else []
    if message is not DHCP6_InfoRequest or not draw(st.integers(0, 4)):
        opts += draw(st.lists(some_ia, max_size=2))
    opts += draw(st.lists(some_option, max_size=3))
    return client(message, *draw(st.permutations(opts)), vlan=draw(st.sampled_from([None, 5])))


networks = st.sampled_from([NET, STATELESS, SLAAC])
vifs = st.sampled_from([VIF, NO_ADDRESS])


def _check(frame: bytes, reply: bytes | None, reason: str) -> None:
    assert reason
    if reply is None:
        return
    assert not reason.startswith(("ignored", "malformed", "error")), reason
    pkt = dissect(reply)
    for opt in _top_options(pkt):
        if isinstance(opt, DHCP6OptIA_NA):
            for sub in opt.ianaopts:
                if isinstance(sub, DHCP6OptIAAddress):  # only ever the VIF's address is valid
                    assert sub.addr == ADDRESS or sub.validlft == 0
    assert len(reply) - 14 <= 1280  # fits the IPv6 minimum MTU (RFC 8200 §5)


@SETTINGS
@given(messages(), networks, vifs)
def test_generated_messages_get_valid_replies_or_none(frame, net, vif):
    _check(frame, *dhcpv6.answer(frame, net, vif))


@SETTINGS
@given(messages(), networks, st.data())
def test_mutated_messages_never_raise(frame, net, data):
    frame = mutate(data, frame)
    reply, reason = dhcpv6.answer(frame, net, VIF)
    assert not reason.startswith("error"), reason
    if reply is not None:
        pkt = rebuilt(reply)
        assert (pkt[Ether].dst, pkt[IPv6].dst) == (MAC, Ether(frame)[IPv6].src)


@SETTINGS
@given(st.binary(max_size=1600), networks)
def test_any_bytes_never_raise(frame, net):
    reply, reason = dhcpv6.answer(frame, net, VIF)
    assert reply is None and reason and not reason.startswith("error"), reason
    dhcpv6.is_server_message(frame)


@SETTINGS
@given(st.binary(max_size=600))
def test_any_message_bytes_decode_or_are_malformed(data):
    try:
        message = dhcpv6.parse_message(data)
        dhcpv6.identity_associations(message)
    except dhcpv6.MalformedMessage:
        return
    assert len(message.transaction_id) == 3
