# -*- test-case-name: tests.test_relay_protocol -*-
"""CPU cost per forwarded packet: the voiceedge relay beside a plain recvfrom/sendto forwarder; packets per second with 1 and 2 workers.

``python bench/relay.py [--packets 200000] [--rate 60000] [--size 200] [--workers 1,2] [--worker-backends recvmmsg,python]``

Every variant runs in the same way, in separate processes on loopback: a
load generator (the client), the forwarder under test, and a sink standing
in for the transceiver. For the relay the generator first sends a STUN
Binding request with a valid route token naming the sink, the sink answers
through the relay's internal socket, and only then (a confirmed flow) does
the media flood start, so the measured path is the production hot path.
The forwarder's CPU time (user + system, ``getrusage`` taken inside it on
SIGUSR1) is read just before and just after the flood and divided by the
number of packets it forwarded (its own count, read at the same moments: the
sink's losses on a loaded machine do not count against a forwarder). Variants:

* ``plain``: ``while True: sendto(recvfrom())``, the floor for Python.
* ``relay-recvmmsg``: the relay as ``twistd voiceedge-relay`` runs it where
  the compiled helper is built (ClientPort: ``recvmmsg`` into slots, one
  ``sendmmsg`` per batch), reading at every wake-up (``[relay] poll_ms = 0``).
* ``relay-recvmmsg-poll``: the same reading every 2 ms under load
  (``poll_ms = 2``, the default: docs/relay.md, "Polling under load").
* ``relay-recvmmsg-nogso``: the same with ``VOICEEDGE_RELAY_GSO=off``: each
  datagram its own message in the ``sendmmsg``, where by default a run of
  equal datagrams to one destination leaves as one ``UDP_SEGMENT`` (GSO)
  message (the flood here is all one size to one sink: every batch is a run).
* ``relay-python``: the same relay on its fallback (ClientPort:
  ``recvfrom_into`` the relay's buffer, one datagram per call).
* ``relay-stock-port``: the same relay behind Twisted's stock ``udp.Port``
  (``recvfrom`` + ``datagramReceived``), to show what the custom doRead buys.

Then throughput with workers: ``--workers 1,2`` starts that many relay
processes sharing one public port with ``SO_REUSEPORT`` (as ``[process]
workers`` does), 32 clients from 32 source ports make flows through them, and
the generator sends as fast as it can for ``--packets``; the sink counts what
arrives. It prints packets per second delivered and the relays' CPU µs per
packet. On a 2-core machine the generator and the sink compete for the same
cores, so the figure is a lower bound of what the relays could do.

Bounded: every child has a deadline and the whole run stays under two minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

LOOPBACK = "127.0.0.1"
CHILD_DEADLINE = 40.0  # no child lives longer than this
RCVBUF = 4 << 20


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _report_cpu_on_usr1(forwarded: Any = lambda: 0) -> None:
    """Print this process's CPU seconds and ``forwarded()`` packets on stdout at every SIGUSR1."""

    def handler(signum: int, frame: Any) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        sys.stdout.write(
            json.dumps({"cpu": _cpu(), "user": usage.ru_utime, "system": usage.ru_stime, "forwarded": forwarded()})
            + "\n"
        )
        sys.stdout.flush()

    signal.signal(signal.SIGUSR1, handler)
    signal.alarm(int(CHILD_DEADLINE))


