"""The ``module`` family: a user's own ``nn.Module`` with a user-written spec (docs/export.md)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jit_embedding.families.base import (
    EncoderSpec,
    EncoderWrapper,
    ExportError,
    TensorSpec,
    compute_dtype,
    dtype_name,
)


def _spec_from_dict(spec: Mapping[str, Any], max_batch_size: int, max_seq_len: int | None) -> EncoderSpec:
    """Parses the user-module spec format (docs/export.md, "Your own module")."""
    if not isinstance(spec, Mapping):
        raise ExportError(f"module spec must be a dict, got {type(spec).__name__}")
    unknown = set(spec) - {"inputs", "outputs", "dynamic_dims"}
    if unknown:
        raise ExportError(f"module spec: unknown keys {sorted(unknown)}")

    def tensors(key: str, is_input: bool) -> list[TensorSpec]:
        items = spec.get(key)
        if not isinstance(items, Sequence) or isinstance(items, str) or not items:
            raise ExportError(f"module spec: '{key}' must be a non-empty list")
        allowed = {"name", "dtype", "dims", "seq_dim"} | ({"pad_value", "example_range"} if is_input else set())
        out = []
        for i, t in enumerate(items):
            if not isinstance(t, Mapping) or not {"name", "dtype", "dims"} <= set(t) or set(t) - allowed:
                raise ExportError(f"module spec: {key}[{i}] must be a dict with name, dtype, dims (and {allowed})")
            rng = t.get("example_range")
            out.append(
                TensorSpec(
                    name=str(t["name"]),
                    dtype=str(t["dtype"]),
                    dims=tuple(t["dims"]),
                    seq_dim=t.get("seq_dim"),
                    pad_value=t.get("pad_value", 0 if is_input and t.get("seq_dim") is not None else None),
                    example_range=None if rng is None else (rng[0], rng[1]),
                )
            )
        return out

    dyn: dict[str, tuple[int, int]] = {}
    for name, rng in dict(spec.get("dynamic_dims") or {}).items():
        try:
            dyn[str(name)] = (int(rng[0]), int(rng[1]))
        except (TypeError, ValueError, IndexError):
            raise ExportError(f"module spec: dynamic_dims['{name}'] must be [min, max]") from None
    dyn["batch"] = (1, int(max_batch_size))
    if max_seq_len is not None:
        if "seq" not in dyn:
            raise ExportError("--max-seq-len given, but the module spec has no 'seq' dim")
        dyn["seq"] = (dyn["seq"][0], int(max_seq_len))
    result = EncoderSpec(tensors("inputs", True), tensors("outputs", False), dyn)
    result.check()
    return result


def load_factory(ref: str | Callable) -> Callable:
    """``"pkg.mod:factory"`` -> the callable (imported); a callable is returned as it is."""
    if callable(ref):
        return ref
    mod_name, sep, attr = str(ref).partition(":")
    if not sep or not mod_name or not attr:
        raise ExportError(f"--module '{ref}' must look like pkg.mod:factory")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise ExportError(f"--module '{ref}': cannot import {mod_name}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ExportError(f"--module '{ref}': {mod_name} has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ExportError(f"--module '{ref}' is not callable")
    return obj


class ModuleEncoder(EncoderWrapper):
    """A user's own ``nn.Module`` with a user-written spec, made by a factory::

        def factory(checkpoint: str | None, dtype: torch.dtype) -> tuple[nn.Module, dict]

    The module's ``forward`` takes the spec's inputs positionally and returns one tensor or a tuple/list
    of tensors in the spec's output order. The spec dict is described in docs/export.md. The version
    digest covers the module's weights, the source of its class and of the factory.
    """

    family = "module"

    def __init__(
        self,
        factory: str | Callable,
        checkpoint: str | Path | None = None,
        *,
        dtype: str | torch.dtype = "float32",
        max_batch_size: int = 256,
        max_seq_len: int | None = None,
    ):
        super().__init__()
        fn = load_factory(factory)
        self.dtype = compute_dtype(dtype)
        if checkpoint is not None and not Path(checkpoint).exists():
            raise ExportError(f"checkpoint {checkpoint} does not exist")
        made = fn(checkpoint=None if checkpoint is None else str(checkpoint), dtype=self.dtype)
        if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module)):
            raise ExportError("the --module factory must return (nn.Module, spec dict)")
        self.inner = made[0].eval().requires_grad_(False)
        self.spec = _spec_from_dict(made[1], max_batch_size, max_seq_len)
        self._factory = fn
        ref = factory if isinstance(factory, str) else f"{fn.__module__}:{fn.__qualname__}"
        self.options = {"factory": ref, "dtype": dtype_name(self.dtype), "spec": _spec_options(self.spec)}

    def code_sources(self) -> list[str]:
        sources = super().code_sources()
        for obj in (type(self.inner), self._factory):
            try:
                sources.append(inspect.getsource(obj))
            except (OSError, TypeError):
                # No source (a class made at run time): the version then tracks the weights and name only.
                sources.append(f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}")
        return sources

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.inner(*inputs)
        outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        if len(outs) != len(self.spec.outputs):
            raise ExportError(f"the module returned {len(outs)} outputs; its spec names {len(self.spec.outputs)}")
        return outs


def _spec_options(spec: EncoderSpec) -> dict[str, Any]:
    return {
        "inputs": [s.manifest_entry(True) | {"example_range": s.example_range} for s in spec.inputs],
        "outputs": [s.manifest_entry(False) for s in spec.outputs],
    }


#: Built-in families by manifest name.
