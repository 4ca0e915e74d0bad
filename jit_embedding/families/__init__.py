"""Encoder families: the modules that `jit-embedding export` traces and compiles.

Each family is an ``nn.Module`` (an :class:`EncoderWrapper`) around a real architecture from
diffusers or transformers, loaded from a local folder in the Hugging Face layout (``config.json``
plus ``*.safetensors``). ``forward(*inputs)`` takes the inputs positionally in manifest order and
returns a tuple of outputs in manifest order; ``spec`` describes both (docs/export.md).

    vae        diffusers AutoencoderKL encoder: pixels [B,3,H,W] in [-1,1] -> latent [B,C,H/f,W/f]
    clip_text  transformers CLIPTextModel: input_ids, attention_mask -> last_hidden_state, pooled
    t5         transformers T5EncoderModel: input_ids, attention_mask -> last_hidden_state
    minilm     sentence-transformers layout on a BertModel: ids, mask -> L2-normalised mean embedding
    module     a user's own nn.Module with a user-written spec (:class:`ModuleEncoder`)

Layout: ``base`` (specs, errors, the base class), ``vae``, ``text`` (clip_text, t5, minilm),
``module``. Use :func:`build_wrapper` to get one by name. Problems with the request (a missing folder, a
checkpoint of the wrong kind, a dtype the family cannot run in) raise :class:`ExportError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from jit_embedding.families.base import (
    DTYPES,
    EncoderSpec,
    EncoderWrapper,
    ExportError,
    TensorSpec,
    dtype_name,
    parse_image_size,
)
from jit_embedding.families.module import ModuleEncoder, load_factory
from jit_embedding.families.text import ClipTextEncoder, MiniLMEncoder, T5Encoder
from jit_embedding.families.vae import VaeEncoder

__all__ = [
    "DTYPES",
    "ExportError",
    "EncoderSpec",
    "EncoderWrapper",
    "TensorSpec",
    "FAMILIES",
    "ClipTextEncoder",
    "MiniLMEncoder",
    "ModuleEncoder",
    "T5Encoder",
    "VaeEncoder",
    "build_wrapper",
    "dtype_name",
    "load_factory",
    "parse_image_size",
]

#: Built-in families by manifest name.
FAMILIES: dict[str, type[EncoderWrapper]] = {
    "vae": VaeEncoder,
    "clip_text": ClipTextEncoder,
    "t5": T5Encoder,
    "minilm": MiniLMEncoder,
}


def build_wrapper(
    family: str,
    checkpoint: str | Path | None = None,
    *,
    module: str | Callable | None = None,
    dtype: str | torch.dtype = "float32",
    max_batch_size: int = 256,
    max_seq_len: int | None = None,
    image_size: int | str | Sequence[int] | None = None,
) -> EncoderWrapper:
    """Loads one family's wrapper on the CPU, in eval mode, weights frozen.

    Args:
        family: ``vae``, ``clip_text``, ``t5``, ``minilm``, or ``module`` (then ``module`` is required).
        checkpoint: the Hugging Face model folder (optional for ``module``: passed to the factory).
        module: ``"pkg.mod:factory"`` or the factory itself, for family ``module``.
        dtype: compute dtype name (``float32``, ``bfloat16``, ``float16``).
        max_batch_size: upper bound of the dynamic batch dim (at least 2).
        max_seq_len: upper bound of the ``seq`` dim for token families (default: the checkpoint's).
        image_size: ``H`` or ``HxW`` for ``vae`` (default: the config's sample_size).

    Raises:
        ExportError: unknown family, missing or wrong checkpoint, an option the family does not take,
            or a dtype it cannot run in.
    """
    if int(max_batch_size) < 2:
        raise ExportError(f"--max-batch-size must be at least 2, got {max_batch_size}")
    if family == "module" or module is not None:
        if module is None:
            raise ExportError("family module needs --module pkg.mod:factory")
        if family not in ("module", None):
            raise ExportError(f"--module and --family {family} exclude each other")
        if image_size is not None:
            raise ExportError("--image-size applies to family vae only")
        return ModuleEncoder(module, checkpoint, dtype=dtype, max_batch_size=max_batch_size, max_seq_len=max_seq_len)
    cls = FAMILIES.get(family)
    if cls is None:
        raise ExportError(f"unknown family '{family}' (one of {', '.join(FAMILIES)}, or --module pkg.mod:factory)")
    kwargs: dict[str, Any] = {"dtype": dtype, "max_batch_size": max_batch_size}
    if cls is VaeEncoder:
        if max_seq_len is not None:
            raise ExportError("--max-seq-len applies to token families, not vae")
        kwargs["image_size"] = image_size
    else:
        if image_size is not None:
            raise ExportError(f"--image-size applies to family vae only, not {family}")
        kwargs["max_seq_len"] = max_seq_len
    return cls(checkpoint, **kwargs)
