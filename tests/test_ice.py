"""ICE-lite: answering checks, dropping bad ones, nomination and consent."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from tests.cases import case
from tests.ice_client import binding_request
from voiceedge.transceiver.ice import MAX_SOURCES, CheckResult, IceLiteAgent
from voiceedge.wire import stun

CLIENT = ("192.0.2.7", 50000)
PWD = "server-password-24chars!"
CLIENT_PWD = "client-password-24chars!"


def agent() -> IceLiteAgent:
    """A lite agent whose ufrag is 'srv1' facing a client ufrag 'cli1'."""
    return IceLiteAgent("srv1", PWD, "cli1", consent_timeout=30.0, remote_pwd=CLIENT_PWD)


BAD_CHECKS = [
    (binding_request("srv1:cli1", "wrong-password"), CheckResult.BAD_INTEGRITY),
    (binding_request("srv1:other", PWD), CheckResult.BAD_USERNAME),
    (binding_request("srv2:cli1", PWD), CheckResult.BAD_USERNAME),
    (b"\x00\x01\x00\x00garbage", CheckResult.MALFORMED),
]


def answer_probe(probe: bytes | None, password: str = CLIENT_PWD) -> bytes:
    """What a browser sends back for one of our probes."""
    assert probe is not None
    request = stun.parse_message(probe)
    assert request.username() == b"cli1:srv1"
    assert request.ice_controlled() is not None
    assert stun.verify_integrity(probe, CLIENT_PWD.encode())
    return stun.binding_success(request, ("203.0.113.1", 3478), password.encode())


def connected(now: float = 0.0, rng_seed: int = 7) -> IceLiteAgent:
    """An agent whose client has checked, nominated and been verified at ``now``."""
    ice = IceLiteAgent("srv1", PWD, "cli1", consent_timeout=30.0, remote_pwd=CLIENT_PWD, rng=random.Random(rng_seed))
    outcome = ice.receive(binding_request("srv1:cli1", PWD, use_candidate=True), CLIENT, now)
    ice.receive(answer_probe(outcome.probe), CLIENT, now)
    assert ice.selected == CLIENT
    return ice


def run_timers(ice: IceLiteAgent, until: float, answer: bool) -> list[tuple[float, bytes]]:
    """Drive the agent's timer to ``until``; answer each request at once if ``answer``."""
    sent: list[tuple[float, bytes]] = []
    while (due := ice.deadline()) is not None and due <= until:
        for data, destination in ice.handle_timeout(due):
            assert destination == CLIENT
            sent.append((due, data))
            if answer:
                assert ice.receive(answer_probe(data), CLIENT, due).result is CheckResult.VERIFIED
    return sent


class CheckAnswerTests(SynchronousTestCase):
    """Binding checks are answered with integrity and a mapped address, or dropped (RFC 8445 §7.3, lite)."""

    def test_valid_check_is_answered_with_integrity_and_mapped_address(self) -> None:
        """A good check gets a success response the client can verify."""
        ice = agent()
        request = binding_request("srv1:cli1", PWD)
        outcome = ice.receive(request, CLIENT, now=1.0)
        self.assertIs(outcome.result, CheckResult.ANSWERED)
        self.assertTrue(outcome.newly_valid)
        self.assertIsNotNone(outcome.response)
        response = stun.parse_message(outcome.response)
        self.assertIs(response.message_class, stun.StunClass.SUCCESS)
        self.assertEqual(response.transaction_id, stun.parse_message(request).transaction_id)
        self.assertEqual(response.xor_mapped_address(), CLIENT)
        self.assertTrue(stun.verify_integrity(outcome.response, PWD.encode()))
        self.assertTrue(stun.verify_fingerprint(outcome.response))
        self.assertTrue(ice.is_valid(CLIENT))
        self.assertIsNone(ice.selected)  # no USE-CANDIDATE yet

    def test_sha256_integrity_is_answered_in_kind(self) -> None:
        """A check with MESSAGE-INTEGRITY-SHA256 is answered with it."""
        outcome = agent().receive(binding_request("srv1:cli1", PWD, sha256=True), CLIENT, 0.0)
        self.assertIsNotNone(outcome.response)
        response = stun.parse_message(outcome.response)
        self.assertIsNotNone(response.get(stun.Attr.MESSAGE_INTEGRITY_SHA256))
        self.assertTrue(stun.verify_integrity(outcome.response, PWD.encode()))

    def test_bad_checks_are_dropped_silently(self) -> None:
        """Bad integrity, a wrong username or garbage: no reply, no state."""
        for request_bytes, result in BAD_CHECKS:
            with case(f"{result}: {request_bytes!r}"):
                ice = agent()
                outcome = ice.receive(request_bytes, CLIENT, 0.0)
                self.assertIs(outcome.result, result)
                self.assertIsNone(outcome.response)
                self.assertFalse(ice.is_valid(CLIENT))

    def test_tampered_check_is_dropped(self) -> None:
        """Flipping a byte inside the signed part makes the check fail."""
        request = bytearray(binding_request("srv1:cli1", PWD))
        request[30] ^= 0x01  # inside the PRIORITY/USERNAME attributes
        ice = agent()
        self.assertIsNone(ice.receive(bytes(request), CLIENT, 0.0).response)
        self.assertFalse(ice.is_valid(CLIENT))

    def test_responses_and_indications_are_ignored(self) -> None:
        """Only binding requests are answered."""
        indication = stun.build_message(stun.METHOD_BINDING, stun.StunClass.INDICATION, b"x" * 12, [])
        self.assertIs(agent().receive(indication, CLIENT, 0.0).result, CheckResult.IGNORED)

    def test_controlled_peer_gets_role_conflict(self) -> None:
        """A lite agent cannot switch roles: a controlled peer gets 487."""
        outcome = agent().receive(binding_request("srv1:cli1", PWD, controlled=True), CLIENT, 0.0)
        self.assertIs(outcome.result, CheckResult.ROLE_CONFLICT)
        self.assertIsNotNone(outcome.response)
        self.assertEqual(stun.parse_message(outcome.response).error_code(), (487, "Role Conflict"))


