"""Drives the real neops-remote-lab 1.4.0 Python client against a running labgate.

Run by tests/it/neops_compat.rs as `python scenarios.py SCENARIO` with REMOTE_LAB_URL set to
labgate's base URL. Each scenario asserts what the client sees and ends by printing one
line `RESULT <json>` with the facts the Rust side cross-checks against what labgate and
the recording upstream saw. Any failure exits non-zero with a message.

The client is used as published: nothing in it is patched. Only `lab` builds a client
whose constructor has not waited (see `waiting_client`), because the constructor blocks
until ACTIVE and so never hands a WAITING client to its caller.

Every wait here is bounded: threads are joined with a timeout and the client's own
timeouts are set low.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path

import requests

from neops_remote_lab.client import RemoteLabClient
from neops_remote_lab.models import DeviceInfoDto

BASE = os.environ["REMOTE_LAB_URL"]
HERE = Path(__file__).resolve().parent
TOPOLOGY = HERE / "fixture_suite" / "topology.yml"
# The client polls GET /session/{id} every 5 s while waiting and retries a 423 on
# POST /lab every 5 s: one cycle plus slack bounds every wait below.
CYCLE_BOUND = 15.0


def fail(msg: str) -> None:
    print(f"FAIL: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def check(cond: bool, msg: str) -> None:
    if not cond:
        fail(msg)


class Records(logging.Handler):
    """Collects the client's log records: the client reports its queue position and
    its 423 retries only through logging, so this is how a test observes them."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self._mu = threading.Lock()
        self.items: list[tuple[float, str, tuple]] = []

    def emit(self, record: logging.LogRecord) -> None:
        with self._mu:
            self.items.append((time.monotonic(), str(record.msg), tuple(record.args or ())))

    def wait_for(self, msg: str, pred, timeout: float) -> tuple[float, str, tuple]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._mu:
                for item in self.items:
                    if item[1] == msg and pred(item[2]):
                        return item
            time.sleep(0.02)
        fail(f"client never logged {msg!r} within {timeout}s; saw {[i[1] for i in self.items]}")
        raise AssertionError  # unreachable


def capture_client_logs() -> Records:
    rec = Records()
    log = logging.getLogger("neops_remote_lab.client")
    log.setLevel(logging.DEBUG)
    log.addHandler(rec)
    return rec


def tag(session_id: str) -> str:
    """labgate's public tag of a session: the first 8 hex digits of a SHA-256 of the
    UUID's 16 bytes (by default GET /active-session names the holder only by it)."""
    return hashlib.sha256(uuid.UUID(session_id).bytes).hexdigest()[:8]


def active_session_id() -> str | None:
    """The ACTIVE session's tag, compared with `tag(client.session_id)`."""
    r = requests.get(f"{BASE}/active-session", timeout=10)
    if r.status_code == 404:
        check(r.json() == {"detail": "No active session"}, f"404 body {r.text}")
        return None
    check(r.status_code == 200, f"GET /active-session: {r.status_code} {r.text}")
    return r.json()["session_tag"]


def new_client() -> RemoteLabClient:
    return RemoteLabClient(BASE, request_timeout=10, session_timeout=30, lab_acquisition_timeout=30)


class Background:
    """Runs `fn` in a daemon thread; `join` is bounded and re-raises its exception."""

    def __init__(self, fn) -> None:
        self.value = None
        self.error: BaseException | None = None
        self.done_at: float | None = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn) -> None:
        try:
            self.value = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in join
            self.error = e
        self.done_at = time.monotonic()

    def running(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout: float, what: str):
        self.thread.join(timeout)
        check(not self.thread.is_alive(), f"{what} still blocked after {timeout}s")
        if self.error is not None:
            fail(f"{what} raised {self.error!r}")
        return self.value


# ------------------------------------------------------------------ scenarios


