"""`jit-embedding cache warm|stats|prune` against a real `jit-embedding serve` on loopback, with the
datasets, fields and encoders of cache_fixtures.py and client_encoders.py.

warm computes every sample once and a second warm finds all of them cached; a warm interrupted by
SIGINT exits 130 with its state written, and the rerun resumes where it stopped, so that every sample
is computed exactly once over both runs; stats prints the tiers and encoders; prune --stale removes an
updated encoder's old entries; bad arguments and unreachable servers are one line on stderr.

warm runs as a subprocess (as users run it); the quick error cases call the CLI in this process."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serving

from jit_embedding import cli
from jit_embedding.cli_common import parse_duration, parse_size

ENV = {**os.environ, "PYTHONPATH": str(serving.ROOT / "tests" / "python")}
TOKENS = {"factory": "client_encoders:tokens", "options": {"vocab": 50, "width": 8, "seed": 1}}
ENCODERS = [
    {"name": "tokens", **TOKENS},
    {"name": "tokens2", "factory": "client_encoders:tokens", "options": {"vocab": 50, "width": 8, "seed": 2}},
    {"name": "reloadable", "factory": "client_encoders:tokens", "options": {"vocab": 50, "width": 8, "seed": 3}},
    # Slow enough that a warm of cache_fixtures:medium (30 batches of 4) runs for seconds.
    {"name": "slow_tokens", "factory": "cache_fixtures:slow_tokens", "options": {"seconds": 0.25}},
]
SUMMARY = re.compile(r"warmed ([\d,]+) samples.*: ([\d,]+) computed, ([\d,]+) already cached \(hit rate ([\d.]+%|-)\)")


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """warm writes its state file in the current folder by default."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache-cli")
    # Idle keep-alive connections (this process's clients) close soon, so that the stop drains quickly.
    settings = {"port": 0, "keep_alive_timeout_s": 1}
    running = serving.start(serving.write_config(folder, ENCODERS, settings), python_hosted=True, env=ENV)
    yield running
    running.stop()


def url(server) -> str:
    return f"http://127.0.0.1:{server.port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def warm_cmd(server, dataset: str, fields: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "jit_embedding.cli", "cache", "warm",
        "--dataset", f"cache_fixtures:{dataset}", "--fields", f"cache_fixtures:{fields}",
        "--server", url(server), *extra,
    ]  # fmt: skip


def warm_subprocess(server, cwd: Path, dataset: str, fields: str, *extra: str) -> tuple[str, str]:
    """`jit-embedding cache warm` as users run it: (stdout, stderr) of a successful run."""
    cmd = warm_cmd(server, dataset, fields, *extra)
    out = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout, out.stderr


def warm(server, dataset: str, fields: str, *extra: str) -> tuple[str, str]:
    """The same in this process (the current folder is the test's): (stdout, stderr) of a successful run."""
    status, out, err = in_process(*warm_cmd(server, dataset, fields, *extra)[3:])
    assert status == 0, err
    return out, err


def summary(out: tuple[str, str]) -> tuple[int, int, int, str]:
    """(samples, computed, already cached, hit rate) from warm's summary line."""
    m = SUMMARY.search(out[0])
    assert m, out
    return int(m[1].replace(",", "")), int(m[2].replace(",", "")), int(m[3].replace(",", "")), m[4]