class NominationTests(SynchronousTestCase):
    """Media goes to a nominated or checked path only once it is verified to receive our packets."""

    def test_a_nominated_path_carries_media_only_once_verified(self) -> None:
        """USE-CANDIDATE alone does not select: the address must show it receives our packets."""
        ice = agent()
        first = ice.receive(binding_request("srv1:cli1", PWD, use_candidate=True), CLIENT, 0.0)
        self.assertEqual(ice.nominated, CLIENT)
        self.assertIsNone(ice.selected)
        self.assertIsNone(ice.media_destination())
        # DTLS completing from that address is proof enough (the session calls verify()).
        ice.verify(CLIENT, 0.0)
        self.assertTrue(ice.selected == CLIENT == ice.media_destination())
        self.assertIsNotNone(first.probe)  # it was also probed, which would have done the same

    def test_a_new_nomination_moves_media_after_its_probe_is_answered(self) -> None:
        """A network change: the new address is probed; media moves when it answers."""
        ice = agent()
        ice.receive(binding_request("srv1:cli1", PWD, use_candidate=True), CLIENT, 0.0)
        ice.verify(CLIENT, 0.0)
        other = ("198.51.100.1", 4000)
        outcome = ice.receive(binding_request("srv1:cli1", PWD, use_candidate=True), other, 2.0)
        self.assertEqual(ice.selected, CLIENT)  # not yet
        # Probes are paced by the client's own retransmissions.
        self.assertIsNone(ice.receive(binding_request("srv1:cli1", PWD, use_candidate=True), other, 2.1).probe)
        verified = ice.receive(answer_probe(outcome.probe), other, 2.2)
        self.assertIs(verified.result, CheckResult.VERIFIED)
        self.assertEqual(ice.selected, other)

    def test_spoofed_nomination_never_gets_media(self) -> None:
        """A caller spoofing checks from a victim's address, with its own valid password, cannot
        point media at the victim: the victim never answers, and forged answers do not verify."""
        ice = agent()
        ice.receive(binding_request("srv1:cli1", PWD, use_candidate=True), CLIENT, 0.0)
        ice.verify(CLIENT, 0.0)
        victim = ("192.0.2.99", 9)
        outcome = ice.receive(binding_request("srv1:cli1", PWD, use_candidate=True), victim, 1.0)
        # The attacker cannot see the probe; a guessed transaction id does not match.
        forged = stun.binding_success(
            stun.parse_message(binding_request("x:y", "z")), victim, CLIENT_PWD.encode()
        )
        self.assertIs(ice.receive(forged, victim, 1.1).result, CheckResult.IGNORED)
        # Nor does the real transaction id with the wrong key.
        self.assertIs(ice.receive(answer_probe(outcome.probe, "wrong"), victim, 1.2).result, CheckResult.BAD_INTEGRITY)
        self.assertTrue(ice.selected == CLIENT == ice.media_destination())

    def test_sources_per_session_are_bounded(self) -> None:
        """Checks from many addresses keep only the most recent few (never the selected path)."""
        ice = agent()
        ice.receive(binding_request("srv1:cli1", PWD, use_candidate=True), CLIENT, 0.0)
        ice.verify(CLIENT, 0.0)
        evicted = []
        for port in range(1, 21):
            evicted += ice.receive(binding_request("srv1:cli1", PWD), ("192.0.2.50", port), float(port)).evicted
        self.assertEqual(len(ice.valid_sources), MAX_SOURCES)
        self.assertIn(CLIENT, ice.valid_sources)
        self.assertEqual(ice.selected, CLIENT)
        self.assertEqual(len(evicted), 21 - MAX_SOURCES)

    def test_consent_before_any_verified_path_follows_the_freshest_check(self) -> None:
        """Until a path is verified, consent is the freshest check on any path plus 30 s, so a
        client that never lets itself be verified cannot keep a session alive."""
        ice = agent()
        self.assertIsNone(ice.consent_expires_at())
        ice.receive(binding_request("srv1:cli1", PWD), CLIENT, 10.0)
        self.assertIsNone(ice.selected)
        self.assertEqual(ice.consent_expires_at(), 40.0)
        ice.receive(binding_request("srv1:cli1", PWD), ("192.0.2.8", 1), 12.0)
        self.assertEqual(ice.consent_expires_at(), 42.0)
        # A forged check does not count.
        ice.receive(binding_request("srv1:cli1", "bad"), CLIENT, 20.0)
        self.assertEqual(ice.consent_expires_at(), 42.0)

    def test_the_first_valid_check_gets_a_return_check_at_once(self) -> None:
        """No waiting for USE-CANDIDATE: the path is probed right after its first check (a
        controlling Pion nominates on it), and the answer verifies it."""
        ice = agent()
        outcome = ice.receive(binding_request("srv1:cli1", PWD), CLIENT, 1.0)
        self.assertTrue(outcome.newly_valid)
        self.assertIsNotNone(outcome.probe)
        self.assertIs(ice.receive(answer_probe(outcome.probe), CLIENT, 1.001).result, CheckResult.VERIFIED)
        self.assertTrue(ice.is_verified(CLIENT))
        # Verified and not yet nominated: media may go to the freshest verified source.
        self.assertEqual(ice.media_destination(), CLIENT)
        self.assertIsNone(ice.selected)
        nominated = ice.receive(binding_request("srv1:cli1", PWD, use_candidate=True), CLIENT, 1.002)
        self.assertTrue(nominated.nominated)
        self.assertIsNone(nominated.probe)
        self.assertEqual(ice.selected, CLIENT)


