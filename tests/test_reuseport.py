# -*- test-case-name: tests.test_reuseport -*-
"""Steering by owner: the eBPF encoding, the map key, the relay's entries on a fake map, and the kernel's steering.

Units on fakes: instructions encode as the kernel reads them, labels resolve,
client keys lay IPv4 (mapped) and IPv6 addresses out as the program builds
them, and a relay writes, takes and removes entries as docs/relay.md says.
Then, where this process may call ``bpf()``: two real sockets sharing a port
on loopback, the program attached, and datagrams landing where the map says
(and on the other socket once the named one is closed).
"""

from __future__ import annotations

import socket
import struct
import time

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.test_relay_protocol import CLIENT, HOP, HOP2, Harness, binding_request, srtp, token
from voiceedge.relay import bpf
from voiceedge.relay.bpf import R0, R1, R6, R10, Instruction
from voiceedge.relay.flows import Address
from voiceedge.relay.reuseport import KEY_SIZE, OwnerSteering, client_key, key_address, steering_program

LOOPBACK = "127.0.0.1"


class EncodingTests(SynchronousTestCase):
    """Each helper's 8 bytes: opcode, registers (dst low nibble, src high), offset, immediate; little-endian."""

    def test_single_instructions(self) -> None:
        self.assertEqual(bpf.mov_reg(R6, R1).encode(), bytes([0xBF, 0x16, 0, 0, 0, 0, 0, 0]))
        self.assertEqual(bpf.mov_imm(R0, 1).encode(), bytes([0xB7, 0x00, 0, 0, 1, 0, 0, 0]))
        self.assertEqual(bpf.add_imm(3, -12).encode(), bytes([0x07, 0x03, 0, 0]) + struct.pack("<i", -12))
        self.assertEqual(bpf.load_word(1, R0, 0).encode(), bytes([0x61, 0x01, 0, 0, 0, 0, 0, 0]))
        self.assertEqual(bpf.load_ctx_word(7, R6, 20).encode(), bytes([0x61, 0x67, 20, 0, 0, 0, 0, 0]))
        self.assertEqual(bpf.store_imm(8, R10, -24, 0).encode(), bytes([0x7A, 0x0A]) + struct.pack("<hi", -24, 0))
        self.assertEqual(bpf.store_imm(2, R10, -14, 0xFFFF).encode(), bytes([0x6A, 0x0A]) + struct.pack("<hi", -14, 0xFFFF))
        self.assertEqual(bpf.store_reg(4, R10, -32, R1).encode(), bytes([0x63, 0x1A]) + struct.pack("<hi", -32, 0))
        self.assertEqual(bpf.call(82).encode(), bytes([0x85, 0, 0, 0, 82, 0, 0, 0]))
        self.assertEqual(bpf.exit_().encode(), bytes([0x95, 0, 0, 0, 0, 0, 0, 0]))

    def test_map_fd_load_takes_two_slots(self) -> None:
        load = bpf.load_map_fd(R1, 7)
        self.assertEqual(load.slots, 2)
        # opcode BPF_LD|BPF_DW|BPF_IMM, src BPF_PSEUDO_MAP_FD (1), imm the fd; then a zero slot.
        self.assertEqual(load.encode(), bytes([0x18, 0x11, 0, 0, 7, 0, 0, 0]) + bytes(8))

    def test_jumps_count_slots_from_the_next_instruction(self) -> None:
        code = bpf.assemble([
            bpf.jump_eq(R0, 0, "end"),   # slot 0: skips slots 1-3 (offset 3)
            bpf.load_map_fd(R1, 3),      # slots 1-2
            bpf.jump_ne(R0, 5, "end"),   # slot 3: offset 0
            "end",
            bpf.exit_(),                 # slot 4
            bpf.jump("end"),             # slot 5: back to 4 (offset -2)
        ])
        self.assertEqual(len(code), 6 * 8)
        self.assertEqual(code[0:8], bytes([0x15, 0x00]) + struct.pack("<hi", 3, 0))
        self.assertEqual(code[24:32], bytes([0x55, 0x00]) + struct.pack("<hi", 0, 5))
        self.assertEqual(code[40:48], bytes([0x05, 0x00]) + struct.pack("<hi", -2, 0))

    def test_bad_labels_are_refused(self) -> None:
        self.assertRaises(ValueError, bpf.assemble, [bpf.jump("nowhere")])
        self.assertRaises(ValueError, bpf.assemble, ["a", "a", bpf.exit_()])

    def test_the_program_reads_where_the_key_says(self) -> None:
        program = steering_program(clients_fd=11, sockets_fd=12)
        insns = [i for i in program if isinstance(i, Instruction)]
        code = bpf.assemble(program)
        self.assertEqual(len(code), 8 * sum(i.slots for i in insns))
        # The key's 20 bytes start at R10-24; IPv4 lands at R10-12 (key[12:16]) behind ff ff at R10-14.
        self.assertEqual(KEY_SIZE, 20)
        stores = {(i.offset, i.imm) for i in insns if i.opcode == 0x6A}
        self.assertEqual(stores, {(-14, 0xFFFF)})
        maps = [i.imm for i in insns if i.wide is not None]
        self.assertEqual(maps, [11, 12])
        # The program ends SK_PASS (1): it never drops.
        self.assertEqual(insns[-2:], [bpf.mov_imm(R0, 1), bpf.exit_()])