def _udp(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    sock.bind((LOOPBACK, port))
    return sock


# -- children ----------------------------------------------------------------


def run_sink(expected: int) -> None:
    """Stand-in transceiver: answer the first encapsulated STUN, count everything, print the count."""
    from voiceedge.wire import encap

    signal.alarm(int(CHILD_DEADLINE))
    sock = _udp()
    print(sock.getsockname()[1], flush=True)
    count = 0
    sock.settimeout(CHILD_DEADLINE)
    while count < expected:
        try:
            data, addr = sock.recvfrom(65536)
        except socket.timeout:
            break
        if count == 0 and data[:1] == b"\xf1":
            envelope, payload = encap.decode(data)
            if payload[:2] == b"\x00\x01":
                sock.sendto(encap.encode(envelope, b"\x01\x01\x00\x00answer"), addr)
                continue
        count += 1
        sock.settimeout(1.0)  # once the flood started, 1 s of silence ends it
    print(json.dumps({"received": count}), flush=True)


def run_plain(sink_port: int) -> None:
    """The baseline: a blocking recvfrom/sendto loop (counting what it sent, as the relay does)."""
    forwarded = 0
    _report_cpu_on_usr1(lambda: forwarded)
    sock = _udp()
    print(sock.getsockname()[1], flush=True)
    dest = (LOOPBACK, sink_port)
    recvfrom, sendto = sock.recvfrom, sock.sendto
    while True:
        data, _ = recvfrom(65536)
        sendto(data, dest)
        forwarded += 1


def run_relay(secret_hex: str, stock_port: bool, public_port: int = 0, backend: str | None = None) -> None:
    """The voiceedge relay, no Redis, on the default reactor (a worker sharing ``public_port`` if given)."""
    from twisted.internet import reactor

    from voiceedge.relay.core import Relay
    from voiceedge.relay.settings import RelaySettings
    from voiceedge.relay.protocol import (
        ClientProtocol,
        TransceiverProtocol,
        listen_client,
        listen_transceiver,
    )
    from voiceedge.wire.route_token import RouteTokenCodec

    poll_interval = 0.0
    if backend and backend.endswith("-poll"):
        # [relay] poll_ms = 2 (the default of the services); any backend may take it.
        poll_interval = 0.002
        backend = backend.removesuffix("-poll")
    if backend == "recvmmsg-nogso":
        # The recvmmsg backend with every datagram its own message (no UDP_SEGMENT runs).
        os.environ["VOICEEDGE_RELAY_GSO"] = "off"
        backend = "recvmmsg"
    codec = RouteTokenCodec({1: bytes.fromhex(secret_hex)}, 1)
    relay = Relay(reactor, codec, RelaySettings(public_listen=(LOOPBACK, 3478)))
    _report_cpu_on_usr1(lambda: relay.to_transceiver_packets + relay.to_client_packets)
    if stock_port:
        public: Any = reactor.listenUDP(0, ClientProtocol(relay), LOOPBACK, 65536)  # type: ignore[attr-defined]
        internal: Any = reactor.listenUDP(0, TransceiverProtocol(relay), LOOPBACK, 65536)  # type: ignore[attr-defined]
    else:
        public = listen_client(
            relay, (LOOPBACK, public_port), reactor,  # type: ignore[arg-type]
            reuse_port=bool(public_port), backend=backend or None, poll_interval=poll_interval,
        )
        internal = listen_transceiver(
            relay, (LOOPBACK, 0), reactor, backend=backend or None, poll_interval=poll_interval  # type: ignore[arg-type]
        )
    for port in (public, internal):
        port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    relay.start()
    print(public.getHost().port, flush=True)
    reactor.run()


def run_return_source(packets: int, rate: float, size: int, relayed: bool) -> None:
    """Stand-in transceiver for the return direction: answer the client's check, then flood it on "go <port>"."""
    from voiceedge.wire import encap

    signal.alarm(int(CHILD_DEADLINE))
    sock = _udp()
    print(sock.getsockname()[1], flush=True)
    payload = b"\x80\x6f" + os.urandom(size - 2)
    if relayed:
        sock.settimeout(CHILD_DEADLINE)
        data, relay = sock.recvfrom(65536)
        envelope, check = encap.decode(data)
        assert check[:2] == b"\x00\x01", check
        sock.sendto(encap.encode(envelope, b"\x01\x01\x00\x00answer"), relay)
        datagram = encap.encode(envelope, payload)
    line = sys.stdin.readline().split()
    target = relay if relayed else (LOOPBACK, int(line[1]))
    if not relayed:
        datagram = payload
    sendto = sock.sendto
    burst, sent = 50, 0
    start = time.perf_counter()
    while sent < packets:
        for _ in range(min(burst, packets - sent)):
            sendto(datagram, target)
        sent += burst
        delay = start + sent / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    print(json.dumps({"sent": packets, "seconds": time.perf_counter() - start}), flush=True)


def run_return_client(source_port: int, secret_hex: str) -> None:
    """The client for the return direction: make a flow if relayed (target port on stdin), then count arrivals."""
    signal.alarm(int(CHILD_DEADLINE))
    sock = _udp()
    print(sock.getsockname()[1], flush=True)
    target = (LOOPBACK, int(sys.stdin.readline()))
    sock.settimeout(5)
    if secret_hex:
        from voiceedge.wire.route_token import Route, RouteTokenCodec
        from voiceedge.wire.stun import Attr, StunClass, build_message

        codec = RouteTokenCodec({1: bytes.fromhex(secret_hex)}, 1)
        ufrag = codec.issue(Route(0, (LOOPBACK, source_port))).encode()
        request = build_message(0x001, StunClass.REQUEST, os.urandom(12), [(Attr.USERNAME, ufrag + b":bnch")])
        sock.sendto(request, target)
        answer, _ = sock.recvfrom(65536)
        assert answer.startswith(b"\x01\x01"), answer
    print("ready", flush=True)
    count = 0
    sock.settimeout(CHILD_DEADLINE)
    recv = sock.recv
    while True:
        try:
            recv(65536)
        except socket.timeout:
            break
        if not count:
            sock.settimeout(1.0)  # once the flood started, 1 s of silence ends it
        count += 1
    print(json.dumps({"received": count}), flush=True)


def run_generator(
    target_port: int, sink_port: int, packets: int, rate: float, size: int, secret_hex: str
) -> None:
    """The client: handshake if a secret is given, wait for "go" on stdin, then send paced bursts."""
    signal.alarm(int(CHILD_DEADLINE))
    sock = _udp()
    target = (LOOPBACK, target_port)
    if secret_hex:
        from voiceedge.wire.route_token import Route, RouteTokenCodec
        from voiceedge.wire.stun import Attr, StunClass, build_message

        codec = RouteTokenCodec({1: bytes.fromhex(secret_hex)}, 1)
        ufrag = codec.issue(Route(0, (LOOPBACK, sink_port))).encode()
        request = build_message(
            0x001, StunClass.REQUEST, os.urandom(12), [(Attr.USERNAME, ufrag + b":bnch")]
        )
        sock.settimeout(5)
        sock.sendto(request, target)
        answer, _ = sock.recvfrom(65536)
        assert answer.startswith(b"\x01\x01"), answer
    print("ready", flush=True)
    sys.stdin.readline()
    payload = b"\x80\x6f" + os.urandom(size - 2)
    sendto = sock.sendto
    burst = 50
    interval = burst / rate
    start = time.perf_counter()
    sent = 0
    while sent < packets:
        for _ in range(min(burst, packets - sent)):
            sendto(payload, target)
        sent += burst
        delay = start + (sent / burst) * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    print(json.dumps({"sent": packets, "seconds": time.perf_counter() - start}), flush=True)


# -- the driver --------------------------------------------------------------


def _batch_io() -> Any:
    """The relay's compiled helper's Batch class, or None: the throughput run's sender and sink use it when built."""
    try:
        from voiceedge.relay._batchio import Batch
    except ImportError:
        return None
    return Batch


def run_multi_sink(expected: int, sources: int) -> None:
    """Stand-in transceiver for the workers run: answer the ``sources`` checks, then count the rest.

    With the compiled helper it counts with recvmmsg, so the sink takes as
    little of the two cores as it can from the relays it measures.
    """
    from voiceedge.wire import encap

    signal.alarm(int(CHILD_DEADLINE))
    sock = _udp()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    print(sock.getsockname()[1], flush=True)
    count, first, last = 0, 0.0, 0.0
    sock.settimeout(CHILD_DEADLINE)
    answered = 0
    batch_class = _batch_io()
    while count < expected:
        if batch_class is not None and answered >= sources:
            break  # the flood: counted below
        try:
            data, addr = sock.recvfrom(65536)
        except socket.timeout:
            break
        envelope, payload = encap.decode(data)
        if payload[:2] == b"\x00\x01":
            sock.sendto(encap.encode(envelope, b"\x01\x01\x00\x00answer"), addr)
            answered += 1
            continue
        if not count:
            first = time.perf_counter()
            sock.settimeout(1.0)  # once the flood started, 1 s of silence ends it
        count += 1
        last = time.perf_counter()
    if batch_class is not None and answered >= sources:
        import select

        buffer = bytearray(64 * 2048)
        batch = batch_class(buffer, 64, 2048, 0)
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        fd = sock.fileno()
        timeout_ms = CHILD_DEADLINE * 1000
        while count < expected and poller.poll(timeout_ms):
            got = len(batch.recv(fd))
            if got:
                if not count:
                    first = time.perf_counter()
                    timeout_ms = 1000.0  # once the flood started, 1 s of silence ends it
                count += got
                last = time.perf_counter()
    print(json.dumps({"received": count, "seconds": last - first}), flush=True)


def _open_flows(
    secret_hex: str, target: tuple[str, int], transceiver_port: int, sources: int, receive_buffer: int = 0
) -> list[socket.socket]:
    """``sources`` client sockets, each with a flow through the relay at ``target`` to ``transceiver_port``.

    Each sends a STUN check whose ufrag carries the route token and waits for the
    answer (5 s), as a client's first packet opens its flow.
    """
    from voiceedge.wire.route_token import Route, RouteTokenCodec
    from voiceedge.wire.stun import Attr, StunClass, build_message

    codec = RouteTokenCodec({1: bytes.fromhex(secret_hex)}, 1)
    socks = []
    for _ in range(sources):
        sock = _udp()
        if receive_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.settimeout(5)
        ufrag = codec.issue(Route(0, (LOOPBACK, transceiver_port))).encode()
        request = build_message(0x001, StunClass.REQUEST, os.urandom(12), [(Attr.USERNAME, ufrag + b":bnch")])
        sock.sendto(request, target)
        answer, _ = sock.recvfrom(65536)
        assert answer.startswith(b"\x01\x01"), answer
        socks.append(sock)
    return socks


def run_flood(target_port: int, sink_port: int, packets: int, size: int, secret_hex: str, sources: int) -> None:
    """Many clients: a flow each through the relay, then a flood from all of them, round robin."""
    signal.alarm(int(CHILD_DEADLINE))
    target = (LOOPBACK, target_port)
    socks = _open_flows(secret_hex, target, sink_port, sources)
    print("ready", flush=True)
    sys.stdin.readline()
    payload = b"\x80\x6f" + os.urandom(size - 2)
    start = time.perf_counter()
    sent = 0
    batch_class = _batch_io()
    if batch_class is not None:
        # sendmmsg, 64 datagrams per call per source, so the sender takes as little of the cores as it can.
        buffer = bytearray(payload * 64)
        batch = batch_class(buffer, 64, size, 0)
        fds = [s.fileno() for s in socks]
        attempted = 0
        while attempted < packets:
            for fd in fds:
                for i in range(64):
                    batch.queue(i * size, i * size, (i + 1) * size, target)
                sent += batch.send(fd)[0]
                attempted += 64
        print(json.dumps({"sent": sent, "seconds": time.perf_counter() - start}), flush=True)
        return
    sends = [s.sendto for s in socks]
    while sent < packets:
        for sendto in sends:
            try:
                sendto(payload, target)
            except OSError:
                pass
        sent += len(sends)
    print(json.dumps({"sent": sent, "seconds": time.perf_counter() - start}), flush=True)


def _through_workers(
    workers: int,
    backend: str,
    secret: str,
    first: subprocess.Popen[str],
    spawn_second: Callable[[int, int], subprocess.Popen[str]],
    first_sends: bool,
) -> dict[str, float]:
    """``workers`` relay processes on one public port between ``first`` and a second process: one floods, the other counts.

    ``first`` is already started and prints its port; ``spawn_second(first_port,
    public_port)`` starts the other, which prints ``ready``. The sender (``first``
    if ``first_sends``) floods on ``go``. Packets per second delivered, CPU µs per
    packet of the relays together.
    """
    relays: list[subprocess.Popen[str]] = []
    second: subprocess.Popen[str] | None = None
    try:
        first_port = int(_line(first))
        public_port = _free_udp_port()
        for _ in range(workers):
            relays.append(_spawn(
                "--role", "relay", "--secret", secret, "--public", str(public_port), "--backend", backend
            ))
            assert int(_line(relays[-1])) == public_port
        second = spawn_second(first_port, public_port)
        assert _line(second) == "ready"
        sender, receiver = (first, second) if first_sends else (second, first)
        before = sum(_cpu_of(r) for r in relays)
        assert sender.stdin is not None
        sender.stdin.write("go\n")
        sender.stdin.flush()
        sent = json.loads(_line(sender))
        received = json.loads(_line(receiver))
        after = sum(_cpu_of(r) for r in relays)
    finally:
        for proc in (second, *relays, first):
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.wait()
    seconds = max(received["seconds"], 1e-6)
    return {
        "pps": received["received"] / seconds,
        "received": received["received"],
        "sent": sent["sent"],
        "us_per_packet": (after - before) / max(received["received"], 1) * 1e6,
    }


def measure_workers(workers: int, packets: int, size: int, backend: str, sources: int = 32) -> dict[str, float]:
    """``workers`` relay processes on one public port: packets per second delivered, CPU µs per packet."""
    secret = os.urandom(32).hex()
    sink = _spawn("--role", "multi-sink", "--packets", str(packets), "--sources", str(sources))
    return _through_workers(
        workers, backend, secret, sink,
        lambda sink_port, public_port: _spawn(
            "--role", "flood", "--target", str(public_port), "--sink", str(sink_port),
            "--packets", str(packets), "--size", str(size), "--secret", secret, "--sources", str(sources),
        ),
        first_sends=False,
    )


def run_return_multi_source(packets: int, size: int, sources: int) -> None:
    """Stand-in transceiver for the return workers run: answer ``sources`` checks, then flood their clients.

    Each client's flow lives in the worker that took its check, so each
    answer and each flood datagram goes to the internal address that check
    came from. With the compiled helper it floods with sendmmsg, 64 datagrams
    per call, so it takes as little of the two cores as it can.
    """
    from voiceedge.wire import encap

    signal.alarm(int(CHILD_DEADLINE))
    sock = _udp()
    print(sock.getsockname()[1], flush=True)
    sock.settimeout(CHILD_DEADLINE)
    flows: list[tuple[Any, tuple[str, int]]] = []
    while len(flows) < sources:
        data, relay = sock.recvfrom(65536)
        envelope, check = encap.decode(data)
        if check[:2] == b"\x00\x01":
            sock.sendto(encap.encode(envelope, b"\x01\x01\x00\x00answer"), relay)
            flows.append((envelope, relay))
    sys.stdin.readline()
    payload = b"\x80\x6f" + os.urandom(size - 2)
    datagrams = [(encap.encode(envelope, payload), relay) for envelope, relay in flows]
    start = time.perf_counter()
    sent = attempted = 0
    batch_class = _batch_io()
    if batch_class is not None:
        length = len(datagrams[0][0])
        buffer = bytearray(b"".join(datagrams[i % len(datagrams)][0] for i in range(64)))
        batch = batch_class(buffer, 64, length, 0)
        fd = sock.fileno()
        while attempted < packets:
            for i in range(64):
                batch.queue(i * length, i * length, (i + 1) * length, datagrams[i % len(datagrams)][1])
            sent += batch.send(fd)[0]
            attempted += 64
    else:
        sock.setblocking(False)
        while attempted < packets:
            for data, relay in datagrams:
                try:
                    sock.sendto(data, relay)
                    sent += 1
                except OSError:
                    pass
            attempted += len(datagrams)
    print(json.dumps({"sent": sent, "seconds": time.perf_counter() - start}), flush=True)


def run_return_clients(target_port: int, source_port: int, secret_hex: str, sources: int, expected: int) -> None:
    """``sources`` clients: a flow each through the relay workers to the source, then count what arrives."""
    import select

    signal.alarm(int(CHILD_DEADLINE))
    target = (LOOPBACK, target_port)
    socks = _open_flows(secret_hex, target, source_port, sources, receive_buffer=4 << 20)
    for sock in socks:
        sock.setblocking(False)
    print("ready", flush=True)
    poller = select.poll()
    for sock in socks:
        poller.register(sock.fileno(), select.POLLIN)
    batch_class = _batch_io()
    batch = batch_class(bytearray(64 * 2048), 64, 2048, 0) if batch_class is not None else None
    by_fd = {sock.fileno(): sock for sock in socks}
    count, first, last = 0, 0.0, 0.0
    timeout_ms = CHILD_DEADLINE * 1000
    while count < expected:
        ready = poller.poll(timeout_ms)
        if not ready:
            break
        for fd, _ in ready:
            if batch is not None:
                got = len(batch.recv(fd))
            else:
                got = 0
                while True:
                    try:
                        by_fd[fd].recv(65536)
                    except BlockingIOError:
                        break
                    got += 1
            if got:
                if not count:
                    first = time.perf_counter()
                    timeout_ms = 1000.0  # once the flood started, 1 s of silence ends it
                count += got
                last = time.perf_counter()
    print(json.dumps({"received": count, "seconds": last - first}), flush=True)


def measure_workers_return(workers: int, packets: int, size: int, backend: str, sources: int = 32) -> dict[str, float]:
    """The return direction with ``workers`` relay processes: a transceiver floods ``sources`` clients through them."""
    secret = os.urandom(32).hex()
    source = _spawn("--role", "return-multi-source", "--packets", str(packets), "--size", str(size),
                    "--sources", str(sources))
    return _through_workers(
        workers, backend, secret, source,
        lambda source_port, public_port: _spawn(
            "--role", "return-clients", "--target", str(public_port), "--sink", str(source_port),
            "--secret", secret, "--sources", str(sources), "--packets", str(packets),
        ),
        first_sends=True,
    )


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"child {proc.args!r} ended early")
    return line.strip()


