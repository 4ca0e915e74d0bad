"""The server offered 4x its capacity (issue 8, "Overload"), short version: benchmarks/overload.py's steps
with 15 s of open-loop load against the real server binary.

Asserted (functional facts and generous bounds only; the numbers are printed):
  - the open loop really overloaded the server: some answers were 429;
  - every answer was a 200 with outputs equal to the encoder run locally, or a 429 with a Retry-After
    of whole seconds; no other status, no socket error; the server's own counters agree;
  - the server's peak RSS stayed under the bound derived from its settings (queue x sample bytes,
    connections x request and response bytes, per-connection overhead, slack, over the peak before);
  - after the load stopped, a closed loop got back to half the capacity within 30 s (the benchmark
    reports the time to 80% against the issue's 5 s target);
  - the server was alive and ready throughout, and drained and exited 0 on SIGTERM.
"""

from __future__ import annotations

import json

import fault_fixtures as ff
import pytest

DURATION_S = 15.0


@pytest.mark.skipif(not ff.BINARY.exists(), reason=f"{ff.BINARY} is not built (run `make build`)")
def test_four_times_capacity(tmp_path):
    overload = ff.overload_module()
    artifact = overload.export_work(root=ff.ROOT / "build" / "test-artifacts")
    r = overload.run(
        ff.BINARY,
        artifact,
        tmp_path / "server.log",
        duration=DURATION_S,
        factor=4.0,
        capacity_s=4.0,
        warmup_s=1.0,
        recover_fraction=0.5,
        recover_limit=30.0,
    )
    overload.report(r)
    print(json.dumps({k: v for k, v in r.items() if "tally" not in k}))
    ol = r["open_loop"]

    assert r["capacity_req_per_s"] > 0 and r["closed_loop"]["statuses"] == {"200": r["closed_loop"]["sent"]}
    assert ol["statuses"].get("429", 0) > 0, f"not overloaded: {ol['statuses']} at {r['achieved_offered_req_per_s']}/s"
    assert ol["statuses"].get("200", 0) > 0, "nothing was accepted"
    assert set(ol["statuses"]) <= {"200", "429"}, ol["statuses"]
    assert ol["429_without_retry_after"] == 0
    assert ol["transport_errors"] == {}
    assert ol["wrong_outputs"] == 0, ol["wrong_examples"]
    assert r["unexpected"] == 0 and r["wrong_outputs"] == 0, r
    # The server counted exactly the answers the clients got.
    assert r["server_counts"] == ol["statuses"], (r["server_counts"], ol["statuses"])

    assert r["hwm_peak_kib"] <= r["rss_bound_kib"], (r["hwm_peak_kib"], r["rss_bound_kib"])
    assert r["recovery_s"] is not None, "throughput did not come back to half the capacity within 30 s"
    assert r["alive_after"] and r["ready_after"] == 200
    assert r["exit_code"] == 0, (tmp_path / "server.log").read_text()[-2000:]