class KeyTests(SynchronousTestCase):
    """A client's key: 16 address bytes (IPv4 mapped), the port in network order, two zero bytes."""

    def test_ipv4_is_mapped(self) -> None:
        key = client_key(("198.51.100.7", 50000))
        self.assertEqual(len(key), KEY_SIZE)
        self.assertEqual(key, bytes(10) + b"\xff\xff" + bytes([198, 51, 100, 7]) + b"\xc3\x50" + b"\0\0")
        # What a dual-stack socket calls the same client has the same key.
        self.assertEqual(client_key(("::ffff:198.51.100.7", 50000)), key)
        self.assertEqual(key_address(key), ("198.51.100.7", 50000))

    def test_ipv6(self) -> None:
        key = client_key(("2001:db8::5", 443))
        self.assertEqual(key, socket.inet_pton(socket.AF_INET6, "2001:db8::5") + b"\x01\xbb\0\0")
        self.assertEqual(key_address(key), ("2001:db8::5", 443))
        self.assertEqual(client_key(("fe80::1%lo", 1))[:16], socket.inet_pton(socket.AF_INET6, "fe80::1"))

    def test_inheritance_description_round_trips(self) -> None:
        steering = OwnerSteering(2, 10, 11, 12, 13)
        mapping, text = steering.inheritable(first=3)
        self.assertEqual(mapping, {3: 10, 4: 11, 5: 12, 6: 13})
        child = OwnerSteering.inherited(text)
        self.assertEqual((child.workers, child.fds()), (2, (3, 4, 5, 6)))
        self.assertRaises(ValueError, OwnerSteering.inherited, "off: no")
        self.assertRaises(ValueError, OwnerSteering.inherited, "3,4:2")


class FakeSteering:
    """The workers' steering map as a dict; worker 1's transceiver is at HOP2."""

    def __init__(self) -> None:
        self.entries: dict[Address, tuple[int, bool]] = {}
        self.owners = {HOP: 0, HOP2: 1}
        self.fail = False

    def owner_of(self, hop: Address) -> int | None:
        return self.owners.get(hop)

    def steer(self, client: Address, owner: int, taken: bool) -> None:
        if self.fail:
            raise OSError("map full")
        self.entries[client] = (owner, taken)

    def entry(self, client: Address) -> tuple[int, bool] | None:
        return self.entries.get(client)

    def unsteer(self, client: Address) -> bool:
        return self.entries.pop(client, None) is not None


