"""The parts of jit_embedding.ray that need no cluster: the autoscaling policy over Serve's real
AutoscalingContext, the settings' validation, each replica's server config (absolute paths, its
own host and RocksDB slot), the KubeRay example's application builders, and the CLI's errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray_fixtures as rf
import yaml

pytest.importorskip("ray.serve", reason="Ray Serve is the optional extra jit-embedding[ray]")

from ray.serve.config import AutoscalingConfig, AutoscalingContext  # noqa: E402

from jit_embedding.ray import autoscaling, settings  # noqa: E402
from jit_embedding.ray.settings import RaySettings  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:The `metrics_interval_s` field:DeprecationWarning")
ROOT = Path(__file__).resolve().parents[2]


def context(in_flight: dict, queued: dict, replicas: list, target: float = 4.0, current_target: int = 1):
    metrics = {autoscaling.IN_FLIGHT_METRIC: in_flight, autoscaling.QUEUE_DEPTH_METRIC: queued}
    return AutoscalingContext(
        deployment_id=None,
        deployment_name="EmbeddingServer",
        app_name="app",
        current_num_replicas=len(replicas),
        target_num_replicas=current_target,
        running_replicas=replicas,
        total_num_requests=0.0,
        total_queued_requests=0.0,
        aggregated_metrics=metrics,
        raw_metrics=None,
        capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=8,
        policy_state={"keep": 1},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=0.0,
        config=AutoscalingConfig(min_replicas=1, max_replicas=8, target_ongoing_requests=target),
    )


def test_the_policy_asks_for_the_load_over_the_target():
    desired, state = autoscaling.queue_depth_policy(context({"r1": 12.0}, {"r1": 3.0}, ["r1"]))
    assert (desired, state["jit_load"], state["keep"]) == (3, 12.0, 1)
    # Queue depth wins where it is the larger (few requests carrying many samples).
    desired, _ = autoscaling.queue_depth_policy(context({"r1": 2.0, "r2": 1.0}, {"r1": 30.0, "r2": 0.0}, ["r1", "r2"]))
    assert desired == 8  # ceil((30 + 1) / 4)
    # Idle: 0 (Serve raises it to min_replicas after downscale_delay_s); a replica without a report is 0.
    assert autoscaling.queue_depth_policy(context({"r1": 0.0}, {}, ["r1", "r2"]))[0] == 0
    assert autoscaling.queue_depth_policy(context({"r1": 4.0}, {}, ["r1"]))[0] == 1  # exactly the target
    # No running replica (starting, or all died): keep Serve's target.
    assert autoscaling.queue_depth_policy(context({}, {}, [], current_target=2))[0] == 2


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"min_replicas": 0}, "min_replicas must be >= 1"),
        ({"min_replicas": 3, "max_replicas": 2}, "max_replicas"),
        ({"target_ongoing_requests": 0}, "target_ongoing_requests must be > 0"),
        ({"metrics_interval_s": 2.0, "look_back_period_s": 1.0}, "look_back_period_s must be > metrics_interval_s"),
        ({"heartbeat_s": 2.0, "registry_ttl_s": 1.0}, "registry_ttl_s must be > heartbeat_s"),
        ({"max_surge_percent": 150}, "max_surge_percent"),
        ({"app": "a/b"}, "app: bad name"),
        ({"replicas": 3}, "unknown Ray setting\\(s\\) replicas"),
    ],
)
def test_bad_settings_are_named(values, message):
    with pytest.raises(ValueError, match=message):
        RaySettings.from_mapping(values)


def test_a_replica_gets_absolute_paths_its_host_and_its_own_rocksdb_slot(tmp_path):
    config = {
        "server": {"auth": {"token_file": "secrets/token"}},
        "encoders": [{"name": "a", "artifact": "exports/a"}, {"name": "f", "factory": "m:f"}],
        "cache": {"rocksdb": {"path": "cache"}},
    }
    absolute = settings.absolute_config(config, tmp_path)
    assert absolute["encoders"][0]["artifact"] == str(tmp_path / "exports" / "a")
    assert absolute["server"]["artifact_root"] == str(tmp_path)
    assert absolute["server"]["auth"]["token_file"] == str(tmp_path / "secrets" / "token")
    assert settings.python_hosted(absolute) and not settings.python_hosted({"encoders": [config["encoders"][0]]})

    first, fd1 = settings.replica_config(absolute, "10.0.0.5", allow_public=True)
    second, fd2 = settings.replica_config(absolute, "127.0.0.1", allow_public=False)
    assert (first["server"]["host"], first["server"]["port"], first["server"]["allow_public"]) == ("10.0.0.5", 0, True)
    assert "allow_public" not in second["server"]
    paths = {first["cache"]["rocksdb"]["path"], second["cache"]["rocksdb"]["path"]}
    assert paths == {str(tmp_path / "cache" / "slot-0"), str(tmp_path / "cache" / "slot-1")}
    os.close(fd1)  # the first replica is gone: its slot is free again
    third, fd3 = settings.replica_config(absolute, "127.0.0.1", allow_public=False)
    assert third["cache"]["rocksdb"]["path"] == str(tmp_path / "cache" / "slot-0")
    os.close(fd2)
    os.close(fd3)
    grace = {"server": {"drain_grace_ms": 1000}}
    assert settings.graceful_shutdown_timeout_s(RaySettings(drain_delay_s=2), grace) == 2 + 1 + 2 + 5


def test_the_kuberay_example_builds_both_applications(tmp_path):
    from jit_embedding.ray import app

    manifest = yaml.safe_load((ROOT / "examples" / "kuberay" / "rayservice.yaml").read_text())
    serve_config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    apps = {a["name"]: a for a in serve_config["applications"]}
    config = rf.write_config(tmp_path, rf.export_affine(tmp_path, 1))
    server = next(a for a in apps.values() if a["import_path"].endswith("build_server_app"))
    registry = next(a for a in apps.values() if a["import_path"].endswith("build_registry_app"))
    s = RaySettings.from_mapping(server["args"]["settings"])
    assert registry["name"] == s.registry_app and registry["route_prefix"] == s.discovery_route
    assert server["name"] == s.app and server.get("route_prefix") is None
    assert registry["args"] == server["args"], "both builders must see the same settings"
    built = app.build_server_app({**server["args"], "config": str(config)})
    assert built is not None and app.build_registry_app(registry["args"]) is not None


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jit_embedding.cli", "ray", *args], capture_output=True, text=True, timeout=120
    )


def test_the_cli_names_the_problem_before_touching_a_cluster(tmp_path):
    r = run_cli("deploy", "--config", str(tmp_path / "missing.yaml"))
    assert r.returncode == 1 and "cannot read the server config" in r.stderr and "missing.yaml" in r.stderr
    r = run_cli("deploy", "--config", str(tmp_path / "missing.yaml"), "--min-replicas", "0")
    assert r.returncode == 2 and "min_replicas must be >= 1" in r.stderr
    (tmp_path / "s.yaml").write_text("replicas: 3\n")
    r = run_cli("deploy", "--config", "x.yaml", "--settings", str(tmp_path / "s.yaml"))
    assert r.returncode == 2 and "unknown Ray setting(s) replicas" in r.stderr
