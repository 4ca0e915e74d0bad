"""`jit-embedding serve`: the C++ server hosted by Python, with nn.Module factories.

Served outputs equal the module run locally; the Python-hosted server maps overload (429 with
Retry-After), deadlines (504) and draining (503) like the binary; bad factories are refused naming
the encoder; the CLI drains on SIGTERM with requests in flight and exits 0."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import python_encoders
import serving
import torch

from jit_embedding import codec
from jit_embedding.serve import Server


def config(tmp_path, *encoders, **server):
    return serving.write_config(tmp_path, list(encoders), {"port": 0, **server})


def post(port: int, encoder: str, inputs: dict, headers: dict | None = None):
    return serving.Running(None, port).request("POST", f"/v1/encode/{encoder}", codec.encode(inputs), headers)


@pytest.mark.parametrize("factory", ["python_encoders:affine", "python_encoders:affine_dims"])
def test_module_outputs_equal_the_local_module_and_batch(tmp_path, factory):
    cfg = config(
        tmp_path,
        {
            "name": "affine",
            "factory": factory,
            "options": {"width": 16, "seed": 3},
            "max_batch_size": 32,
            "max_queue_delay_us": 20000,
        },
    )
    local, _ = python_encoders.affine(16, 3)
    with Server(str(cfg)) as server:
        (listed,) = server.encoders()
        assert listed["name"] == "affine" and listed["version"].startswith("sha256:")
        requests = [torch.randn(1 + i % 3, 16) for i in range(16)]
        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(lambda x: post(server.port, "affine", {"x": x}), requests))
        batch_sizes = []
        for x, (status, _, body) in zip(requests, responses):
            assert status == 200, body
            out, meta = codec.decode(body)
            want = local(x)
            torch.testing.assert_close(out["y"], want["y"], rtol=0.0, atol=1e-5)
            torch.testing.assert_close(out["norm"], want["norm"], rtol=0.0, atol=1e-5)
            assert meta["version"] == listed["version"]
            batch_sizes.append(meta["timings"]["batch_samples"])
        assert max(batch_sizes) > max(x.shape[0] for x in requests), "no two requests shared a batch"


def test_an_output_that_aliases_the_input_is_copied_out(tmp_path):
    cfg = config(tmp_path, {"name": "id", "factory": "python_encoders:identity", "max_queue_delay_us": 100})
    with Server(str(cfg)) as server:
        x = torch.randn(3, 4)
        status, _, body = post(server.port, "id", {"x": x})
        assert status == 200
        out, _ = codec.decode(body)
        torch.testing.assert_close(out["y"], x, rtol=0, atol=0)


def test_overload_is_429_with_retry_after_and_accepted_requests_complete(tmp_path):
    cfg = config(
        tmp_path,
        {
            "name": "slow",
            "factory": "python_encoders:slow",
            "options": {"seconds": 0.3},
            "max_batch_size": 1,
            "max_queue_size": 2,
            "max_queue_delay_us": 100,
        },
    )
    with Server(str(cfg)) as server:
        xs = [torch.full((1, 4), float(i)) for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda x: post(server.port, "slow", {"x": x}), xs))
        statuses = [r[0] for r in responses]
        assert 429 in statuses and 200 in statuses, statuses
        for x, (status, headers, body) in zip(xs, responses):
            if status == 429:
                assert int(headers["Retry-After"]) >= 1
                assert serving.error_of((status, headers, body))["code"] == "overloaded"
            else:
                assert status == 200
                torch.testing.assert_close(codec.decode(body)[0]["y"], x * 2)
        assert post(server.port, "slow", {"x": xs[0]})[0] == 200


def test_a_deadline_that_passes_in_the_queue_is_504(tmp_path):
    cfg = config(
        tmp_path,
        {"name": "slow", "factory": "python_encoders:slow", "options": {"seconds": 0.5}, "max_batch_size": 1},
    )
    with Server(str(cfg)) as server:
        x = torch.ones(1, 4)
        blocker = threading.Thread(target=post, args=(server.port, "slow", {"x": x}))
        blocker.start()
        time.sleep(0.1)
        deadline_ms = int((time.time() + 0.15) * 1000)
        status, headers, body = post(server.port, "slow", {"x": x}, {"X-Deadline-Ms": str(deadline_ms)})
        blocker.join()
        assert serving.error_of((status, headers, body))["code"] == "deadline_exceeded"
        assert status == 504
        assert post(server.port, "slow", {"x": x})[0] == 200


def test_draining_answers_503_and_finishes_in_flight_work(tmp_path):
    cfg = config(tmp_path, {"name": "slow", "factory": "python_encoders:slow", "options": {"seconds": 0.5}})
    server = Server(str(cfg))
    port = server.start()
    x = torch.ones(2, 4)
    result = {}
    in_flight = threading.Thread(target=lambda: result.setdefault("r", post(port, "slow", {"x": x})))
    in_flight.start()
    time.sleep(0.1)
    drained = {}
    drainer = threading.Thread(target=lambda: drained.setdefault("ok", server.drain()))
    drainer.start()
    time.sleep(0.1)
    status, headers, body = post(port, "slow", {"x": x})
    assert status == 503 and serving.error_of((status, headers, body))["code"] == "not_ready"
    in_flight.join()
    drainer.join()
    assert result["r"][0] == 200 and drained["ok"] is True
    assert server.wait(5)


@pytest.mark.parametrize(
    "factory,message",
    [
        ("python_encoders:broken", "must return (nn.Module, spec)"),
        ("python_encoders:nope", "cannot import factory"),
        ("no_such_module_xyz:f", "cannot import factory"),
    ],
)
def test_bad_factories_are_refused_naming_the_encoder(tmp_path, factory, message):
    server = Server(str(config(tmp_path, {"name": "bad", "factory": factory})))
    with pytest.raises((ValueError, RuntimeError)) as err:
        server.start()
    assert "bad" in str(err.value) and message in str(err.value)


def test_serve_cli_drains_on_sigterm_with_requests_in_flight(tmp_path):
    cfg = config(tmp_path, {"name": "slow", "factory": "python_encoders:slow", "options": {"seconds": 0.4}})
    env = {**serving.os.environ, "PYTHONPATH": str(serving.ROOT / "tests" / "python")}
    running = serving.start(cfg, python_hosted=True, env=env)
    x = torch.ones(1, 4)
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(post, running.port, "slow", {"x": x}) for _ in range(3)]
        time.sleep(0.2)
        running.proc.send_signal(signal.SIGTERM)
        statuses = [f.result()[0] for f in futures]
    assert statuses == [200, 200, 200]
    assert running.proc.wait(timeout=30) == 0
