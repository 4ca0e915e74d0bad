"""Session fixtures for tests that need encoder checkpoints and exported artifacts (model_fixtures.py).

    tiny_checkpoint(family) -> Path           a tiny seeded checkpoint folder (minilm: the real one)
    minilm_checkpoint -> Path                 the real all-MiniLM-L6-v2 folder
    exported_artifact(family, fmt="aoti", dtype="float32", **export_overrides) -> Path
                                              an artifact folder (manifest.json + model.pt2 / model.pt)
    reference_outputs(family, checkpoint_dir, inputs, dtype=torch.float32) -> {output name: tensor}
                                              outputs of the plain library model, not our wrapper

Artifacts are cached across runs under build/test-artifacts/<key>, where the key hashes everything
that decides them; set JIT_TEST_ARTIFACT_CACHE=0 to export into the session's tmp folder instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import model_fixtures
import pytest


@pytest.fixture(scope="session")
def minilm_checkpoint() -> Path:
    return model_fixtures.minilm_path()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Callable[[str], Path]:
    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            folder = tmp_path_factory.mktemp(f"ckpt-{family}") if family != "minilm" else None
            made[family] = model_fixtures.make_checkpoint(family, folder)
        return made[family]

    return get


@pytest.fixture(scope="session")
def exported_artifact(tiny_checkpoint, tmp_path_factory) -> Callable[..., Path]:
    use_cache = os.environ.get("JIT_TEST_ARTIFACT_CACHE", "1") != "0"
    made: dict[tuple, Path] = {}

    def get(family: str, fmt: str = "aoti", dtype: str = "float32", **overrides) -> Path:
        key = (family, fmt, dtype, tuple(sorted(overrides.items())))
        if key not in made:
            checkpoint = tiny_checkpoint(family)
            if use_cache:
                made[key] = model_fixtures.export_artifact(family, fmt, checkpoint, dtype=dtype, **overrides)
            else:
                out = tmp_path_factory.mktemp(f"artifact-{family}-{fmt}-{dtype}")
                made[key] = model_fixtures.export_artifact(
                    family, fmt, checkpoint, dtype=dtype, cache_root=None, out=out, **overrides
                )
        return made[key]

    return get


@pytest.fixture(scope="session")
def reference_outputs() -> Callable[..., dict]:
    return model_fixtures.reference_outputs