class RelaySteeringTests(SynchronousTestCase):
    """Worker 0's relay (its transceiver at HOP) and worker 1's (at HOP2) sharing one fake map."""

    def setUp(self) -> None:
        self.map = FakeSteering()
        self.w0 = Harness()
        self.w0.relay.use_steering(self.map, 0, HOP)
        self.w1 = Harness()
        self.w1.relay.use_steering(self.map, 1, HOP2)

    def test_a_flow_for_another_worker_is_steered_there_and_taken(self) -> None:
        # The client's check hashed to worker 0 but names worker 1's transceiver.
        self.w0.confirm(CLIENT, HOP2)
        self.assertEqual(self.map.entries, {CLIENT: (1, False)})
        self.assertEqual(self.w0.relay.cross_worker_packets, 1)  # the check crossed
        # The kernel now sends its media to worker 1, whose relay takes the flow from the map.
        media = srtp()
        self.w1.from_client(media)
        self.assertEqual(len(self.w1.to_transceiver), 1)
        self.assertEqual(self.w1.to_transceiver[0][1], HOP2)
        self.assertEqual(self.map.entries, {CLIENT: (1, True)})
        flow = self.w1.relay.flows.confirmed[CLIENT]
        self.assertFalse(flow.foreign)
        self.assertEqual(self.w1.relay.flows.created_steered, 1)
        # And on: the hot path, no crossing.
        for _ in range(5):
            self.w1.from_client(srtp())
        self.assertEqual(self.w1.relay.cross_worker_packets, 0)
        self.assertEqual(self.w1.relay.steering_events["taken"], 1)
        # The transceiver answers through worker 1 now.
        self.w1.from_transceiver(b"\x80\x00answer", CLIENT, HOP2)
        self.assertEqual(self.w1.to_client[-1], (b"\x80\x00answer", CLIENT))

    def test_a_flow_for_its_own_worker_is_written_taken(self) -> None:
        self.w0.confirm(CLIENT, HOP)
        self.assertEqual(self.map.entries, {CLIENT: (0, True)})
        self.assertEqual(self.w0.relay.cross_worker_packets, 0)

    def test_a_crossing_flow_counts_every_packet_until_steered(self) -> None:
        self.w0.confirm(CLIENT, HOP2)
        for _ in range(3):
            self.w0.from_client(srtp())  # still hashed here (the map not read by anyone)
        self.assertEqual(self.w0.relay.cross_worker_packets, 4)

    def test_entries_go_with_the_owners_flow_not_the_writers(self) -> None:
        self.w0.confirm(CLIENT, HOP2)
        self.w1.from_client(srtp())
        # Worker 0's flow idles out first: the entry was taken by the owner and stays.
        self.w0.clock.advance(60)
        self.w0.relay.sweep()
        self.assertNotIn(CLIENT, self.w0.relay.flows.confirmed)
        self.assertEqual(self.map.entries, {CLIENT: (1, True)})
        # The owner's flow idles out: the entry goes, the client is left to the hash.
        self.w1.clock.advance(60)
        self.w1.relay.sweep()
        self.assertEqual(self.map.entries, {})
        self.assertEqual(self.w1.relay.steering_events["removed"], 1)

    def test_an_entry_never_taken_goes_with_its_writers_flow(self) -> None:
        self.w0.confirm(CLIENT, HOP2)
        self.w0.clock.advance(60)
        self.w0.relay.sweep()
        self.assertEqual(self.map.entries, {})

    def test_an_entry_for_another_worker_is_not_taken(self) -> None:
        self.map.entries[CLIENT] = (0, False)
        self.w1.from_client(srtp())
        self.assertEqual(self.w1.to_transceiver, [])
        self.assertEqual(self.w1.relay.drops["not_stun_unknown_source"], 1)

    def test_a_stopping_worker_removes_its_entries(self) -> None:
        self.w0.confirm(CLIENT, HOP)
        other = ("198.51.100.8", 1)
        self.w0.confirm(other, HOP2)
        self.w0.relay.release_steering()
        # Its own client's entry goes; the other, not yet taken by worker 1, too.
        self.assertEqual(self.map.entries, {})

    def test_a_refused_write_is_counted_and_the_flow_works(self) -> None:
        self.map.fail = True
        self.w0.confirm(CLIENT, HOP2)
        self.assertEqual(self.w0.relay.steering_events["error"], 1)
        self.w0.from_client(srtp())
        self.assertEqual(self.w0.to_transceiver[-1][1], HOP2)

    def test_without_steering_crossings_are_still_counted(self) -> None:
        h = Harness("recvmmsg") if _helper() else Harness()
        h.relay.use_steering(None, 0, HOP)
        h.confirm(CLIENT, HOP2)
        h.from_client(srtp())
        h.from_client(binding_request(token(HOP2)))
        self.assertEqual(h.relay.cross_worker_packets, 3)
        samples = {(s[1], tuple(sorted(s[3].items()))): s[4] for s in h.relay.metrics()}
        self.assertEqual(samples[("voiceedge_relay_steering", (("state", "off"),))], 1)
        self.assertEqual(samples[("voiceedge_relay_cross_worker_packets", ())], 3)