def _cpu_of(proc: subprocess.Popen[str]) -> float:
    return float(_usage_of(proc)["cpu"])


def _usage_of(proc: subprocess.Popen[str]) -> dict[str, float]:
    """CPU seconds and packets forwarded so far, from the forwarder itself."""
    proc.send_signal(signal.SIGUSR1)
    return dict(json.loads(_line(proc)))


def measure(variant: str, packets: int, rate: float, size: int) -> dict[str, float]:
    """Run one variant; return CPU seconds, packets delivered and µs per packet."""
    secret = os.urandom(32).hex()
    sink = _spawn("--role", "sink", "--packets", str(packets))
    forwarder: subprocess.Popen[str] | None = None
    generator: subprocess.Popen[str] | None = None
    try:
        sink_port = int(_line(sink))
        if variant == "plain":
            forwarder = _spawn("--role", "plain", "--sink", str(sink_port))
        elif variant == "relay-stock-port":
            forwarder = _spawn("--role", "relay-stock", "--secret", secret)
        else:
            forwarder = _spawn("--role", "relay", "--secret", secret, "--backend", variant.removeprefix("relay-"))
        port = int(_line(forwarder))
        generator = _spawn(
            "--role", "generator", "--target", str(port), "--sink", str(sink_port),
            "--packets", str(packets), "--rate", str(rate), "--size", str(size),
            "--secret", "" if variant == "plain" else secret,
        )
        assert _line(generator) == "ready"
        before = _usage_of(forwarder)
        assert generator.stdin is not None
        generator.stdin.write("go\n")
        generator.stdin.flush()
        sent = json.loads(_line(generator))
        received = json.loads(_line(sink))["received"]
        after = _usage_of(forwarder)
    finally:
        for proc in (generator, forwarder, sink):
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.wait()
    return {**_forwarder_cost(before, after, sent["sent"], received), "send_s": sent["seconds"]}