def scenario_queue() -> dict:
    """A second client's constructor blocks until the first one closes."""
    logs = capture_client_logs()
    a = new_client()
    a_id = a.session_id
    check(active_session_id() == tag(a_id), "first client is not the ACTIVE session")

    t_b_start = time.monotonic()
    b = Background(new_client)
    # The constructor reports every poll that found it waiting; position 1 = behind a.
    seen_waiting = logs.wait_for(
        "Session %s is in queue at position %d (elapsed=%.1fs).", lambda args: args[1] == 1, CYCLE_BOUND
    )
    check(b.running(), "second constructor returned while the first client was ACTIVE")
    check(active_session_id() == tag(a_id), "the waiting client displaced the first one")

    t_close_start = time.monotonic()
    a.close()
    t_close_end = time.monotonic()
    check(a.session_id == "", "close() did not clear the session id")
    r = requests.get(f"{BASE}/session/{a_id}", timeout=10)
    check(r.status_code == 404 and r.json() == {"detail": "Session not found"}, f"after close: {r.text}")

    client_b = b.join(CYCLE_BOUND, "second client's constructor")
    check(b.done_at is not None and b.done_at > t_close_end, "second client became active before close()")
    check(client_b.session_id != a_id, "same session id twice")
    check(active_session_id() == tag(client_b.session_id), "second client is not ACTIVE after close()")
    b_id = client_b.session_id
    client_b.close()
    check(active_session_id() is None, "queue not empty after both closed")
    return {
        "a": a_id,
        "b": b_id,
        "b_saw_waiting_after_s": round(seen_waiting[0] - t_b_start, 3),
        "close_took_s": round(t_close_end - t_close_start, 3),
        "b_active_after_close_s": round(b.done_at - t_close_end, 3),
        "b_blocked_s": round(b.done_at - t_b_start, 3),
    }


def waiting_client() -> RemoteLabClient:
    """A client whose session is WAITING: the constructor's own steps, in its order,
    minus `_wait_for_active_session` (which would block until ACTIVE)."""
    c = RemoteLabClient.__new__(RemoteLabClient)
    c.base_url = BASE
    c.request_timeout = 10
    c.session_timeout = 30
    c.lab_acquisition_timeout = 30
    c._session = c._create_http_session()
    c.session_id = c._create_session()
    c._session.headers["X-Session-ID"] = c.session_id
    return c


def scenario_lab() -> dict:
    """The ACTIVE client's /lab calls are forwarded; a WAITING one gets 423 and its
    acquire() keeps retrying until its turn, then succeeds."""
    logs = capture_client_logs()
    a = new_client()
    a_id = a.session_id
    devices = a.acquire(TOPOLOGY, reuse=False)
    check(devices == [DeviceInfoDto(name="r1", raw={"box": "frr", "mgmt": "10.0.0.1"})], f"devices {devices}")
    r = a._session.get(a._url("/lab/devices"), timeout=10)
    check(r.status_code == 200, f"GET /lab/devices: {r.status_code} {r.text}")
    listed = [DeviceInfoDto(**d) for d in r.json()]
    check([d.name for d in listed] == ["r1"], f"listed {listed}")
    a.release()
    a.destroy(force=True)
    # release()/destroy() swallow errors into the log: make sure none was logged.
    errors = [i for i in logs.items if i[1].startswith("Failed to")]
    check(not errors, f"release/destroy logged errors: {errors}")

    w = waiting_client()
    check(w.session_id != a_id, "same session id twice")
    r = w._session.get(w._url("/lab/devices"), timeout=10)
    check(r.status_code == 423, f"waiting GET /lab/devices: {r.status_code} {r.text}")
    check(r.headers.get("content-type") == "application/json", f"423 content-type {r.headers}")
    check(r.content == b'{"detail":"Session is not active"}\n', f"423 body {r.content!r}")

    acq = Background(lambda: w.acquire(TOPOLOGY, reuse=True))
    # acquire() treats 423 as "lab busy": it logs, sleeps 5 s and retries.
    logs.wait_for("Lab busy, retrying in 5s...", lambda args: True, CYCLE_BOUND)
    check(acq.running(), "acquire() from a WAITING session returned")
    t_close = time.monotonic()
    a.close()
    w_devices = acq.join(CYCLE_BOUND, "waiting client's acquire()")
    check([d.name for d in w_devices] == ["r1"], f"devices after promotion {w_devices}")
    busy = sum(1 for i in logs.items if i[1] == "Lab busy, retrying in 5s...")
    w_id = w.session_id
    w.close()
    check(active_session_id() is None, "queue not empty after both closed")
    return {
        "a": a_id,
        "w": w_id,
        "w_busy_retries": busy,
        "w_acquired_after_close_s": round(acq.done_at - t_close, 3),
    }


