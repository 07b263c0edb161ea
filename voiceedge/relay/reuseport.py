# -*- test-case-name: tests.test_reuseport -*-
"""Steering by owner: a client's packets go to the worker whose transceiver holds its call.

The all-in-one's workers share the public UDP port (``SO_REUSEPORT``). By
itself the kernel picks a worker by a hash of the client's address, which
knows nothing of calls: about half of a call's packets would reach a worker
whose relay forwards them to another worker's transceiver. Here a short
``BPF_PROG_TYPE_SK_REUSEPORT`` program, attached to the port's reuseport
group, looks the client's source address and port up in a hash map
(:func:`client_key` -> owner index) and selects that worker's socket from a
``BPF_MAP_TYPE_REUSEPORT_SOCKARRAY``. No entry, or an owner whose socket is
closed (the kernel empties its slot): the program selects nothing and the
kernel's hash applies, as without steering. A third map, an array, holds each
worker's transceiver address (its route tokens' address), so any relay can
tell which worker owns a flow's next hop.

The supervisor creates the maps and loads the program
(:meth:`OwnerSteering.create`) and its workers inherit the four descriptors
(:meth:`OwnerSteering.inheritable`, :meth:`OwnerSteering.inherited`). See
docs/relay.md for when entries are written and removed.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Iterator

from voiceedge.relay import bpf
from voiceedge.relay.bpf import (
    R0,
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R10,
    add_imm,
    call,
    exit_,
    jump,
    jump_eq,
    jump_ne,
    load_ctx_word,
    load_map_fd,
    load_word,
    mov_imm,
    mov_reg,
    store_imm,
    store_reg,
)
from voiceedge.relay.flows import Address

__all__ = [
    "KEY_SIZE",
    "STEERING_ENV",
    "OwnerSteering",
    "client_key",
    "key_address",
    "steering_program",
]

#: Where a worker finds the descriptors it inherited (``<program>,<sockets>,<clients>,<owners>:<workers>``),
#: or why steering is off (``off: <reason>``).
STEERING_ENV = "VOICEEDGE_WORKER_STEERING"

# linux/bpf.h
_MAP_HASH, _MAP_ARRAY, _MAP_REUSEPORT_SOCKARRAY = 1, 2, 20
_PROG_SK_REUSEPORT = 21
_ATTACH_SK_REUSEPORT_SELECT = 39
_NO_PREALLOC = 1
_HELPER_MAP_LOOKUP_ELEM = 1
_HELPER_SKB_LOAD_BYTES = 26
_HELPER_SKB_LOAD_BYTES_RELATIVE = 68
_HELPER_SK_SELECT_REUSEPORT = 82
_HDR_START_NET = 1
_SK_PASS = 1
# struct sk_reuseport_md: data (8), data_end (8), len (4), then eth_protocol, in network order.
_CTX_ETH_PROTOCOL = 20
# ETH_P_IP (0x0800) and ETH_P_IPV6 (0x86DD) as a little-endian load of their network-order bytes reads them.
_ETH_IP = 0x0008
_ETH_IPV6 = 0xDD86
# asm-generic/socket.h
SO_ATTACH_REUSEPORT_EBPF = 52

#: A client's key: its IPv6 address (IPv4 mapped, ``::ffff:a.b.c.d``, as a dual-stack socket
#: spells it), its port in network order, two zero bytes.
KEY_SIZE = 20
# The owners map's value: the owner's index, and 1 once the owner's relay has taken the flow.
_ENTRY = struct.Struct("<II")
_INDEX = struct.Struct("<I")
_MAPPED = b"\0" * 10 + b"\xff\xff"


def client_key(address: Address) -> bytes:
    """The map key of a client (or transceiver) address: 16 address bytes, the port, two zero bytes."""
    host, port = address[0], address[1]
    if ":" in host:
        packed = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    else:
        packed = _MAPPED + socket.inet_pton(socket.AF_INET, host)
    return packed + struct.pack(">H", port) + b"\0\0"


def key_address(key: bytes) -> Address:
    """The address a :func:`client_key` holds (an IPv4-mapped one as IPv4 text)."""
    if key[:12] == _MAPPED:
        host = socket.inet_ntop(socket.AF_INET, key[12:16])
    else:
        host = socket.inet_ntop(socket.AF_INET6, key[:16])
    return host, struct.unpack(">H", key[16:18])[0]


def _source_address(offset: int, to: int, size: int) -> list[bpf.Instruction | str]:
    """Copy ``size`` bytes at ``offset`` in the network header to the stack at R10 + ``to`` (R6: ctx); else to "pass"."""
    return [
        mov_reg(R1, R6),                                 # arg 1: ctx
        mov_imm(R2, offset),                             # arg 2: where the source address is in the IP header
        mov_reg(R3, R10),                                #
        add_imm(R3, to),                                 # arg 3: its place in the key
        mov_imm(R4, size),                               # arg 4: its length
        mov_imm(R5, _HDR_START_NET),                     # arg 5: from the network header
        call(_HELPER_SKB_LOAD_BYTES_RELATIVE),           # bpf_skb_load_bytes_relative()
        jump_ne(R0, 0, "pass"),                          # could not read it: the hash
    ]


def steering_program(clients_fd: int, sockets_fd: int) -> list[bpf.Instruction | str]:
    """The reuseport program: the client's owner's socket from ``sockets_fd``, if ``clients_fd`` names one.

    Stack: the 20-byte key at R10-24 (R10-8 holds its port), the owner's
    index at R10-32. It always returns ``SK_PASS``: a packet is never
    dropped here, only left to the kernel's hash when nothing is selected.
    """
    return [
        mov_reg(R6, R1),                                 # R6 = ctx (struct sk_reuseport_md), kept across calls
        store_imm(8, R10, -24, 0),                       # key[0:8] = 0
        store_imm(8, R10, -16, 0),                       # key[8:16] = 0
        store_imm(8, R10, -8, 0),                        # key[16:20] = 0 (port, padding) and 4 spare bytes
        load_ctx_word(R7, R6, _CTX_ETH_PROTOCOL),        # R7 = ctx->eth_protocol
        jump_eq(R7, _ETH_IPV6, "ipv6"),                  # IPv6: its own 16 bytes
        jump_ne(R7, _ETH_IP, "pass"),                    # neither IPv4 nor IPv6: the hash
        store_imm(2, R10, -14, 0xFFFF),                  # IPv4: key[10:12] = ff ff (::ffff:a.b.c.d)
        *_source_address(12, -12, 4),                    # IPv4: its source address to key[12:16]
        jump("port"),                                    #
        "ipv6",
        *_source_address(8, -24, 16),                    # IPv6: its source address to key[0:16]
        "port",
        mov_reg(R1, R6),                                 # arg 1: ctx
        mov_imm(R2, 0),                                  # arg 2: offset 0 of the data, the UDP header's source port
        mov_reg(R3, R10),                                #
        add_imm(R3, -8),                                 # arg 3: to key[16:18]
        mov_imm(R4, 2),                                  # arg 4: 2 bytes
        call(_HELPER_SKB_LOAD_BYTES),                    # bpf_skb_load_bytes()
        jump_ne(R0, 0, "pass"),                          # could not read it: the hash
        load_map_fd(R1, clients_fd),                     # arg 1: the owners map
        mov_reg(R2, R10),                                #
        add_imm(R2, -24),                                # arg 2: the key
        call(_HELPER_MAP_LOOKUP_ELEM),                   # R0 = &entry, or NULL
        jump_eq(R0, 0, "pass"),                          # no owner known: the hash
        load_word(R1, R0, 0),                            # R1 = entry's owner index
        store_reg(4, R10, -32, R1),                      # on the stack, as the sockarray's key
        mov_reg(R1, R6),                                 # arg 1: ctx
        load_map_fd(R2, sockets_fd),                     # arg 2: the workers' sockets
        mov_reg(R3, R10),                                #
        add_imm(R3, -32),                                # arg 3: &index
        mov_imm(R4, 0),                                  # arg 4: flags
        call(_HELPER_SK_SELECT_REUSEPORT),               # select it (fails on an empty slot: the hash)
        "pass",
        mov_imm(R0, _SK_PASS),                           # SK_PASS: the selected socket, else the hash
        exit_(),                                         #
    ]


class OwnerSteering:
    """The program and maps one host's workers share; each method is one or a few ``bpf()`` calls.

    ``sockets_fd`` is the reuseport sockarray (worker index -> its public
    socket), ``clients_fd`` the hash map (client key -> owner index and
    whether the owner's relay took it), ``owners_fd`` the array (worker
    index -> its transceiver's address as a :func:`client_key`).
    """

    def __init__(self, workers: int, program_fd: int, sockets_fd: int, clients_fd: int, owners_fd: int) -> None:
        self.workers = workers
        self.program_fd = program_fd
        self.sockets_fd = sockets_fd
        self.clients_fd = clients_fd
        self.owners_fd = owners_fd
        self._owner_of: dict[Address, int] = {}

    @classmethod
    def create(cls, workers: int, max_clients: int) -> OwnerSteering:
        """Maps for ``workers`` workers and ``max_clients`` clients, and the program; :class:`bpf.BpfError` if refused."""
        fds: list[int] = []
        try:
            fds.append(bpf.create_map(_MAP_REUSEPORT_SOCKARRAY, 4, 4, workers, name=b"ve_sockets"))
            # Allocated as entries are written (no preallocation of max_clients entries).
            fds.append(bpf.create_map(_MAP_HASH, KEY_SIZE, _ENTRY.size, max_clients, _NO_PREALLOC, name=b"ve_clients"))
            fds.append(bpf.create_map(_MAP_ARRAY, 4, KEY_SIZE, workers, name=b"ve_owners"))
            code = bpf.assemble(steering_program(fds[1], fds[0]))
            program = bpf.load_program(_PROG_SK_REUSEPORT, code, _ATTACH_SK_REUSEPORT_SELECT, b"ve_steer")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return cls(workers, program, fds[0], fds[1], fds[2])

    def fds(self) -> tuple[int, int, int, int]:
        """The program's and the three maps' descriptors."""
        return self.program_fd, self.sockets_fd, self.clients_fd, self.owners_fd

    def inheritable(self, first: int = 3) -> tuple[dict[int, int], str]:
        """What a worker inherits: child fd -> this process's fd (``first`` on), and its :data:`STEERING_ENV` value."""
        mapping = {first + i: fd for i, fd in enumerate(self.fds())}
        return mapping, ",".join(str(fd) for fd in mapping) + f":{self.workers}"

    @classmethod
    def inherited(cls, text: str) -> OwnerSteering:
        """The steering a :data:`STEERING_ENV` value describes (``ValueError`` if it describes none)."""
        fds_text, sep, workers = text.partition(":")
        fds = [int(fd) for fd in fds_text.split(",")]
        if not sep or len(fds) != 4:
            raise ValueError(f"not a steering description: {text!r}")
        return cls(int(workers), *fds)

    def close(self) -> None:
        """Close the four descriptors (the kernel frees what no other process holds)."""
        for fd in self.fds():
            try:
                os.close(fd)
            except OSError:
                pass

    # -- a worker joining --------------------------------------------------------------------------

    def join(self, index: int, sock: socket.socket) -> None:
        """Put ``sock`` (bound, ``SO_REUSEPORT``) at ``index`` and attach the program to its group."""
        if not 0 <= index < self.workers:
            raise ValueError(f"worker {index} of {self.workers}")
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, self.program_fd)
        bpf.update_element(self.sockets_fd, _INDEX.pack(index), _INDEX.pack(sock.fileno()))

    def publish(self, index: int, transceiver: Address | None) -> None:
        """Say (or with None, unsay) that worker ``index``'s transceiver is at ``transceiver``."""
        value = client_key(transceiver) if transceiver is not None else bytes(KEY_SIZE)
        bpf.update_element(self.owners_fd, _INDEX.pack(index), value)

    def owner_of(self, hop: Address) -> int | None:
        """The index of the worker whose transceiver is at ``hop`` (the array is read again on a miss).

        An address once read is believed for the life of the process: a
        worker started again takes the same index, and its transceiver the
        same address or a new one (a miss).
        """
        index = self._owner_of.get(hop)
        if index is None:
            self._owner_of = {key_address(value): i for i, value in self._owners() if any(value)}
            index = self._owner_of.get(hop)
        return index

    def _owners(self) -> Iterator[tuple[int, bytes]]:
        for index in range(self.workers):
            value = bpf.lookup_element(self.owners_fd, _INDEX.pack(index), KEY_SIZE)
            if value is not None:
                yield index, value

    # -- clients -----------------------------------------------------------------------------------

    def steer(self, client: Address, owner: int, taken: bool) -> None:
        """Send ``client``'s packets to worker ``owner`` (``taken``: written by the owner's relay)."""
        bpf.update_element(self.clients_fd, client_key(client), _ENTRY.pack(owner, 1 if taken else 0))

    def entry(self, client: Address) -> tuple[int, bool] | None:
        """``client``'s owner and whether the owner's relay took it, or None."""
        value = bpf.lookup_element(self.clients_fd, client_key(client), _ENTRY.size)
        if value is None:
            return None
        owner, taken = _ENTRY.unpack(value)
        return owner, bool(taken)

    def unsteer(self, client: Address) -> bool:
        """Leave ``client`` to the hash again; whether it had an entry."""
        return bpf.delete_element(self.clients_fd, client_key(client))

    def purge(self, owner: int) -> int:
        """Remove every entry naming ``owner`` (a worker that starts again: its predecessor's calls died with it)."""
        stale = []
        key = None
        while True:
            key = bpf.next_key(self.clients_fd, key, KEY_SIZE)
            if key is None:
                break
            value = bpf.lookup_element(self.clients_fd, key, _ENTRY.size)
            if value is not None and _ENTRY.unpack(value)[0] == owner:
                stale.append(key)
        for key in stale:
            bpf.delete_element(self.clients_fd, key)
        return len(stale)