def _forwarder_cost(before: dict[str, float], after: dict[str, float], sent: int, received: int) -> dict[str, float]:
    """CPU, packets and CPU per packet the forwarder itself forwarded between two usage readings."""
    cpu = after["cpu"] - before["cpu"]
    forwarded = int(after["forwarded"] - before["forwarded"])
    return {
        "cpu_s": cpu,
        # User space (Python, the helper) against the kernel (the system calls, loopback delivery).
        "user_us": (after["user"] - before["user"]) / max(forwarded, 1) * 1e6,
        "system_us": (after["system"] - before["system"]) / max(forwarded, 1) * 1e6,
        "sent": sent,
        "forwarded": forwarded,
        "received": received,
        # Per packet the forwarder sent: the sink's losses on a loaded machine do not count against it.
        "us_per_packet": cpu / max(forwarded, 1) * 1e6,
    }


def measure_return(variant: str, packets: int, rate: float, size: int) -> dict[str, float]:
    """The return direction (transceiver -> relay -> client): CPU per packet forwarded, as :func:`measure`."""
    secret = os.urandom(32).hex()
    relayed = variant != "plain"
    procs: list[subprocess.Popen[str]] = []
    try:
        source = _spawn("--role", "return-source", "--packets", str(packets), "--rate", str(rate),
                        "--size", str(size), "--secret", secret if relayed else "")
        procs.append(source)
        source_port = int(_line(source))
        client = _spawn("--role", "return-client", "--sink", str(source_port), "--secret", secret if relayed else "")
        procs.append(client)
        client_port = int(_line(client))
        if not relayed:
            forwarder = _spawn("--role", "plain", "--sink", str(client_port))
        elif variant == "relay-stock-port":
            forwarder = _spawn("--role", "relay-stock", "--secret", secret)
        else:
            forwarder = _spawn("--role", "relay", "--secret", secret, "--backend", variant.removeprefix("relay-"))
        procs.append(forwarder)
        port = int(_line(forwarder))
        assert client.stdin is not None and source.stdin is not None
        client.stdin.write(f"{port}\n")
        client.stdin.flush()
        assert _line(client) == "ready"
        before = _usage_of(forwarder)
        source.stdin.write(f"go {port}\n")
        source.stdin.flush()
        sent = json.loads(_line(source))
        received = json.loads(_line(client))["received"]
        after = _usage_of(forwarder)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    return _forwarder_cost(before, after, sent["sent"], received)


