"""`jit-embedding bench` against a real `jit-embedding serve` on loopback (Python factory encoders from
python_encoders.py and client_encoders.py): a short closed-loop sweep reports every level with
ordered percentiles and the time breakdown, and writes CSV and JSON; the open loop runs with Poisson
arrivals; --profile writes a Chrome trace of the server's pipeline; bad arguments, an unknown
encoder and an unreachable server are one-line errors with exit status 2 (usage) or 1 (failure).
Only shapes of the results are checked, never timings."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import serving

from jit_embedding import bench_cli, cli
from jit_embedding.cli_common import CommandError

ENV = {**os.environ, "PYTHONPATH": str(serving.ROOT / "tests" / "python")}
ENCODERS = [
    {"name": "affine", "factory": "python_encoders:affine", "options": {"width": 16, "seed": 3}},
    {"name": "tokens", "factory": "client_encoders:tokens", "options": {"vocab": 50, "width": 8, "seed": 1}},
]
FAST = ["--window-s", "0.3", "--max-windows", "3"]
BREAKDOWN = [
    "server_queue_ms",
    "server_compute_ms",
    "server_serialize_ms",
    "server_batch_size",
    "batch_formation_ms",
    "client_encode_ms",
    "client_network_server_ms",
    "client_decode_ms",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    running = serving.start(serving.write_config(folder, ENCODERS, {"port": 0}), python_hosted=True, env=ENV)
    yield running
    running.stop()


def bench(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jit_embedding.cli", "bench", *argv],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )


def check_row(row: dict) -> None:
    assert row["requests"] > 0 and row["errors"] == 0
    assert row["requests_per_s"] > 0 and row["samples_per_s"] > 0 and row["mb_per_s"] > 0
    assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p95_ms"] <= row["p99_ms"]
    for key in BREAKDOWN:
        assert row[key] >= 0, key
    assert row["server_batch_size"] >= 1
    assert 1 <= row["windows"] <= 3 and isinstance(row["stable"], bool)
    # The servers' own view, from /metrics deltas over the level: batches ran while it was measured.
    assert row["metrics_batches"] > 0 and row["metrics_batch_size"] >= 1
    assert row["metrics_compute_ms_per_batch"] > 0 and row["metrics_queue_ms"] >= 0


def test_closed_loop_sweep_writes_csv_and_json(server, tmp_path):
    out_csv, out_json, out_png = tmp_path / "bench.csv", tmp_path / "bench.json", tmp_path / "bench.png"
    args = ["--server", f"127.0.0.1:{server.port}", "--encoder", "tokens", "--vocab", "50", "--seq-len", "12"]
    r = bench(
        *args,
        "--batch",
        "3",
        "--concurrency",
        "1:4:x2",
        *FAST,
        "--csv",
        str(out_csv),
        "--json",
        str(out_json),
        "--plot",
        str(out_png),
    )
    assert r.returncode == 0, r.stderr
    assert "p99 ms" in r.stdout and "net+server" in r.stdout
    if importlib.util.find_spec("matplotlib") is None:
        assert "matplotlib is not installed" in r.stdout
    else:
        assert out_png.read_bytes().startswith(b"\x89PNG")

    report = json.loads(out_json.read_text())
    assert report["mode"] == "closed" and report["cache"] == "bypass"
    assert report["inputs"] == {"ids": {"shape": [3, 12], "dtype": "int64"}}
    rows = report["rows"]
    assert [row["concurrency"] for row in rows] == [1, 2, 4]
    for row in rows:
        check_row(row)
        assert row["samples_per_s"] == pytest.approx(3 * row["requests_per_s"])

    with out_csv.open() as f:
        table = list(csv.DictReader(f))
    assert [int(row["concurrency"]) for row in table] == [1, 2, 4]
    assert set(bench_cli.FIELDS) == set(table[0])
    for row in table:
        p = [float(row[f"p{q}_ms"]) for q in (50, 90, 95, 99)]
        assert p == sorted(p) and float(row["requests_per_s"]) > 0


def test_samples_from_a_users_dataset(server, tmp_path):
    # cache_fixtures.small: 40 token samples of 2 to 6 ids, prepped as a JITEmbeddingDataset field is.
    out_json = tmp_path / "bench.json"
    args = ["--server", f"127.0.0.1:{server.port}", "--encoder", "tokens", "--batch", "4", "--concurrency", "2"]
    r = bench(
        *args, "--dataset", "cache_fixtures:small", "--prep", "cache_fixtures:prep_ids", *FAST, "--json", str(out_json)
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(out_json.read_text())
    shape = report["inputs"]["ids"]["shape"]
    assert shape[0] == 4 and 2 <= shape[1] <= 6  # four samples, padded to the longest of them
    check_row(report["rows"][0])
    r = bench(*args, "--dataset", "cache_fixtures:small", *FAST)
    assert r.returncode == 2 and "--dataset and --prep go together" in r.stderr


def test_open_loop_poisson(server, tmp_path):
    out_json = tmp_path / "rate.json"
    r = bench(
        "--server",
        f"http://127.0.0.1:{server.port}",
        "--encoder",
        "affine",
        "--rate",
        "50",
        "--arrivals",
        "poisson",
        "--batch",
        "2",
        *FAST,
        "--json",
        str(out_json),
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(out_json.read_text())
    assert report["mode"] == "open" and report["arrivals"] == "poisson"
    assert report["inputs"] == {"x": {"shape": [2, 16], "dtype": "float32"}}
    [row] = report["rows"]
    assert row["rate"] == 50.0 and row["concurrency"] is None
    check_row(row)


def test_profile_writes_a_chrome_trace_of_the_first_level(server, tmp_path):
    out = tmp_path / "trace.json"
    args = ["--server", f"127.0.0.1:{server.port}", "--encoder", "affine", "--concurrency", "1:2:x2"]
    r = bench(*args, "--window-s", "0.2", "--max-windows", "1", "--profile", str(out), "--profile-ms", "400")
    assert r.returncode == 0, r.stderr
    assert f"wrote trace {out}: " in r.stdout
    trace = json.loads(out.read_text())
    assert trace["displayTimeUnit"] == "ms"
    names = {e["name"] for e in trace["traceEvents"] if e["ph"] in ("X", "b")}
    assert {"request", "batch", "forward", "serialize"} <= names
    threads = {e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "thread_name"}
    assert "encoder affine instance 0" in threads


def test_latency_threshold_stops_the_sweep(server, tmp_path):
    out_json = tmp_path / "stop.json"
    args = ["--server", f"127.0.0.1:{server.port}", "--encoder", "affine", "--concurrency", "1:4:x2"]
    r = bench(
        *args, "--window-s", "0.2", "--max-windows", "1", "--latency-threshold-ms", "1e-6", "--json", str(out_json)
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(out_json.read_text())
    assert len(report["rows"]) == 1 and report["note"].startswith("stopped: p99")


@pytest.mark.parametrize(
    "extra, status, message",
    [
        (["--concurrency", "1:x"], 2, "--concurrency '1:x': expected N or start:end"),
        (["--concurrency", "4:1"], 2, "the end is below the start"),
        (["--concurrency", "1:8:x1"], 2, "the step must grow the level"),
        (["--concurrency", "2", "--rate", "10"], 2, "not both"),
        (["--rate", "fast"], 2, "--rate 'fast': expected"),
        (["--batch", "0"], 2, "--batch must be positive"),
        (["--profile", "t.json", "--profile-ms", "0"], 2, "--profile-ms must be in [1, 60000]"),
        (["--profile", "/nonexistent-folder/t.json"], 2, "does not exist"),
        (["--encoder", "nope"], 1, "encoder 'nope' is not served at"),
        (["--encoder", "tokens", "--vocab", "1000"], 1, "the probe request failed"),
    ],
)
def test_bad_arguments_are_one_line_errors(server, capsys, extra, status, message):
    # In this process (cli.main, as the console script calls it): no interpreter start per case.
    assert cli.main(["bench", "--server", f"127.0.0.1:{server.port}", "--encoder", "affine", *FAST, *extra]) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jit-embedding bench: ") and message in err


@pytest.mark.parametrize(
    "argv, status, message",
    [
        (["--server", "127.0.0.1:1"], 1, "cannot reach http://127.0.0.1:1: connection refused"),
        (["--server", "no-port"], 2, "--server 'no-port': expected host:port"),
        (["--server", "127.0.0.1:1", "--csv", "/nonexistent-folder/x.csv"], 2, "does not exist"),
    ],
)
def test_unreachable_and_malformed_servers(capsys, argv, status, message):
    assert cli.main(["bench", *argv, "--encoder", "affine", *FAST]) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_level_parsing_and_wiring():
    assert bench_cli.parse_levels("1:64:x2", "--concurrency", True) == [1, 2, 4, 8, 16, 32, 64]
    assert bench_cli.parse_levels("8", "--concurrency", True) == [8]
    assert bench_cli.parse_levels("1:10:+4", "--concurrency", True) == [1, 5, 9]
    assert bench_cli.parse_levels("1:10:3", "--concurrency", True) == [1, 4, 7, 10]
    assert bench_cli.parse_levels("12.5:50", "--rate", False) == [12.5, 25.0, 50.0]
    with pytest.raises(CommandError):
        bench_cli.parse_levels("1.5", "--concurrency", True)
    args = cli.build_parser().parse_args(["bench", "--server", "h:1", "--encoder", "e"])
    assert (args.window_s, args.max_windows, args.stability, args.cache, args.batch) == (2.0, 10, 0.10, "bypass", 1)


def test_synthetic_inputs_follow_the_spec():
    import torch

    spec = {
        "name": "clip",
        "inputs": [
            {"name": "input_ids", "dtype": "int64", "shape": [-1, -1], "seq_dim": 1},
            {"name": "attention_mask", "dtype": "int64", "shape": [-1, -1], "seq_dim": 1},
            {"name": "pixels", "dtype": "uint8", "shape": [-1, 3, 4]},
            {"name": "z", "dtype": "bfloat16", "shape": [-1, 5]},
        ],
    }
    out = bench_cli.synthetic_inputs(spec, 2, 7, 1000, torch.Generator().manual_seed(0))
    assert out["input_ids"].shape == (2, 7) and int(out["input_ids"].min()) >= 1 and int(out["input_ids"].max()) < 1000
    assert bool((out["attention_mask"] == 1).all())
    assert out["pixels"].dtype == torch.uint8 and out["pixels"].shape == (2, 3, 4)
    assert out["z"].dtype == torch.bfloat16 and out["z"].shape == (2, 5)
