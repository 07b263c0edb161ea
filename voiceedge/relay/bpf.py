# -*- test-case-name: tests.test_reuseport -*-
"""The few parts of Linux's ``bpf()`` system call the relay uses, in ctypes, and an eBPF assembler.

Only what steering a ``SO_REUSEPORT`` group needs (:mod:`voiceedge.relay.reuseport`):
creating maps, reading, writing and deleting their elements, loading a
program (the verifier's log goes into the error when it refuses one). An
instruction is 8 bytes (opcode, destination and source registers, a signed
16-bit offset, a signed 32-bit immediate); :func:`assemble` turns a list of
:class:`Instruction` values and label names into the bytes the kernel loads,
resolving jumps to labels. Anything that fails raises :class:`BpfError`
(an ``OSError`` with the kernel's errno).
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys
from dataclasses import dataclass
from typing import Sequence

__all__ = [
    "BpfError",
    "Instruction",
    "Program",
    "assemble",
    "bpf_available",
    "create_map",
    "delete_element",
    "load_program",
    "lookup_element",
    "next_key",
    "update_element",
    # instructions
    "add_imm",
    "call",
    "exit_",
    "jump",
    "jump_eq",
    "jump_ne",
    "load_ctx_word",
    "load_map_fd",
    "load_word",
    "mov_imm",
    "mov_reg",
    "store_imm",
    "store_reg",
]

# bpf() commands (linux/bpf.h, enum bpf_cmd).
MAP_CREATE = 0
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
MAP_GET_NEXT_KEY = 4
PROG_LOAD = 5

# The system call's number, by machine (asm/unistd.h); elsewhere there is none to call.
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "arm64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351, "armv7l": 386}

# Registers: R0 returns, R1-R5 carry a call's arguments (lost across it), R6-R9 are kept, R10 the frame.
R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)

# Instruction classes, sizes, modes, operations and sources (linux/bpf_common.h, linux/bpf.h).
_LD, _LDX, _ST, _STX, _JMP, _ALU64 = 0x00, 0x01, 0x02, 0x03, 0x05, 0x07
SIZES = {8: 0x18, 4: 0x00, 2: 0x08, 1: 0x10}  # bytes -> BPF_DW, BPF_W, BPF_H, BPF_B
_IMM, _MEM = 0x00, 0x60
_ADD, _MOV = 0x00, 0xB0
_JA, _JEQ, _JNE, _CALL, _EXIT = 0x00, 0x10, 0x50, 0x80, 0x90
_K, _X = 0x00, 0x08
_PSEUDO_MAP_FD = 1  # src of a 64-bit immediate load: the immediate is a map's fd


class BpfError(OSError):
    """A ``bpf()`` call failed (its errno), or ``bpf()`` is not there at all."""


@dataclass(frozen=True, slots=True)
class Instruction:
    """One eBPF instruction; ``target`` names the label a jump goes to (its offset is filled in by :func:`assemble`)."""

    opcode: int
    dst: int = 0
    src: int = 0
    offset: int = 0
    imm: int = 0
    target: str | None = None
    #: A 64-bit immediate load takes two instruction slots; ``wide`` is its upper half.
    wide: int | None = None

    @property
    def slots(self) -> int:
        """How many 8-byte slots it takes."""
        return 1 if self.wide is None else 2

    def encode(self, offset: int | None = None) -> bytes:
        """The instruction's bytes (``offset`` replaces a jump's)."""
        off = self.offset if offset is None else offset
        head = struct.pack("<BBhi", self.opcode, (self.src << 4) | self.dst, off, _signed32(self.imm))
        if self.wide is None:
            return head
        return head + struct.pack("<BBhi", 0, 0, 0, _signed32(self.wide))


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


# -- the instructions the relay's program uses ---------------------------------------------------


def mov_reg(dst: int, src: int) -> Instruction:
    """``dst = src`` (64 bits)."""
    return Instruction(_ALU64 | _MOV | _X, dst, src)


def mov_imm(dst: int, imm: int) -> Instruction:
    """``dst = imm`` (sign-extended to 64 bits)."""
    return Instruction(_ALU64 | _MOV | _K, dst, imm=imm)


def add_imm(dst: int, imm: int) -> Instruction:
    """``dst += imm`` (64 bits)."""
    return Instruction(_ALU64 | _ADD | _K, dst, imm=imm)


def load_word(dst: int, src: int, offset: int) -> Instruction:
    """``dst = *(u32 *)(src + offset)``."""
    return Instruction(_LDX | SIZES[4] | _MEM, dst, src, offset)


load_ctx_word = load_word  # the same instruction, read from the program's context (R1 at entry)


def store_imm(size: int, dst: int, offset: int, imm: int) -> Instruction:
    """``*(u<size*8> *)(dst + offset) = imm``."""
    return Instruction(_ST | SIZES[size] | _MEM, dst, offset=offset, imm=imm)


def store_reg(size: int, dst: int, offset: int, src: int) -> Instruction:
    """``*(u<size*8> *)(dst + offset) = src``."""
    return Instruction(_STX | SIZES[size] | _MEM, dst, src, offset)


def load_map_fd(dst: int, fd: int) -> Instruction:
    """``dst = the map whose fd is fd`` (the kernel swaps the fd for the map's address when it loads)."""
    return Instruction(_LD | SIZES[8] | _IMM, dst, _PSEUDO_MAP_FD, imm=fd, wide=0)


def jump(label: str) -> Instruction:
    """``goto label``."""
    return Instruction(_JMP | _JA, target=label)


def jump_eq(dst: int, imm: int, label: str) -> Instruction:
    """``if dst == imm goto label``."""
    return Instruction(_JMP | _JEQ | _K, dst, imm=imm, target=label)


def jump_ne(dst: int, imm: int, label: str) -> Instruction:
    """``if dst != imm goto label``."""
    return Instruction(_JMP | _JNE | _K, dst, imm=imm, target=label)


def call(helper: int) -> Instruction:
    """``R0 = helper(R1, ..., R5)``."""
    return Instruction(_JMP | _CALL, imm=helper)


def exit_() -> Instruction:
    """``return R0``."""
    return Instruction(_JMP | _EXIT)


Program = Sequence["Instruction | str"]


def assemble(program: Program) -> bytes:
    """The bytes of ``program``: instructions, with label names (strings) marking where jumps go.

    A jump's offset counts slots from the instruction after it. An unknown
    or repeated label is a ``ValueError``.
    """
    labels: dict[str, int] = {}
    at = 0
    for item in program:
        if isinstance(item, str):
            if item in labels:
                raise ValueError(f"label {item!r} appears twice")
            labels[item] = at
        else:
            at += item.slots
    out = bytearray()
    at = 0
    for item in program:
        if isinstance(item, str):
            continue
        offset = None
        if item.target is not None:
            if item.target not in labels:
                raise ValueError(f"no label {item.target!r}")
            offset = labels[item.target] - (at + 1)
        out += item.encode(offset)
        at += item.slots
    return bytes(out)


# -- the system call ---------------------------------------------------------------------------


class _MapCreate(ctypes.Structure):
    _fields_ = [
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * 16),
    ]