def run_instructions(direction: str, variant: str, rounds: int) -> None:
    """The forwarding work alone, in one process, for callgrind: ``rounds`` of 64 datagrams through it.

    A relay on a Clock with a confirmed flow between real loopback sockets
    (``client``, the public and internal sockets, ``hop`` for the
    transceiver). Each round the sender puts 64 datagrams on the socket the
    forwarder reads (one sendmmsg), the forwarder moves them, and the
    receiver drains them (one recvmmsg). Variants: ``relay`` (the recvmmsg
    backend's batch methods, as ClientPort/TransceiverPort call them),
    ``plain`` (recvfrom/sendto per datagram) and ``floor`` (recvmmsg, a Python
    ``queue()`` call per datagram and sendmmsg, no relay logic: the floor of
    the design before the helper queued hot-path datagrams itself; the relay
    now goes below it). The sender's and receiver's
    instructions are in every variant alike. As in the timed runs the plain
    loop gets the bare payload and forwards it as it is.
    """
    import ipaddress
    import mmap

    from twisted.internet.task import Clock

    from voiceedge.relay._batchio import Batch
    from voiceedge.relay.core import OFFSET, Relay
    from voiceedge.relay.settings import RelaySettings
    from voiceedge.wire import encap
    from voiceedge.wire.route_token import Route, RouteTokenCodec
    from voiceedge.wire.stun import Attr, StunClass, build_message

    def udp() -> socket.socket:
        sock = _udp()
        sock.setblocking(False)
        return sock

    client, public, internal, hop = udp(), udp(), udp(), udp()
    codec = RouteTokenCodec({1: os.urandom(32)}, 1)
    clock = Clock()
    settings = RelaySettings(
        public_listen=(LOOPBACK, public.getsockname()[1]),
        transceiver_networks=(ipaddress.ip_network("127.0.0.0/8"),),
    )
    relay = Relay(clock, codec, settings)
    relay.send_to_transceiver = internal.sendto
    relay.send_to_client = public.sendto
    relay.client_fd, relay.transceiver_fd = public.fileno(), internal.fileno()
    stride = OFFSET + 65536
    client_buffer, return_buffer = mmap.mmap(-1, 64 * stride), mmap.mmap(-1, 64 * stride)
    client_batch, return_batch = Batch(client_buffer, 64, stride, OFFSET), Batch(return_buffer, 64, stride, 0)
    relay.use_batch(client_batch, client_buffer)
    relay.use_return_batch(return_batch, return_buffer)
    # The flow is made as in the running relay: the check and its answer through both batch paths.
    ufrag = codec.issue(Route(0, hop.getsockname())).encode()
    request = build_message(0x001, StunClass.REQUEST, os.urandom(12), [(Attr.USERNAME, ufrag + b":bnch")])
    caddr, hop_addr = client.getsockname(), hop.getsockname()
    client.sendto(request, public.getsockname())
    time.sleep(0.05)
    relay.client_batch(relay.read_client_batch(public.fileno()))
    time.sleep(0.05)
    envelope, _ = encap.decode(hop.recv(65536))
    hop.sendto(encap.encode(envelope, b"\x01\x01\x00\x00answer"), internal.getsockname())
    time.sleep(0.05)
    relay.transceiver_batch(relay.read_return_batch(internal.fileno()))
    time.sleep(0.05)
    assert caddr in relay.flows.confirmed and client.recv(65536).startswith(b"\x01\x01")
    payload = b"\x80\x6f" + os.urandom(198)
    if direction == "to_client":
        datagram, sender, source_to, reader, dest, drain_sock = encap.encode(envelope, payload), hop, internal, internal, caddr, client
        batch = return_batch
        recv, handle, writer = relay.read_return_batch, relay.transceiver_batch, public
    else:
        datagram, sender, source_to, reader, dest, drain_sock = payload, client, public, public, hop_addr, hop
        batch = client_batch
        recv, handle, writer = relay.read_client_batch, relay.client_batch, internal  # type: ignore[assignment]
    if variant == "plain":
        datagram = payload  # the plain loop forwards datagrams as they are, as in the timed runs
    size = len(datagram)
    send_buffer = bytearray(datagram * 64)
    send_batch = Batch(send_buffer, 64, size, 0)
    drain = Batch(bytearray(64 * 2048), 64, 2048, 0)
    target = source_to.getsockname()
    sender_fd, reader_fd, drain_fd, writer_fd = sender.fileno(), reader.fileno(), drain_sock.fileno(), writer.fileno()
    recvfrom, sendto = reader.recvfrom, writer.sendto
    delivered = 0
    for _ in range(rounds):
        for i in range(64):
            send_batch.queue(i * size, i * size, (i + 1) * size, target)
        send_batch.send(sender_fd)
        if variant == "relay":
            handle(recv(reader_fd))
        elif variant == "plain":
            for _ in range(64):
                data, _ = recvfrom(65536)
                sendto(data, dest)
        else:
            for at, n, _ in batch.recv(reader_fd):
                batch.queue(at, at, at + n, dest)
            batch.send(writer_fd)
        delivered += len(drain.recv(drain_fd))
    print(json.dumps({"delivered": delivered}), flush=True)


