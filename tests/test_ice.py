"""ICE-lite: answering checks, dropping bad ones, nomination and consent."""

from __future__ import annotations

import pytest

from tests.ice_client import binding_request
from voiceedge.transceiver.ice import MAX_SOURCES, CheckResult, IceLiteAgent
from voiceedge.wire import stun

CLIENT = ("192.0.2.7", 50000)
PWD = "server-password-24chars!"
CLIENT_PWD = "client-password-24chars!"


def agent() -> IceLiteAgent:
    """A lite agent whose ufrag is 'srv1' facing a client ufrag 'cli1'."""
    return IceLiteAgent("srv1", PWD, "cli1", consent_timeout=30.0, remote_pwd=CLIENT_PWD)


def test_valid_check_is_answered_with_integrity_and_mapped_address() -> None:
    """A good check gets a success response the client can verify."""
    ice = agent()
    request = binding_request("srv1:cli1", PWD)
    outcome = ice.receive(request, CLIENT, now=1.0)
    assert outcome.result is CheckResult.ANSWERED and outcome.newly_valid
    assert outcome.response is not None
    response = stun.parse_message(outcome.response)
    assert response.message_class is stun.StunClass.SUCCESS
    assert response.transaction_id == stun.parse_message(request).transaction_id
    assert response.xor_mapped_address() == CLIENT
    assert stun.verify_integrity(outcome.response, PWD.encode())
    assert stun.verify_fingerprint(outcome.response)
    assert ice.is_valid(CLIENT)
    assert ice.selected is None  # no USE-CANDIDATE yet


def test_sha256_integrity_is_answered_in_kind() -> None:
    """A check with MESSAGE-INTEGRITY-SHA256 is answered with it."""
    outcome = agent().receive(binding_request("srv1:cli1", PWD, sha256=True), CLIENT, 0.0)
    assert outcome.response is not None
    response = stun.parse_message(outcome.response)
    assert response.get(stun.Attr.MESSAGE_INTEGRITY_SHA256) is not None
    assert stun.verify_integrity(outcome.response, PWD.encode())


@pytest.mark.parametrize(
    "request_bytes, result",
    [
        (binding_request("srv1:cli1", "wrong-password"), CheckResult.BAD_INTEGRITY),
        (binding_request("srv1:other", PWD), CheckResult.BAD_USERNAME),
        (binding_request("srv2:cli1", PWD), CheckResult.BAD_USERNAME),
        (b"\x00\x01\x00\x00garbage", CheckResult.MALFORMED),
    ],
)
def test_bad_checks_are_dropped_silently(request_bytes: bytes, result: CheckResult) -> None:
    """Bad integrity, a wrong username or garbage: no reply, no state."""
    ice = agent()
    outcome = ice.receive(request_bytes, CLIENT, 0.0)
    assert outcome.result is result
    assert outcome.response is None
    assert not ice.is_valid(CLIENT)


def test_tampered_check_is_dropped() -> None:
    """Flipping a byte inside the signed part makes the check fail."""
    request = bytearray(binding_request("srv1:cli1", PWD))
    request[30] ^= 0x01  # inside the PRIORITY/USERNAME attributes
    ice = agent()
    assert ice.receive(bytes(request), CLIENT, 0.0).response is None
    assert not ice.is_valid(CLIENT)


def test_responses_and_indications_are_ignored() -> None:
    """Only binding requests are answered."""
    indication = stun.build_message(stun.METHOD_BINDING, stun.StunClass.INDICATION, b"x" * 12, [])
    assert agent().receive(indication, CLIENT, 0.0).result is CheckResult.IGNORED


def test_controlled_peer_gets_role_conflict() -> None:
    """A lite agent cannot switch roles: a controlled peer gets 487."""
    outcome = agent().receive(binding_request("srv1:cli1", PWD, controlled=True), CLIENT, 0.0)
    assert outcome.result is CheckResult.ROLE_CONFLICT
    assert outcome.response is not None
    assert stun.parse_message(outcome.response).error_code() == (487, "Role Conflict")


def answer_probe(probe: bytes | None, password: str = CLIENT_PWD) -> bytes:
    """What a browser sends back for one of our probes."""
    assert probe is not None
    request = stun.parse_message(probe)
    assert request.username() == b"cli1:srv1"
    assert request.ice_controlled() is not None
    assert stun.verify_integrity(probe, CLIENT_PWD.encode())
    return stun.binding_success(request, ("203.0.113.1", 3478), password.encode())


