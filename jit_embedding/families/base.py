"""What every family shares: the tensor and encoder specs written into manifest.json, the error
type, checkpoint and option checks, and the :class:`EncoderWrapper` base class."""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

import torch
from torch import nn


class ExportError(ValueError):
    """A request that cannot be exported; the message names the problem (one line)."""


#: Tensor dtype names used in manifests, and their torch dtypes.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
_PACKAGE = __name__.rpartition(".")[0]  # jit_embedding.families
DimName = Union[str, int]


def dtype_name(dtype: torch.dtype) -> str:
    """The manifest name of a torch dtype; ExportError for one the wire format does not carry."""
    try:
        return _DTYPE_NAMES[dtype]
    except KeyError:
        raise ExportError(f"dtype {dtype} is not one the manifest can describe") from None


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an artifact, as written into manifest.json.

    ``dims`` names each dimension: a string for a dynamic one (``"batch"``, ``"seq"``), the size for a
    static one. ``shape`` follows from it (-1 for a named dim). ``seq_dim`` marks the token dimension
    (padded with ``pad_value`` on inputs, cut back per request on outputs). ``example_range`` is not
    written to the manifest: it bounds the values of generated example inputs (integers: ``[lo, hi)``).
    """

    name: str
    dtype: str
    dims: tuple[DimName, ...]
    seq_dim: int | None = None
    pad_value: int | None = None
    example_range: tuple[float, float] | None = None

    @property
    def shape(self) -> list[int]:
        return [-1 if isinstance(d, str) else int(d) for d in self.dims]

    def manifest_entry(self, is_input: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": self.shape}
        if is_input:
            entry["dims"] = list(self.dims)
        if self.seq_dim is not None:
            entry["seq_dim"] = self.seq_dim
        if is_input and self.pad_value is not None:
            entry["pad_value"] = self.pad_value
        return entry


@dataclass
class EncoderSpec:
    """What an encoder takes and gives, and the ``[min, max]`` of each dynamic dim it is exported for."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    dynamic_dims: dict[str, tuple[int, int]] = field(default_factory=dict)

    def check(self) -> None:
        """Raises ExportError for a spec the manifest contract does not allow."""
        for kind, specs in (("inputs", self.inputs), ("outputs", self.outputs)):
            if not specs:
                raise ExportError(f"spec: {kind} must not be empty")
            names = [s.name for s in specs]
            if len(set(names)) != len(names):
                raise ExportError(f"spec: {kind} has duplicate names {names}")
            for s in specs:
                where = f"spec: {kind} '{s.name}'"
                if s.dtype not in DTYPES:
                    raise ExportError(f"{where}: unknown dtype '{s.dtype}' (one of {', '.join(DTYPES)})")
                if not s.dims or s.dims[0] != "batch":
                    raise ExportError(f'{where}: dims[0] must be "batch", got {list(s.dims)}')
                for d in s.dims:
                    if isinstance(d, str):
                        if d not in self.dynamic_dims:
                            raise ExportError(f"{where}: dim '{d}' has no [min, max] in dynamic_dims")
                    elif isinstance(d, bool) or not isinstance(d, int) or d < 1:
                        raise ExportError(f"{where}: a static dim must be a positive int, got {d!r}")
                if s.seq_dim is not None and not (
                    isinstance(s.seq_dim, int) and 1 <= s.seq_dim < len(s.dims) and isinstance(s.dims[s.seq_dim], str)
                ):
                    raise ExportError(f"{where}: seq_dim must name a dynamic dim after the batch")
        for name, (lo, hi) in self.dynamic_dims.items():
            if not (1 <= lo <= hi) or hi < 2:
                raise ExportError(
                    f"spec: dynamic dim '{name}' range [{lo}, {hi}] must satisfy 1 <= min <= max, max >= 2"
                )

    def example_sizes(self) -> dict[str, int]:
        """A size for each dynamic dim to trace with: 2 for the batch, up to 8 for the others (never 1,
        which torch.export would specialise on)."""
        return {n: min(hi, 2 if n == "batch" else max(lo, 8)) for n, (lo, hi) in self.dynamic_dims.items()}


