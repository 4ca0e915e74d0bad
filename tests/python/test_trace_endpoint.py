"""GET /v1/trace against a real `jit-embedding serve` on loopback (a Python factory encoder from
python_encoders.py, the embedding cache on by default): a capture taken while requests run answers
Chrome trace JSON with the pipeline's stages (request, decode, cache lookup, batch, stack, forward,
split, serialize, the queue waits and the cache writer's stores) on named thread tracks; malformed
durations answer 400 and a second capture at the same time 409. Only the shape of the trace is
checked, never its timings."""

from __future__ import annotations

import json
import os
import threading

import pytest
import serving
import torch

ENV = {**os.environ, "PYTHONPATH": str(serving.ROOT / "tests" / "python")}
ENCODERS = [{"name": "affine", "factory": "python_encoders:affine", "options": {"width": 16, "seed": 3}}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trace")
    running = serving.start(serving.write_config(folder, ENCODERS, {"port": 0}), python_hosted=True, env=ENV)
    yield running
    running.stop()


def trace_under_load(server, duration_ms: int) -> dict:
    """Captures a trace while four threads send requests (fresh inputs, so the cache computes and stores)."""
    stop = threading.Event()

    def send(seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        while not stop.is_set():
            server.encode("affine", {"x": torch.randn(2, 16, generator=gen)})

    threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    try:
        status, headers, body = server.request("GET", f"/v1/trace?duration_ms={duration_ms}")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert status == 200, body[:300]
    assert headers["Content-Type"] == "application/json"
    return json.loads(body)


def test_a_capture_under_load_shows_every_stage_on_named_tracks(server):
    trace = trace_under_load(server, 500)
    assert trace["displayTimeUnit"] == "ms"
    assert trace["otherData"]["events"] > 0 and trace["otherData"]["dropped_events"] == 0
    events = trace["traceEvents"]
    threads = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    spans: dict[str, list] = {}
    for e in events:
        if e["ph"] in ("X", "b"):
            spans.setdefault(e["name"], []).append(e)
    for stage in ("request", "decode", "cache lookup", "serialize", "batch", "stack", "forward", "split", "store"):
        assert spans.get(stage), f"no '{stage}' events; got {sorted(spans)}"
    assert spans.get("queue affine"), sorted(spans)
    for e in spans["batch"]:
        assert e["args"]["encoder"] == "affine" and e["args"]["samples"] >= 2 and e["args"]["requests"] >= 1
        assert threads[e["tid"]] == "encoder affine instance 0"
    assert all(threads[e["tid"]].startswith("http-") for e in spans["request"])
    assert all(threads[e["tid"]] == "cache writer" for e in spans["store"])
    # Every async span opens and closes.
    assert sum(e["ph"] == "b" for e in events) == sum(e["ph"] == "e" for e in events)


@pytest.mark.parametrize("value", ["0", "60001", "-5", "abc", "2.5", "", "99999999999999999999"])
def test_bad_durations_are_400(server, value):
    status, _, body = server.request("GET", f"/v1/trace?duration_ms={value}")
    assert status == 400
    answer = json.loads(body)
    assert answer["code"] == "bad_request" and "duration_ms" in answer["error"]


def test_one_capture_at_a_time(server):
    first: dict = {}

    def capture() -> None:
        first["answer"] = server.request("GET", "/v1/trace?duration_ms=1500")

    t = threading.Thread(target=capture)
    t.start()
    conflicts = []
    try:
        # Short captures until one meets the long one (or, if a short one won the race, the long
        # one answers the 409).
        for _ in range(200):
            status, _, body = server.request("GET", "/v1/trace?duration_ms=1")
            if status == 409:
                conflicts.append(json.loads(body))
                break
            assert status == 200
            if "answer" in first:
                break
            threading.Event().wait(0.01)
    finally:
        t.join()
    status, _, body = first["answer"]
    if status == 409:
        conflicts.append(json.loads(body))
    else:
        assert status == 200 and json.loads(body)["traceEvents"]
    assert conflicts and conflicts[0]["code"] == "conflict"