class ConsentTests(SynchronousTestCase):
    """Consent freshness (RFC 7675) and which path media follows on a connected agent."""

    def test_consent_checks_go_every_five_seconds_and_are_answered(self) -> None:
        """RFC 7675 §5.1: every 5 s +-20 %, each a new transaction; answers keep consent."""
        ice = connected()
        sent = run_timers(ice, 300.0, answer=True)
        times = [t for t, _ in sent]
        gaps = [b - a for a, b in zip(times, times[1:])]
        self.assertTrue(all(4.0 <= g <= 6.0 for g in gaps), gaps)
        self.assertGreater(max(gaps) - min(gaps), 0.5)  # randomised, not a fixed beat
        self.assertEqual(len({data[8:20] for _, data in sent}), len(sent))
        self.assertTrue(ice.consent_checks_sent == ice.consent_checks_answered == len(sent))
        self.assertEqual(ice.consent_expires_at(), times[-1] + 30.0)

    def test_unanswered_consent_checks_are_retransmitted_then_consent_lapses(self) -> None:
        """Retransmissions keep the transaction id, 0.5 s then 1 s then 2 s apart, until the next
        check; with no answer consent lapses 30 s after the last one, whatever the client sends."""
        ice = connected(0.0)
        sent = run_timers(ice, 29.0, answer=False)
        first = [t for t, data in sent if data[8:20] == sent[0][1][8:20]]
        self.assertEqual([round(b - a, 3) for a, b in zip(first, first[1:])], [0.5, 1.0, 2.0][: len(first) - 1])
        # The client's own checks and media are liveness, not consent.
        ice.receive(binding_request("srv1:cli1", PWD, use_candidate=True), CLIENT, 20.0)
        self.assertFalse(ice.heard(CLIENT, 25.0))
        self.assertEqual(ice.consent_expires_at(), 30.0)

    def test_a_forbidden_answer_revokes_consent(self) -> None:
        """RFC 7675 §5.2: 403 to a consent check ends consent at once."""
        ice = connected()
        ((_, request),) = run_timers(ice, 6.5, answer=False)[:1]
        error = stun.binding_error(stun.parse_message(request), 403, "Forbidden", CLIENT_PWD.encode())
        self.assertIs(ice.receive(error, CLIENT, 7.0).result, CheckResult.CONSENT_REVOKED)
        self.assertEqual(ice.consent_expires_at(), float("-inf"))

    def test_media_follows_a_client_whose_address_changed(self) -> None:
        """NAT rebinding: checks come from a new port without a nomination. Its media is taken once
        a check passes; our media follows once the new address is verified and the old is silent."""
        ice = connected(0.0)
        self.assertFalse(ice.heard(CLIENT, 5.0))
        moved = ("192.0.2.7", 50123)
        outcome = ice.receive(binding_request("srv1:cli1", PWD), moved, 6.0)
        self.assertTrue(ice.is_valid(moved))
        self.assertIsNotNone(outcome.probe)
        self.assertEqual(ice.media_destination(), CLIENT)  # not before it is verified
        self.assertIs(ice.receive(answer_probe(outcome.probe), moved, 6.01).result, CheckResult.VERIFIED)
        self.assertEqual(ice.media_destination(), moved)
        self.assertEqual(ice.selected, moved)
        self.assertEqual(ice.consent_expires_at(), 6.01 + 30.0)

    def test_media_stays_on_a_live_selected_path(self) -> None:
        """A second verified source does not take the media while the selected path is heard from."""
        ice = connected(0.0)
        other = ("198.51.100.1", 4000)
        outcome = ice.receive(binding_request("srv1:cli1", PWD), other, 0.5)
        ice.heard(CLIENT, 0.9)
        ice.receive(answer_probe(outcome.probe), other, 1.0)
        self.assertEqual(ice.selected, CLIENT)
        self.assertFalse(ice.heard(other, 1.2))
        # Once the selected path has been silent for a second, the other one takes over.
        self.assertTrue(ice.heard(other, 2.0))
        self.assertEqual(ice.selected, other)


