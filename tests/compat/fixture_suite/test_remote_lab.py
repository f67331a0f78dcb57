"""A pytest suite written the way neops-remote-lab's docs say to: the session-scoped
`remote_lab_client` fixture and a lab fixture from `remote_lab_fixture`, both coming from
the package's pytest11 plugin. tests/it/neops_compat.rs runs it against labgate."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import requests

from neops_remote_lab.testing.fixture import remote_lab_fixture

lab = remote_lab_fixture(Path(__file__).with_name("topology.yml"), name="lab")


def test_client_holds_the_active_session(remote_lab_client):
    r = requests.get(os.environ["REMOTE_LAB_URL"] + "/active-session", timeout=10)
    assert r.status_code == 200
    # labgate names the holder by its public tag, never by its id (the credential).
    tag = hashlib.sha256(uuid.UUID(remote_lab_client.session_id).bytes).hexdigest()[:8]
    assert r.json() == {"status": "active", "position": 0, "session_tag": tag}


def test_lab_fixture_acquires_devices_through_the_gate(lab, remote_lab_client):
    assert [d.name for d in lab] == ["r1"]
    r = remote_lab_client._session.get(remote_lab_client._url("/lab/devices"), timeout=10)
    assert r.status_code == 200
    assert r.json()[0]["name"] == "r1"
