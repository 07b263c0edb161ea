# -*- test-case-name: tests.test_srtp_bounds -*-
"""SRTP decrypt cost after a caller has tried many SSRCs: bounded streams (ours) beside SSRC_ANY_INBOUND.

Run ``python bench/srtp.py [--ssrcs 40000]``. A caller who holds its own session's keys
sends one authenticated packet from each of N SSRCs (N = 1, then ``--ssrcs``), then ordinary
audio on its first SSRC. With libsrtp's ``SSRC_ANY_INBOUND`` template (what voiceedge used
before) every authenticated SSRC clones a stream, found afterwards by a linear search;
:class:`~voiceedge.transceiver.srtp.SrtpSession` accepts a few and refuses the rest before
any cryptography. It prints the CPU µs of one decrypt of ordinary audio and the memory the
streams took (resident set growth), for both, side by side with the ratio. About 10 s.

Then a flood from the caller's own address: ``--flood`` forged packets (the caller's SSRC, a
tag that does not verify) in one second, through the :class:`RtpReceiver` as the session has
it (the packet budget asked before decryption) beside the same receiver without a budget. It
prints decryptions and CPU µs per flood packet for both, and the ratio.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pylibsrtp  # noqa: E402
from pylibsrtp import Policy, Session  # noqa: E402

from voiceedge.transceiver.dtls import SrtpKeys  # noqa: E402
from voiceedge.transceiver.rtp_receiver import RtpReceiver  # noqa: E402
from voiceedge.transceiver.srtp import PacketBudget, SrtpError, SrtpSession  # noqa: E402

PROFILE = Policy.SRTP_PROFILE_AEAD_AES_128_GCM
KEY = bytes(range(28))  # 16-byte key + 12-byte salt for AES-GCM
PAYLOAD = b"\x55" * 160
DECRYPTS = 20000


def rtp(sequence: int, ssrc: int) -> bytes:
    """A plain RTP packet (payload type 111, 160 bytes of payload)."""
    return struct.pack("!BBHII", 0x80, 111, sequence & 0xFFFF, sequence * 960, ssrc) + PAYLOAD


def rss_kib() -> int:
    """This process's resident set in KiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4


def measure(unprotect: Callable[[bytes], object], ssrcs: int) -> tuple[float, int]:
    """(CPU µs per decrypt of ordinary audio, KiB of growth) after ``ssrcs`` SSRC attempts."""
    sender_policy = Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=PROFILE)
    sender = Session(sender_policy)
    attempts = [sender.protect(rtp(1, ssrc)) for ssrc in range(1, ssrcs + 1)]
    packets = [sender.protect(rtp(sequence, 1)) for sequence in range(2, DECRYPTS + 2)]
    before = rss_kib()
    for packet in attempts:
        try:
            unprotect(packet)
        except SrtpError:
            pass  # refused: what the bound is for
    grown = rss_kib() - before
    start = time.process_time()
    for packet in packets:
        unprotect(packet)
    return (time.process_time() - start) / DECRYPTS * 1e6, grown


def any_inbound() -> Callable[[bytes], object]:
    """The reference: one SSRC_ANY_INBOUND session, as voiceedge had before."""
    policy = Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=PROFILE)
    policy.window_size = 1024
    return Session(policy).unprotect


def bounded() -> Callable[[bytes], object]:
    """Ours: voiceedge's SrtpSession (the remote key is the sender's key)."""
    return SrtpSession(SrtpKeys(PROFILE, KEY, KEY)).unprotect_rtp


class NullSink:
    """An audio sink that drops what it is given (the flood never reaches it)."""

    def packet_received(self, sequence_number: int, timestamp: int, payload: bytes, now: float) -> None:
        """Nothing to do."""

    def deadline(self) -> float | None:
        """Never due."""
        return None

    def drain(self, now: float) -> None:
        """Nothing to release."""


def flood(count: int, budget: bool) -> tuple[int, float]:
    """(decryptions, CPU µs per packet) for ``count`` forged packets within one second."""
    sender = SrtpSession(SrtpKeys(PROFILE, KEY, KEY))
    packets = []
    for sequence in range(1, count + 1):
        packet = bytearray(sender.protect_rtp(rtp(sequence, 1)))
        packet[-1] ^= 1
        packets.append(bytes(packet))
    receiver = RtpReceiver(SrtpSession(SrtpKeys(PROFILE, KEY, KEY)), 111, NullSink(), 0.0)
    if not budget:
        receiver.budget = PacketBudget(float("inf"), float("inf"))
    start = time.process_time()
    for n, packet in enumerate(packets):
        receiver.receive(packet, n / count)
    elapsed = time.process_time() - start
    return receiver.drops["srtp_auth"], elapsed / count * 1e6


def main() -> None:
    """Print both at 1 SSRC and at ``--ssrcs`` SSRCs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ssrcs", type=int, default=40_000, help="SSRCs the caller tries")
    parser.add_argument("--flood", type=int, default=20_000, help="forged packets a second")
    args = parser.parse_args()
    print(f"pylibsrtp {pylibsrtp.__version__}, AES-128-GCM, 172-byte RTP, {DECRYPTS} decrypts")
    print(f"{'SSRCs tried':>12} {'bounded µs':>11} {'ANY_INBOUND µs':>15} {'ratio':>6}"
          f" {'bounded KiB':>12} {'ANY_INBOUND KiB':>16}")
    for ssrcs in (1, args.ssrcs):
        ours, ours_kib = measure(bounded(), ssrcs)
        theirs, theirs_kib = measure(any_inbound(), ssrcs)
        print(f"{ssrcs:>12} {ours:>11.2f} {theirs:>15.2f} {theirs / ours:>5.1f}x"
              f" {ours_kib:>12} {theirs_kib:>16}")
    print(f"\nflood of {args.flood} forged packets in 1 s from the caller's address, one session")
    print(f"{'':>16} {'decryptions':>12} {'µs/packet':>10}")
    budgeted, unbudgeted = flood(args.flood, True), flood(args.flood, False)
    for name, (decrypts, micros) in (("with budget", budgeted), ("without budget", unbudgeted)):
        print(f"{name:>16} {decrypts:>12} {micros:>10.2f}")
    print(f"{'ratio':>16} {unbudgeted[0] / max(budgeted[0], 1):>11.0f}x {unbudgeted[1] / budgeted[1]:>9.1f}x")


if __name__ == "__main__":
    main()