def test_a_nominated_path_carries_media_only_once_verified() -> None:
    """USE-CANDIDATE alone does not select: the address must show it receives our packets."""
    ice = agent()
    first = ice.receive(binding_request("srv1:cli1", PWD, use_candidate=True), CLIENT, 0.0)
    assert ice.nominated == CLIENT and ice.selected is None and ice.media_destination() is None
    # DTLS completing from that address is proof enough (the session calls verify()).
    ice.verify(CLIENT)
    assert ice.selected == CLIENT == ice.media_destination()
    assert first.probe is not None  # it was also probed, which would have done the same


def test_a_new_nomination_moves_media_after_its_probe_is_answered() -> None:
    """A network change: the new address is probed; media moves when it answers."""
    ice = agent()
    ice.receive(binding_request("srv1:cli1", PWD, use_candidate=True), CLIENT, 0.0)
    ice.verify(CLIENT)
    other = ("198.51.100.1", 4000)
    outcome = ice.receive(binding_request("srv1:cli1", PWD, use_candidate=True), other, 2.0)
    assert ice.selected == CLIENT  # not yet
    # Probes are paced by the client's own retransmissions.
    assert ice.receive(binding_request("srv1:cli1", PWD, use_candidate=True), other, 2.1).probe is None
    verified = ice.receive(answer_probe(outcome.probe), other, 2.2)
    assert verified.result is CheckResult.VERIFIED
    assert ice.selected == other


def test_spoofed_nomination_never_gets_media() -> None:
    """A caller spoofing checks from a victim's address, with its own valid password, cannot
    point media at the victim: the victim never answers, and forged answers do not verify."""
    ice = agent()
    ice.receive(binding_request("srv1:cli1", PWD, use_candidate=True), CLIENT, 0.0)
    ice.verify(CLIENT)
    victim = ("192.0.2.99", 9)
    outcome = ice.receive(binding_request("srv1:cli1", PWD, use_candidate=True), victim, 1.0)
    # The attacker cannot see the probe; a guessed transaction id does not match.
    forged = stun.binding_success(
        stun.parse_message(binding_request("x:y", "z")), victim, CLIENT_PWD.encode()
    )
    assert ice.receive(forged, victim, 1.1).result is CheckResult.IGNORED
    # Nor does the real transaction id with the wrong key.
    assert ice.receive(answer_probe(outcome.probe, "wrong"), victim, 1.2).result is CheckResult.BAD_INTEGRITY
    assert ice.selected == CLIENT == ice.media_destination()


def test_sources_per_session_are_bounded() -> None:
    """Checks from many addresses keep only the most recent few (never the selected path)."""
    ice = agent()
    ice.receive(binding_request("srv1:cli1", PWD, use_candidate=True), CLIENT, 0.0)
    ice.verify(CLIENT)
    evicted = []
    for port in range(1, 21):
        evicted += ice.receive(binding_request("srv1:cli1", PWD), ("192.0.2.50", port), float(port)).evicted
    assert len(ice.valid_sources) == MAX_SOURCES
    assert CLIENT in ice.valid_sources and ice.selected == CLIENT
    assert len(evicted) == 21 - MAX_SOURCES


def test_consent_expires_thirty_seconds_after_the_last_check() -> None:
    """RFC 7675: each check on the selected path refreshes consent for 30 s."""
    ice = agent()
    assert ice.consent_expires_at() is None
    ice.receive(binding_request("srv1:cli1", PWD, use_candidate=True), CLIENT, 10.0)
    assert ice.consent_expires_at() == 40.0
    ice.receive(binding_request("srv1:cli1", PWD), CLIENT, 15.0)
    assert ice.consent_expires_at() == 45.0
    # A forged check does not refresh consent.
    ice.receive(binding_request("srv1:cli1", "bad"), CLIENT, 20.0)
    assert ice.consent_expires_at() == 45.0


def test_consent_without_a_nomination_still_expires() -> None:
    """A client that checks but never sends USE-CANDIDATE is held to consent too."""
    ice = agent()
    ice.receive(binding_request("srv1:cli1", PWD), CLIENT, 10.0)
    assert ice.selected is None
    assert ice.consent_expires_at() == 40.0
    ice.receive(binding_request("srv1:cli1", PWD), ("192.0.2.8", 1), 12.0)
    assert ice.consent_expires_at() == 42.0