class IceRestartTests(SynchronousTestCase):
    """An ICE restart rolls the credentials over without dropping the selected path."""

    def test_ice_restart_rolls_the_credentials_over(self) -> None:
        """New ufrag and password; the old ones work until the first check with the new ones;
        the selected path and consent carry on."""
        ice = connected(0.0)
        self.assertEqual(ice.restart("srv2", "new-server-password-24ch", "cli2", "new-client-password-24ch"), [])
        self.assertEqual(ice.local_ufrags, ["srv2", "srv1"])
        self.assertEqual(ice.selected, CLIENT)
        # Old credentials still answered.
        self.assertIs(ice.receive(binding_request("srv1:cli1", PWD), CLIENT, 1.0).result, CheckResult.ANSWERED)
        # Our requests use the new ones.
        (_, request), = run_timers(ice, 6.2, answer=False)[:1]
        self.assertEqual(stun.parse_message(request).username(), b"cli2:srv2")
        self.assertTrue(stun.verify_integrity(request, b"new-client-password-24ch"))
        # The first check with the new credentials retires the old ufrag.
        new = ice.receive(binding_request("srv2:cli2", "new-server-password-24ch"), CLIENT, 7.0)
        self.assertIs(new.result, CheckResult.ANSWERED)
        self.assertEqual(new.retired_ufrag, "srv1")
        self.assertEqual(ice.local_ufrags, ["srv2"])
        self.assertIs(ice.receive(binding_request("srv1:cli1", PWD), CLIENT, 7.1).result, CheckResult.BAD_USERNAME)
        self.assertEqual(ice.selected, CLIENT)

    def test_a_second_restart_retires_the_ufrag_before_last(self) -> None:
        """Two restarts in a row: only the latest two ufrags are accepted."""
        ice = connected(0.0)
        ice.restart("srv2", "new-server-password-24ch", "cli2", "new-client-password-24ch")
        self.assertEqual(ice.restart("srv3", "third-server-password-24", "cli3", "third-client-password-24"), ["srv1"])
        self.assertEqual(ice.local_ufrags, ["srv3", "srv2"])