def scenario_heartbeat() -> dict:
    """The client never heartbeats; its session object can, and gets 204."""
    import inspect

    import neops_remote_lab.client as client_mod
    import neops_remote_lab.testing.fixture as fixture_mod

    client_heartbeats = "heartbeat" in inspect.getsource(client_mod) + inspect.getsource(fixture_mod)
    a = new_client()
    a_id = a.session_id
    r = a._session.post(a._url("/session/heartbeat"), timeout=10)
    check(r.status_code == 204 and r.content == b"", f"heartbeat: {r.status_code} {r.content!r}")
    r = requests.post(f"{BASE}/session/heartbeat", timeout=10)
    check(r.status_code == 422, f"heartbeat without header: {r.status_code}")
    body = r.json()
    # The shape a FastAPI client would parse: detail[0].loc / .msg / .type.
    check(body["detail"][0]["loc"] == ["header", "X-Session-ID"], f"422 body {body}")
    check(body["detail"][0]["msg"] == "Field required", f"422 body {body}")
    a.close()
    check(active_session_id() is None, "queue not empty after close")
    return {"client_heartbeats": client_heartbeats, "session": a_id}


def scenario_rate_limited() -> dict:
    """labgate's rate limit (absent from neops-remote-lab) reaches the client as a 429 on
    POST /session, which it does not retry (POST is outside its urllib3 Retry methods):
    the constructor raises requests.HTTPError and leaves no session behind."""
    a = new_client()
    a_id = a.session_id
    try:
        new_client()
    except requests.HTTPError as e:
        r = e.response
        check(r is not None and r.status_code == 429, f"expected 429, got {e!r}")
        check(r.json() == {"detail": "Too many session requests"}, f"429 body {r.text}")
        retry_after = r.headers.get("Retry-After")
        check(retry_after is not None and retry_after.isdigit(), f"Retry-After {retry_after!r}")
    else:
        fail("second constructor succeeded despite the rate limit")
    check(active_session_id() == tag(a_id), "the rejected client changed the queue")
    a.close()
    check(active_session_id() is None, "queue not empty after close")
    return {"a": a_id, "retry_after": int(retry_after)}