def in_process(*args: str) -> tuple[int, str, str]:
    """Runs `jit-embedding ARGS` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(list(args))
        except SystemExit as e:
            status = e.code
    return status, out.getvalue(), err.getvalue()


def assert_one_line_error(result: tuple[int, str, str], *needles: str, expected: int | None = None) -> None:
    """``result`` from in_process(): a non-zero status and one line on stderr naming the problem."""
    status, _, err = result
    assert status != 0 and (expected is None or status == expected), (status, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def cache_stats(server) -> dict:
    status, _, body = server.request("GET", "/v1/cache/stats")
    assert status == 200, body
    return json.loads(body)


def rows(server, encoder: str) -> tuple[int, int]:
    (e,) = [e for e in cache_stats(server)["encoders"] if e["name"] == encoder]
    return e["rows_hit"], e["rows_missed"]


def computed_rows(server, encoder: str) -> int:
    """Samples the engine ran through the encoder (jit_batch_size's sum)."""
    try:
        return int(serving.histogram(server.metrics(), "jit_batch_size", encoder)[0])
    except AssertionError:  # no batch yet
        return 0


def test_warm_computes_everything_then_finds_it_cached(server, tmp_path):
    before = computed_rows(server, "tokens")
    first = warm_subprocess(server, tmp_path, "small", "fields", "--batch-size", "8", "--concurrency", "3")
    assert summary(first) == (40, 40, 0, "0.0%")
    assert computed_rows(server, "tokens") - before == 40
    assert "samples/s" in first[0] and "hit rate 0.0%" in first[1]  # the progress bar's
    assert not list(tmp_path.glob(".jit-warm-*")), "a finished warm leaves no state file"

    hit0, miss0 = rows(server, "tokens")
    second = warm(server, "small", "fields", "--batch-size", "16")
    assert summary(second) == (40, 0, 40, "100.0%")
    hit1, miss1 = rows(server, "tokens")
    assert (hit1 - hit0, miss1 - miss0) == (40, 0)
    assert computed_rows(server, "tokens") - before == 40


def test_warm_two_fields_limit_and_sample_key(server, tmp_path):
    args = ("--limit", "50", "--sample-key", "cache_fixtures:sample_key", "--no-progress")
    first = warm(server, "medium", "two_fields", *args)
    assert "(100 embeddings, 2 fields)" in first[0]
    assert summary(first) == (50, 100, 0, "0.0%")
    assert first[1] == ""
    second = warm(server, "medium", "two_fields", *args)
    assert summary(second) == (50, 0, 100, "100.0%")


def test_warm_interrupted_by_sigint_resumes(server, tmp_path):
    state = tmp_path / "warm-state.json"
    cmd = warm_cmd(server, "medium", "slow_fields", "--batch-size", "4", "--concurrency", "2")
    cmd += ["--state", str(state), "--save-every", "0.05"]
    before = computed_rows(server, "slow_tokens")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:  # mid-run: some batches recorded as done
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no progress recorded"
            with contextlib.suppress(FileNotFoundError, ValueError):
                if json.loads(state.read_text())["next"] > 0:
                    break
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    recorded = json.loads(state.read_text())
    stopped = recorded["next"]
    assert 0 < stopped < 120 and stopped % 4 == 0, recorded
    assert recorded["dataset"] == "cache_fixtures:medium" and recorded["samples"] == 120
    assert f"interrupted (SIGINT) at sample {stopped} of 120" in err
    assert "rerun the same command to resume" in err and str(state) in err
    assert "Traceback" not in err

    rerun = warm(server, "medium", "slow_fields", "--state", str(state), "--concurrency", "4")
    assert f"resuming at sample {stopped} of 120" in rerun[1]
    samples, computed, cached, _ = summary(rerun)
    assert samples == 120 - stopped and computed + cached == 120 - stopped
    assert f"from sample {stopped}" in rerun[0]
    # Every sample computed once over both runs: the rerun redid no completed batch.
    assert computed_rows(server, "slow_tokens") - before == 120
    assert not state.exists()


def test_warm_restart_ignores_the_state(server, tmp_path):
    state = tmp_path / "s.json"
    state.write_text(
        json.dumps(
            {
                "format": 1,
                "dataset": "cache_fixtures:other",
                "fields": "cache_fixtures:fields",
                "sample_key": None,
                "next": 20,
            }  # fmt: skip
        )
    )
    resumed = warm(server, "other", "fields", "--state", str(state), "--no-progress")
    assert "resuming at sample 20 of 30" in resumed[1] and summary(resumed)[0] == 10
    restarted = warm(server, "other", "fields", "--state", str(state), "--restart", "--no-progress")
    assert "resuming" not in restarted[1] and summary(restarted)[0] == 30


def test_stats_prints_tiers_and_encoders(server):
    status, out, err = in_process("cache", "stats", "--server", url(server))
    assert status == 0, err
    assert re.search(r"^tier\s+entries\s+bytes\s+hits\s+misses\s+hit rate\s+evictions\s+corrupt$", out, re.M), out
    assert re.search(r"^memory\s+[\d,]+\s+[\d.]+ (B|KiB|MiB)\s", out, re.M), out
    assert "write queue:" in out and "dropped" in out
    stats = cache_stats(server)
    for e in stats["encoders"]:
        assert re.search(rf"^{e['name']}\s.*{re.escape(e['version'])}$", out, re.M), out

    status, out, err = in_process("cache", "stats", "--server", url(server), "--json")
    assert status == 0, err
    raw = json.loads(out)
    assert {t["tier"] for t in raw["tiers"]} == {"memory"} and "write_queue_depth" in raw


def test_prune_stale_after_an_in_place_update(server, tmp_path):
    def version() -> str:
        (e,) = [e for e in cache_stats(server)["encoders"] if e["name"] == "reloadable"]
        return e["version"]

    first = warm(server, "other", "reload_fields", "--no-progress")
    assert summary(first)[1] == 30
    old = version()
    body = json.dumps({"options": {"vocab": 50, "width": 8, "seed": 4}}).encode()
    status, _, answer = server.request("POST", "/v1/encoders/reloadable/load", body)
    assert status == 200, answer
    new = version()
    assert new != old

    # --versions scans the tiers: the old version's 30 entries are stale until pruned.
    status, out, err = in_process("cache", "stats", "--server", url(server), "--versions")
    assert status == 0, err
    assert re.search(rf"^memory\s+reloadable\s+30\s+.*\bstale\s+{re.escape(old)}$", out, re.M), out

    status, out, err = in_process("cache", "prune", "--server", url(server), "--stale")
    assert status == 0, err
    assert re.search(r"removed 30 entries \([\d.]+ KiB\): entries of versions no encoder serves now", out), out
    status, out, _ = in_process("cache", "prune", "--server", url(server), "--stale")
    assert "removed 0 entries" in out

    assert summary(warm(server, "other", "reload_fields", "--no-progress"))[1:3] == (30, 0)
    status, out, err = in_process(
        "cache", "prune", "--server", url(server), "--version", new, "--encoder", "reloadable"
    )
    assert status == 0 and "removed 30 entries" in out and new in out, (out, err)
    status, out, err = in_process("cache", "prune", "--server", url(server), "--older-than", "1h")
    assert status == 0 and "removed 0 entries" in out and "older than 1h (3,600 s)" in out, (out, err)


def test_duration_and_size_parsing():
    assert [parse_duration(s) for s in ("45s", "30m", "12h", "7d", "2w", "1h30m", "90", "1.5h")] == [
        45, 1800, 43200, 604800, 1209600, 5400, 90, 5400,
    ]  # fmt: skip
    assert [parse_size(s) for s in ("1024", "500M", "10G", "10GB", "10GiB", "1.5K", "2t")] == [
        1024, 500 << 20, 10 << 30, 10 << 30, 10 << 30, 1536, 2 << 40,
    ]  # fmt: skip


def test_malformed_arguments_are_one_line_errors(server):
    s = url(server)
    for flag, value, needle in (
        ("--older-than", "7x", "malformed duration '7x'"),
        ("--older-than", "d7", "malformed duration 'd7'"),
        ("--older-than", "", "malformed duration ''"),
        ("--max-bytes", "10Q", "malformed size '10Q'"),
        ("--max-bytes", "-5", "malformed size '-5'"),
        ("--max-bytes", "G", "malformed size 'G'"),
    ):
        assert_one_line_error(in_process("cache", "prune", "--server", s, flag, value), needle, expected=2)
    assert_one_line_error(in_process("cache", "prune", "--server", s), "give exactly one of", expected=2)
    assert_one_line_error(
        in_process("cache", "prune", "--server", s, "--stale", "--max-bytes", "1G"),
        "--stale and --max-bytes",
        expected=2,
    )
    assert_one_line_error(
        in_process("cache", "prune", "--server", s, "--encoder", "tokens", "--stale"),
        "--encoder narrows --version",
        expected=2,
    )
    assert_one_line_error(
        in_process("cache", "stats", "--server", "http://127.0.0.1"), "expected host:port", expected=2
    )


def test_unreachable_server_is_a_clear_error(server):
    dead = f"127.0.0.1:{free_port()}"
    for args in (("stats",), ("prune", "--stale")):
        assert_one_line_error(
            in_process("cache", *args, "--server", dead), f"cannot reach http://{dead}: connection refused", expected=1
        )
    warm_args = ["cache", "warm", "--dataset", "cache_fixtures:small", "--fields", "cache_fixtures:fields"]
    assert_one_line_error(
        in_process(*warm_args, "--server", dead, "--no-progress"), f"cannot reach http://{dead}", expected=1
    )
    # One server down of two: a warning, and the other does the work.
    status, out, err = in_process(*warm_args, "--server", dead, "--server", url(server), "--no-progress")
    assert status == 0, err
    assert f"warning: cannot reach http://{dead}" in err and "warmed 40 samples" in out


def test_warm_argument_and_dataset_errors(server, tmp_path):
    s = url(server)

    def warm_here(dataset: str, fields: str, *extra: str) -> tuple[int, str, str]:
        return in_process("cache", "warm", "--dataset", dataset, "--fields", fields, "--server", s, *extra)

    fields = "cache_fixtures:fields"
    assert_one_line_error(warm_here("cache_fixtures", fields), "--dataset must be module:function", expected=2)
    assert_one_line_error(warm_here("no_such_module:x", fields), "cannot import no_such_module", expected=2)
    assert_one_line_error(warm_here("cache_fixtures:nope", fields), "has no attribute 'nope'", expected=2)
    assert_one_line_error(warm_here("cache_fixtures:not_a_dataset", fields), "not a map-style dataset", expected=2)
    assert_one_line_error(
        warm_here("cache_fixtures:small", "cache_fixtures:missing_encoder_fields"),
        "encoder 'no_such_encoder' is not served at",
        "tokens",
        expected=1,
    )
    assert_one_line_error(
        warm_here("cache_fixtures:small", fields, "--batch-size", "0"), "--batch-size must be positive", expected=2
    )

    assert_one_line_error(
        warm_here("cache_fixtures:broken_at_7", fields, "--batch-size", "4", "--no-progress"),
        "dataset[7]: KeyError",
        "stopped at sample 4 of 20",
        "to resume",
        expected=1,
    )
    (state,) = tmp_path.glob(".jit-warm-*.json")
    assert json.loads(state.read_text())["next"] == 4