def instructions(rounds: int) -> None:
    """Instructions per forwarded datagram under callgrind (load does not change them): long run minus short."""
    import re
    import shutil
    import tempfile

    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    print(f"instructions per forwarded datagram (callgrind, {rounds} minus {rounds // 2} rounds of 64)")
    for direction in ("to_transceiver", "to_client"):
        counts = {}
        for variant in ("plain", "relay", "floor"):
            totals = []
            for n in (rounds // 2, rounds):
                with tempfile.TemporaryDirectory() as tmp:
                    proc = subprocess.run(
                        [valgrind, "--tool=callgrind", f"--callgrind-out-file={tmp}/out", sys.executable,
                         os.path.abspath(__file__), "--role", "instructions", "--directions", direction,
                         "--variants", variant, "--packets", str(n)],
                        capture_output=True, text=True, timeout=300,
                    )
                match = re.search(r"Collected : (\d+)", proc.stderr)
                delivered = json.loads(proc.stdout.strip().splitlines()[-1])["delivered"] if proc.stdout else 0
                if proc.returncode != 0 or match is None or delivered != n * 64:
                    raise SystemExit(f"callgrind run failed ({delivered} delivered):\n{proc.stdout}\n{proc.stderr[-2000:]}")
                totals.append(int(match.group(1)))
            counts[variant] = (totals[1] - totals[0]) / ((rounds - rounds // 2) * 64)
        print(
            f"  {direction:14s} plain loop {counts['plain']:7.0f}, relay (recvmmsg backend) {counts['relay']:7.0f},"
            f" recv/queue/send loop {counts['floor']:7.0f}; relay minus that {counts['relay'] - counts['floor']:5.0f},"
            f" plain minus it {counts['plain'] - counts['floor']:5.0f}",
            flush=True,
        )


def main() -> None:
    """Parse arguments; run a child role or the whole comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=60_000, help="packets per second sent")
    parser.add_argument("--size", type=int, default=200, help="payload bytes")
    parser.add_argument("--variants", default="plain,relay-recvmmsg,relay-recvmmsg-poll,relay-python,relay-stock-port")
    parser.add_argument("--workers", default="1,2", help="relay processes for the throughput run (empty: skip)")
    parser.add_argument("--flood", type=int, default=400_000, help="packets for the throughput run")
    parser.add_argument(
        "--directions", default="to_transceiver,to_client",
        help="to_transceiver: client -> relay -> transceiver; to_client: transceiver -> relay -> client",
    )
    parser.add_argument("--public", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="", help=argparse.SUPPRESS)
    parser.add_argument(
        "--worker-backends", default="recvmmsg,python", help="relay backends for the throughput run"
    )
    parser.add_argument("--sources", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument(
        "--callgrind", type=int, default=0, metavar="ROUNDS",
        help="instead: instructions per datagram under valgrind, ROUNDS of 64 (e.g. 200)",
    )
    parser.add_argument("--role", default="driver", help=argparse.SUPPRESS)
    parser.add_argument("--sink", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--target", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--secret", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role == "instructions":
        return run_instructions(args.directions, args.variants, args.packets)
    if args.callgrind:
        return instructions(args.callgrind)
    if args.role == "sink":
        return run_sink(args.packets)
    if args.role == "plain":
        return run_plain(args.sink)
    if args.role in ("relay", "relay-stock"):
        return run_relay(
            args.secret, stock_port=args.role == "relay-stock", public_port=args.public, backend=args.backend
        )
    if args.role == "multi-sink":
        return run_multi_sink(args.packets, args.sources)
    if args.role == "flood":
        return run_flood(args.target, args.sink, args.packets, args.size, args.secret, args.sources)
    if args.role == "return-source":
        return run_return_source(args.packets, args.rate, args.size, relayed=bool(args.secret))
    if args.role == "return-client":
        return run_return_client(args.sink, args.secret)
    if args.role == "return-multi-source":
        return run_return_multi_source(args.packets, args.size, args.sources)
    if args.role == "return-clients":
        return run_return_clients(args.target, args.sink, args.secret, args.sources, args.packets)
    if args.role == "generator":
        return run_generator(
            args.target, args.sink, args.packets, args.rate, args.size, args.secret
        )

    started = time.monotonic()
    print(
        f"{args.packets} packets of {args.size} bytes at {args.rate:.0f}/s, loopback, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f}"
    )
    directions = [d for d in args.directions.split(",") if d.strip()]
    ratios: dict[tuple[str, str], float] = {}
    for direction in directions:
        print(f"  {direction}:")
        run = measure if direction == "to_transceiver" else measure_return
        results: dict[str, dict[str, float]] = {}
        for variant in args.variants.split(","):
            results[variant] = r = run(variant, args.packets, args.rate, args.size)
            print(
                f"    {variant:18s} {r['us_per_packet']:6.2f} µs CPU/packet"
                f" (user {r['user_us']:.2f} + system {r['system_us']:.2f})   "
                f"({r['cpu_s']:.2f} s CPU, {r['forwarded']} forwarded, {r['received']}/{r['sent']} delivered)"
                f"   load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        if "plain" in results:
            base = results["plain"]["us_per_packet"]
            for variant, r in results.items():
                if variant != "plain":
                    ratios[(direction, variant)] = ratio = r["us_per_packet"] / base
                    print(f"    {variant} / plain = {ratio:.2f}x")
    worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    backends = [b for b in args.worker_backends.split(",") if b.strip()]
    throughput: dict[tuple[str, str, int], dict[str, float]] = {}
    for direction in directions:
        run_workers = measure_workers if direction == "to_transceiver" else measure_workers_return
        for backend in backends:
            for count in worker_counts:
                throughput[(direction, backend, count)] = r = run_workers(count, args.flood, args.size, backend)
                print(
                    f"  {direction:14s} {backend:8s} {count} worker(s): {r['pps']:9.0f} packets/s delivered"
                    f" ({r['received']}/{r['sent']}), {r['us_per_packet']:.2f} µs relay CPU/packet"
                    f"   load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    # Side by side: the same figures as above, one row per direction.
    print(f"  summary, load average {os.getloadavg()[0]:.2f}:")
    header = f"    {'direction':14s}"
    relay_variants = [v for v in args.variants.split(",") if v != "plain"]
    header += "".join(f" {v.removeprefix('relay-') + '/plain':>18s}" for v in relay_variants)
    header += "".join(
        f" {f'{b} {c}w k/s':>15s}" for b in backends for c in worker_counts
    )
    if 1 in worker_counts and len(worker_counts) > 1:
        header += "".join(f" {f'{b} {c}w/1w':>13s}" for b in backends for c in worker_counts if c != 1)
    print(header)
    for direction in directions:
        row = f"    {direction:14s}"
        row += "".join(
            f" {ratios[(direction, v)]:17.2f}x" if (direction, v) in ratios else f" {'-':>18s}"
            for v in relay_variants
        )
        row += "".join(f" {throughput[(direction, b, c)]['pps'] / 1000:15.0f}" for b in backends for c in worker_counts)
        if 1 in worker_counts and len(worker_counts) > 1:
            row += "".join(
                f" {throughput[(direction, b, c)]['pps'] / throughput[(direction, b, 1)]['pps']:12.2f}x"
                for b in backends
                for c in worker_counts
                if c != 1
            )
        print(row)
    print(f"  total {time.monotonic() - started:.1f} s, load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