def check_checkpoint(checkpoint: str | Path | None, family: str) -> Path:
    if checkpoint is None:
        raise ExportError(f"family {family} needs --checkpoint DIR (a Hugging Face model folder)")
    path = Path(checkpoint)
    if not path.is_dir():
        raise ExportError(f"checkpoint folder {path} does not exist")
    if not (path / "config.json").is_file():
        raise ExportError(f"checkpoint folder {path} has no config.json (expected config.json + *.safetensors)")
    if not any(path.glob("*.safetensors")):
        raise ExportError(f"checkpoint folder {path} has no *.safetensors weights")
    return path


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read {path}: {e}") from None


def compute_dtype(dtype: str | torch.dtype) -> torch.dtype:
    name = dtype if isinstance(dtype, str) else _DTYPE_NAMES.get(dtype, str(dtype))
    if name not in _COMPUTE_DTYPES:
        raise ExportError(f"unknown compute dtype '{name}' (one of {', '.join(_COMPUTE_DTYPES)})")
    return DTYPES[name]


def parse_image_size(value: int | str | Sequence[int] | None) -> tuple[int, int] | None:
    """``256`` or ``"256"`` -> (256, 256); ``"256x192"`` or ``(256, 192)`` -> (256, 192) as (H, W)."""
    if value is None:
        return None
    try:
        if isinstance(value, int):
            h = w = value
        elif isinstance(value, str):
            parts = value.lower().split("x")
            if len(parts) == 1:
                h = w = int(parts[0])
            elif len(parts) == 2:
                h, w = int(parts[0]), int(parts[1])
            else:
                raise ValueError
        else:
            h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ExportError(f"image size '{value}' is not N or HxW") from None
    if h < 1 or w < 1:
        raise ExportError(f"image size '{value}' must be positive")
    return h, w


def arch_versions(*packages: str) -> dict[str, str]:
    return {p: importlib.import_module(p).__version__ for p in packages}


class EncoderWrapper(nn.Module):
    """Base of every family: ``forward(*inputs) -> tuple`` in ``spec`` order.

    Attributes:
        family: the manifest's family name.
        spec: inputs, outputs and dynamic dim ranges.
        dtype: the compute dtype.
        options: JSON-serialisable construction options; they are part of the version digest.
    """

    family: ClassVar[str] = ""
    spec: EncoderSpec
    dtype: torch.dtype
    options: dict[str, Any]

    def code_sources(self) -> list[str]:
        """Source code that decides this wrapper's outputs (it is part of the version digest)."""
        return [inspect.getsource(c) for c in type(self).__mro__ if c.__module__.startswith(_PACKAGE)]

    def example_inputs(
        self, sizes: Mapping[str, int] | None = None, seed: int = 0, device: str | torch.device = "cpu"
    ) -> tuple[torch.Tensor, ...]:
        """Inputs to trace and check with: ``sizes`` maps dynamic dim names to sizes (defaults from
        ``spec.example_sizes()``). Floats are uniform in ``example_range`` (default [-1, 1]), integers
        uniform in ``[lo, hi)`` (default [0, 2))."""
        all_sizes = {**self.spec.example_sizes(), **(sizes or {})}
        gen = torch.Generator().manual_seed(seed)
        out = []
        for s in self.spec.inputs:
            shape = [all_sizes[d] if isinstance(d, str) else d for d in s.dims]
            dt = DTYPES[s.dtype]
            if dt.is_floating_point:
                lo, hi = s.example_range or (-1.0, 1.0)
                t = torch.rand(shape, generator=gen) * (hi - lo) + lo
            else:
                lo, hi = s.example_range or (0, 2)
                t = torch.randint(int(lo), int(hi), shape, generator=gen)
            out.append(t.to(dt).to(device))
        return tuple(out)