def _helper() -> bool:
    try:
        from voiceedge.relay import _batchio  # noqa: F401
    except ImportError:
        return False
    return True


class KernelSteeringTests(SynchronousTestCase):
    """Two sockets sharing a loopback port, the program attached: datagrams go where the map says."""

    family = socket.AF_INET
    host = LOOPBACK

    def setUp(self) -> None:
        why = bpf.bpf_available()
        if why is not None:
            raise SkipTest(why)
        self.steering = OwnerSteering.create(2, 64)
        self.addCleanup(self.steering.close)
        self.sockets: list[socket.socket] = []
        port = 0
        for _ in range(2):
            sock = socket.socket(self.family, socket.SOCK_DGRAM)
            self.addCleanup(sock.close)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind((self.host, port))
            except OSError as e:
                raise SkipTest(f"{self.host}: {e}") from None
            port = sock.getsockname()[1]
            sock.setblocking(False)
            self.sockets.append(sock)
        self.port = port
        for index, sock in enumerate(self.sockets):
            self.steering.join(index, sock)
        self.clients = []
        for _ in range(8):
            client = socket.socket(self.family, socket.SOCK_DGRAM)
            self.addCleanup(client.close)
            client.bind((self.host, 0))
            self.clients.append(client)

    def landed(self) -> list[int | None]:
        """Each client sends one datagram; which socket each arrived at (None: lost)."""
        for client in self.clients:
            client.sendto(b"x", (self.host, self.port))
        found: dict[Address, int] = {}
        deadline = time.monotonic() + 2.0
        while len(found) < len(self.clients) and time.monotonic() < deadline:
            for index, sock in enumerate(self.sockets):
                if sock.fileno() < 0:
                    continue
                try:
                    _, source = sock.recvfrom(64)
                except BlockingIOError:
                    continue
                found[source[:2]] = index
            time.sleep(0.001)
        return [found.get(c.getsockname()[:2]) for c in self.clients]

    def test_datagrams_go_to_the_named_socket(self) -> None:
        self.assertNotIn(None, self.landed())  # no entry: the hash, nothing lost
        for client in self.clients:
            self.steering.steer(client.getsockname()[:2], 1, False)
        self.assertEqual(self.landed(), [1] * 8)
        for client in self.clients:
            self.steering.steer(client.getsockname()[:2], 0, True)
        self.assertEqual(self.landed(), [0] * 8)
        self.assertEqual(self.steering.entry(self.clients[0].getsockname()[:2]), (0, True))

    def test_a_closed_sockets_clients_fall_back_to_the_hash(self) -> None:
        for client in self.clients:
            self.steering.steer(client.getsockname()[:2], 0, True)
        self.sockets[0].close()  # the kernel empties its slot
        self.assertEqual(self.landed(), [1] * 8)
        self.assertEqual(self.steering.purge(0), 8)
        self.assertIsNone(self.steering.entry(self.clients[0].getsockname()[:2]))

    def test_owners_are_found_by_their_transceivers_address(self) -> None:
        self.steering.publish(1, ("127.0.0.1", 4444))
        self.assertEqual(self.steering.owner_of(("127.0.0.1", 4444)), 1)
        self.assertIsNone(self.steering.owner_of(("127.0.0.1", 4445)))
        self.steering.publish(1, None)
        self.steering.publish(0, ("::1", 4444))
        # Another worker's view (its own cache) reads the array as it is now.
        view = OwnerSteering(2, *self.steering.fds())
        self.assertIsNone(view.owner_of(("127.0.0.1", 4444)))
        self.assertEqual(view.owner_of(("::1", 4444)), 0)

    def test_a_refused_program_says_why(self) -> None:
        # Returning R0 before setting it: the verifier refuses, and its log is in the error.
        code = bpf.assemble([bpf.exit_()])
        with self.assertRaises(bpf.BpfError) as caught:
            bpf.load_program(21, code, 39)
        self.assertIn("verifier log", str(caught.exception))
        self.assertIn("R0", str(caught.exception))


class KernelSteeringIPv6Tests(KernelSteeringTests):
    """The same over IPv6 loopback: the program's other branch (16 address bytes at offset 8)."""

    family = socket.AF_INET6
    host = "::1"