class _MapElement(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),  # or next_key
        ("flags", ctypes.c_uint64),
    ]


class _ProgLoad(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
    ]


_libc: ctypes.CDLL | None = None


def _syscall_number() -> int:
    if not sys.platform.startswith("linux"):
        raise BpfError(0, f"bpf() is Linux's; this is {sys.platform}")
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        raise BpfError(0, f"bpf()'s system call number on {platform.machine()} is not known here")
    return number


def _bpf(command: int, attr: ctypes.Structure) -> int:
    """``bpf(command, &attr, sizeof attr)``; its result, or :class:`BpfError`."""
    global _libc
    number = _syscall_number()
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    result = int(_libc.syscall(ctypes.c_long(number), ctypes.c_int(command), ctypes.byref(attr),
                               ctypes.c_uint(ctypes.sizeof(attr))))
    if result < 0:
        errno = ctypes.get_errno()
        raise BpfError(errno, os.strerror(errno))
    return result


def bpf_available() -> str | None:
    """None where this process may create a map, else why not (a sentence)."""
    try:
        fd = create_map(2, 4, 4, 1, name=b"voiceedge_probe")  # BPF_MAP_TYPE_ARRAY
    except BpfError as e:
        return f"bpf() refused: {e.strerror or e}"
    os.close(fd)
    return None


def create_map(map_type: int, key_size: int, value_size: int, max_entries: int, flags: int = 0,
               name: bytes = b"") -> int:
    """A new map's fd (close-on-exec, as the kernel makes every bpf fd)."""
    attr = _MapCreate(map_type, key_size, value_size, max_entries, flags, 0, 0, name[:15])
    return _bpf(MAP_CREATE, attr)


def update_element(fd: int, key: bytes, value: bytes, flags: int = 0) -> None:
    """Write ``key -> value`` (``flags``: 0 any, 1 only a new key, 2 only an existing one)."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    _bpf(MAP_UPDATE_ELEM, _MapElement(fd, 0, ctypes.addressof(k), ctypes.addressof(v), flags))


def lookup_element(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value of ``key``, or None where there is none."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    try:
        _bpf(MAP_LOOKUP_ELEM, _MapElement(fd, 0, ctypes.addressof(k), ctypes.addressof(v), 0))
    except BpfError as e:
        if e.errno == 2:  # ENOENT
            return None
        raise
    return v.raw


def delete_element(fd: int, key: bytes) -> bool:
    """Remove ``key``; whether it was there."""
    k = ctypes.create_string_buffer(key, len(key))
    try:
        _bpf(MAP_DELETE_ELEM, _MapElement(fd, 0, ctypes.addressof(k), 0, 0))
    except BpfError as e:
        if e.errno == 2:
            return False
        raise
    return True


def next_key(fd: int, key: bytes | None, key_size: int) -> bytes | None:
    """The key after ``key`` (None: the first), or None at the end: a walk over a hash map."""
    k = ctypes.create_string_buffer(key or b"", key_size)
    n = ctypes.create_string_buffer(key_size)
    try:
        _bpf(MAP_GET_NEXT_KEY, _MapElement(fd, 0, 0 if key is None else ctypes.addressof(k), ctypes.addressof(n), 0))
    except BpfError as e:
        if e.errno == 2:
            return None
        raise
    return n.raw


def load_program(prog_type: int, code: bytes, expected_attach_type: int = 0, name: bytes = b"",
                 license: bytes = b"GPL") -> int:
    """Load the instructions ``code``; the program's fd, or :class:`BpfError` with the verifier's log in it."""
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(license)
    log = ctypes.create_string_buffer(1 << 16)

    def attempt(log_level: int) -> int:
        attr = _ProgLoad(
            prog_type, len(code) // 8, ctypes.addressof(insns), ctypes.addressof(lic),
            log_level, len(log) if log_level else 0, ctypes.addressof(log) if log_level else 0,
            0, 0, name[:15], 0, expected_attach_type,
        )
        return _bpf(PROG_LOAD, attr)

    try:
        return attempt(0)
    except BpfError:
        pass
    # Once more with the verifier's log, so the error says why.
    try:
        return attempt(1)
    except BpfError as e:
        text = log.value.decode("utf-8", "replace").strip()
        raise BpfError(e.errno, f"{e.strerror}; verifier log:\n{text}" if text else str(e.strerror)) from None
