# -*- test-case-name: tests.test_drain -*-
"""Ask a transceiver to drain, and wait until it is empty: a Kubernetes ``preStop`` hook.

    python -m voiceedge.fleet.drain_request --api http://127.0.0.1:8081 --wait

The fleet secret comes from ``$VOICEEDGE_FLEET_SECRET``. With ``--wait`` it
returns once the transceiver holds no session (it exits by itself then) or
is gone, so the kubelet's SIGTERM that follows the hook is the drain's first
SIGTERM, not a second one that would end the calls. Exit status 0 when
drained, 1 when the API could not be reached at first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

__all__ = ["drain", "main"]


def _call(url: str, method: str, secret: str) -> dict[str, object]:
    request = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {secret}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        document = json.loads(response.read())
    return document if isinstance(document, dict) else {}


def drain(api: str, secret: str, wait: bool, poll: float = 1.0) -> int:
    """POST the drain, then (with ``wait``) poll until no session is left or the process is gone."""
    url = api.rstrip("/") + "/internal/v1/drain"
    try:
        state = _call(url, "POST", secret)
    except (OSError, ValueError) as e:
        print(f"cannot start the drain at {url}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(state), flush=True)
    while wait:
        time.sleep(poll)
        try:
            state = _call(url, "GET", secret)
        except (OSError, ValueError):
            return 0  # it exited: drained
        if state.get("sessions") == 0:
            return 0
    return 0


def main() -> None:
    """Parse arguments and drain."""
    parser = argparse.ArgumentParser(description="drain a voiceedge transceiver through its internal API")
    parser.add_argument("--api", default="http://127.0.0.1:8081", help="the transceiver's internal API")
    parser.add_argument("--wait", action="store_true", help="return only once no session is left")
    args = parser.parse_args()
    secret = os.environ.get("VOICEEDGE_FLEET_SECRET", "")
    if not secret:
        print("VOICEEDGE_FLEET_SECRET is not set", file=sys.stderr)
        sys.exit(1)
    sys.exit(drain(args.api, secret, args.wait))


if __name__ == "__main__":
    main()
