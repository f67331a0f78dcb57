"""Drives the real neops-remote-lab 1.4.0 client through labgate in front of the real
neops-remote-lab server (labgate's bridge on). Run by tests/it/bridge.rs as
`python bridge_client.py SCENARIO` with REMOTE_LAB_URL set to labgate's base URL.

- `turn`: create a session (waits until ACTIVE), acquire the topology (the server runs
  `netlab up`), list the devices, hold for HOLD_SECS, release, close. Prints
  `RESULT <json>` with what it saw and when (time.time(), comparable across processes).
- `hold`: create, acquire, print `HELD <json>`, then sleep until killed.

The client is used as published; every wait is bounded by its own timeouts.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import requests

from neops_remote_lab.client import RemoteLabClient

BASE = os.environ["REMOTE_LAB_URL"]
TOPOLOGY = Path(__file__).resolve().parent / "fixture_suite" / "topology.yml"


def fail(msg: str) -> None:
    print(f"FAIL: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def acquired(client: RemoteLabClient) -> dict:
    devices = client.acquire(TOPOLOGY, reuse=True)
    listed = requests.get(
        f"{BASE}/lab/devices", headers={"X-Session-ID": client.session_id}, timeout=10
    )
    if listed.status_code != 200:
        fail(f"GET /lab/devices answered {listed.status_code}: {listed.text}")
    return {
        "session_id": client.session_id,
        "devices": sorted(d.name for d in devices),
        "listed": sorted(d["name"] for d in listed.json()),
        "mgmt": sorted(d.raw["mgmt"]["ipv4"] for d in devices),
        "listed_headers": {k.lower(): v for k, v in listed.headers.items()},
    }


def turn() -> None:
    hold = float(os.environ.get("HOLD_SECS", "0"))
    client = RemoteLabClient(BASE, request_timeout=10, session_timeout=90, lab_acquisition_timeout=60)
    active_at = time.time()
    facts = acquired(client)
    time.sleep(hold)
    client.release()
    released_at = time.time()
    client.close()
    facts.update({"active_at": active_at, "released_at": released_at, "closed_at": time.time()})
    print("RESULT " + json.dumps(facts), flush=True)


def hold() -> None:
    client = RemoteLabClient(BASE, request_timeout=10, session_timeout=90, lab_acquisition_timeout=60)
    facts = acquired(client)
    print("HELD " + json.dumps(facts), flush=True)
    time.sleep(600)


if __name__ == "__main__":
    {"turn": turn, "hold": hold}[sys.argv[1]]()
