// OpenAI's browser SDK, unmodified: tests/test_sdk.py bundles this with esbuild for the test page.
import { OpenAIRealtimeWebRTC, RealtimeAgent, RealtimeSession } from "@openai/agents-realtime";

window.AgentsRealtime = { OpenAIRealtimeWebRTC, RealtimeAgent, RealtimeSession };
