"""Real calls from aiortc to the all-in-one over loopback sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from twisted.trial.unittest import TestCase

from tests.support import (
    free_tcp_port,
    free_udp_port,
    health_sessions,
    running_service,
    scrape_metrics,
    write_allinone_config,
)


def echo_late_frames(metrics: dict[str, dict[str, float]]) -> int:
    """20 ms frames the echo agent dropped as late (``[agent.echo] max_lag_ms``), from a /metrics scrape."""
    events = metrics.get("voiceedge_agent_events_total", {})
    return int(sum(v for k, v in events.items() if "event=late_audio_dropped_ms" in k) // 20)


@pytest.mark.integration
class AiortcCallTests(TestCase):
    """aiortc calls the all-in-one echo over loopback: audio back, events both ways, sessions freed."""

    timeout = 120

    def start_allinone(self) -> str:
        """The all-in-one running as a twistd process on free loopback ports, stopped at cleanup; its base URL."""
        tmp_path = Path(self.mktemp()).resolve()
        tmp_path.mkdir(parents=True)
        http_port, media_port = free_tcp_port(), free_udp_port()
        ini = write_allinone_config(tmp_path, http_port, media_port)
        base = f"http://127.0.0.1:{http_port}"
        service = running_service(["voiceedge", "--config", str(ini)], base + "/healthz", log_dir=tmp_path)
        service.__enter__()
        self.addCleanup(service.__exit__, None, None, None)
        return base

    def test_one_call_echoes_five_seconds_of_opus(self) -> None:
        """aiortc sends 5 s of Opus and gets at least 95% of the frames back; DELETE frees it."""
        allinone = self.start_allinone()
        from tests.aiortc_peer import echo_call

        result = asyncio.run(echo_call(allinone, seconds=5.0))
        metrics = scrape_metrics(allinone)
        drops = {k: v for k, v in metrics.items() if k.endswith("drops_total")}
        self.assertGreaterEqual(result.packets_sent, 240, result)
        # aiortc nominates before DTLS, so its path was probed, and it answered.
        probes = scrape_metrics(allinone)["voiceedge_transceiver_path_probes_total"]
        self.assertGreaterEqual(probes["result=answered"], 1, probes)
        self.assertEqual(probes["result=answered"], probes["result=sent"], probes)
        # aiortc's audio and reports stay within the budgets checked before decryption.
        drops = scrape_metrics(allinone).get("voiceedge_transceiver_drops_total", {})
        self.assertNotIn("reason=rtp_over_rate", drops, drops)
        self.assertNotIn("reason=rtcp_over_rate", drops, drops)
        # Frames the echo dropped because its loop ran late (max_lag_ms) are counted, not lost.
        late = echo_late_frames(metrics)
        self.assertGreaterEqual(result.packets_received + late, 0.95 * result.packets_sent, (result, late, drops, metrics.get("voiceedge_transceiver_packets_in_total"), metrics.get("voiceedge_transceiver_packets_out_total")))
        self.assertEqual(result.delete_status, 204)
        self.assertEqual(health_sessions(allinone + "/healthz"), 0)

    def test_five_calls_at_once_on_one_socket(self) -> None:
        """Five concurrent calls share the one media socket and all echo."""
        allinone = self.start_allinone()
        from tests.aiortc_peer import echo_call

        async def five() -> list:
            return await asyncio.gather(*(echo_call(allinone, seconds=5.0) for _ in range(5)))

        results = asyncio.run(five())
        metrics = scrape_metrics(allinone)
        drops = {k: v for k, v in metrics.items() if k.endswith("drops_total")}
        self.assertEqual(len({r.location for r in results}), 5)
        # Frames the echo dropped because its loop ran late (max_lag_ms) are counted, not lost:
        # the counter is every call's, so each call may have had all of them.
        late = echo_late_frames(metrics)
        for result in results:
            self.assertGreaterEqual(result.packets_sent, 200, result)
            self.assertGreaterEqual(result.packets_received + late, 0.95 * result.packets_sent, (result, late, drops))
            self.assertEqual(result.delete_status, 204)
        self.assertGreaterEqual(
            sum(r.packets_received for r in results) + late, 0.95 * sum(r.packets_sent for r in results), (results, late)
        )
        self.assertEqual(health_sessions(allinone + "/healthz"), 0)

    def test_events_channel_and_decoded_echo(self) -> None:
        """oai-events: session.created arrives, a client event reaches the agent and one comes back;
        the echo, decoded by aiortc, carries the tone's energy, not silence."""
        allinone = self.start_allinone()
        from tests.aiortc_peer import echo_call

        # Not a Realtime event: the layer hands it to the agent, which echoes it.
        ping = {"type": "voiceedge.ping", "text": "hello"}
        result = asyncio.run(echo_call(allinone, seconds=3.0, events=[ping]))
        types = [e["type"] for e in result.events]
        self.assertEqual(types[0], "session.created", result.events)
        self.assertTrue(any(e["type"] == "echo" and e["event"] == ping and e["event_id"] for e in result.events), result.events)
        # The tone is sent at amplitude 8000 (RMS ~5657); Opus at 32 kbit/s keeps most of it.
        self.assertGreater(result.received_rms, 2000, result.received_rms)