def scenario_wire() -> dict:
    """Labgate and neops-remote-lab's own FastAPI app answer the same requests with the
    same status, content-type and body bytes (session ids mapped to placeholders)."""
    warnings.simplefilter("ignore")  # starlette's TestClient deprecation notice
    from starlette.testclient import TestClient

    from neops_remote_lab.server import app

    # No `with`: the app's lifespan would try to tear down netlab labs on this host.
    ref = TestClient(app, raise_server_exceptions=True)
    gate = requests.Session()

    def call(side: str, method: str, path: str, headers: dict | None = None):
        if side == "ref":
            r = ref.request(method, path, headers=headers)
        else:
            r = gate.request(method, BASE + path, headers=headers, timeout=10)
        return r.status_code, r.headers.get("content-type"), r.content

    ids: dict[str, dict[str, str]] = {"ref": {}, "gate": {}}

    def run(side: str) -> list[tuple]:
        out = []

        def step(method: str, path: str, header: str | None = None, name: str | None = None):
            real_path = path.format(**ids[side])
            headers = None
            if header is not None:
                headers = {"X-Session-ID": ids[side].get(header, header)}
            status, ctype, body = call(side, method, real_path, headers)
            if name is not None:
                ids[side][name] = json.loads(body)["session_id"]
            for key, sid in ids[side].items():
                body = body.replace(sid.encode(), f"<{key}>".encode())
                body = body.replace(tag(sid).encode(), f"<{key}.tag>".encode())
            out.append((f"{method} {path}" + (f" [X-Session-ID: {header}]" if header else ""), status, ctype, body))

        step("POST", "/session", name="A")
        step("POST", "/session", name="B")
        step("GET", "/session/{A}")
        step("GET", "/session/{B}")
        step("GET", "/session/0a1b2c3d-0000-4000-8000-000000000000")
        step("GET", "/active-session")
        step("POST", "/session/heartbeat")
        step("POST", "/session/heartbeat", header="A")
        step("POST", "/session/heartbeat", header="B")
        step("POST", "/session/heartbeat", header="no-such-session")
        step("GET", "/lab/devices")
        step("GET", "/lab/devices", header="no-such-session")
        step("GET", "/lab/devices", header="B")
        step("DELETE", "/session/{B}")
        step("DELETE", "/session/{B}")
        step("GET", "/session/{B}")
        step("GET", "/healthz")
        step("DELETE", "/session/{A}")
        step("GET", "/active-session")
        step("GET", "/no/such/path")
        return out

    def deliberate(answer: tuple) -> tuple:
        """The two deliberate differences. Issue 10 #1: labgate names the holder by its
        public tag, never by its id, which is the credential (the full id is behind
        `[compat] active_session_id`); the neops client never calls /active-session.
        Issue 15 #6: labgate ends every JSON body with a newline, JSON whitespace that
        every parser skips (checked below with the client's own requests)."""
        name, status, ctype, body = answer
        if name == "GET /active-session" and status == 200:
            body = body.replace(b'"session_id":"<A>"', b'"session_tag":"<A.tag>"')
        if body:
            body += b"\n"
        return (name, status, ctype, body)

    want = [deliberate(w) for w in run("ref")]
    got = run("gate")
    diffs = [(w, g) for w, g in zip(want, got) if w != g]
    for w, g in diffs:
        print(f"DIFF {w[0]}\n  fastapi: {w[1:]}\n  labgate: {g[1:]}", file=sys.stderr)
    check(len(want) == len(got), "different step counts")
    check(not diffs, f"{len(diffs)} of {len(want)} answers differ from FastAPI's")
    # The newline changes no value a client reads: requests' .json() (the neops client's)
    # and httpx's give the reference server's value for every body.
    import httpx

    for w in want:
        if w[3]:
            r = requests.models.Response()
            r._content, r.encoding = w[3], "utf-8"
            value = json.loads(w[3][:-1])
            check(r.json() == value, f"{w[0]}: requests .json() of {w[3]!r}")
            check(httpx.Response(200, content=w[3]).json() == value, f"{w[0]}: httpx .json()")
    for w in want:
        print(f"SAME {w[0]} -> {w[1]} {w[3].decode()!r}")
    return {"compared": len(want)}


def scenario_demo() -> dict:
    """The README's flow against labgate serving the shipped config/labgate.toml, whose
    built-in demo lab stands in for the lab: the client's whole lab flow succeeds."""
    logs = capture_client_logs()
    c = new_client()
    sid = c.session_id
    devices = c.acquire(TOPOLOGY, reuse=False)
    names = [d.name for d in devices]
    check(names == ["r1", "r2", "sw1"], f"acquire() devices {devices}")
    check(all(d.raw.get("demo") is True for d in devices), f"not marked demo: {devices}")
    r = c._session.get(c._url("/lab/devices"), timeout=10)
    check(r.status_code == 200, f"GET /lab/devices: {r.status_code} {r.text}")
    listed = [DeviceInfoDto(**d) for d in r.json()]
    check(listed == devices, f"listed {listed} != acquired {devices}")
    c.release()
    c.destroy(force=True)
    errors = [i for i in logs.items if i[1].startswith("Failed to")]
    check(not errors, f"release/destroy logged errors: {errors}")
    c.close()
    check(active_session_id() is None, "queue not empty after close")
    return {"session": sid, "devices": names}


SCENARIOS = {
    "demo": scenario_demo,
    "queue": scenario_queue,
    "lab": scenario_lab,
    "heartbeat": scenario_heartbeat,
    "rate_limited": scenario_rate_limited,
    "wire": scenario_wire,
}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in SCENARIOS:
        fail(f"usage: scenarios.py {{{'|'.join(SCENARIOS)}}}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(relativeCreated)7.0fms %(name)s %(message)s")
    result = SCENARIOS[sys.argv[1]]()
    print("RESULT " + json.dumps(result), flush=True)
