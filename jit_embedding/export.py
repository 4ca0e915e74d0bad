"""Export an encoder into an artifact folder (docs/export.md): ``model.pt2`` or ``model.pt`` plus
``manifest.json``.

    from jit_embedding.export import export
    result = export("clip_text", "ckpt/clip-text", "artifacts/clip-text")
    print(result.manifest["version"], result.seconds)

Steps: load the family's wrapper (:mod:`jit_embedding.families`), digest its weights, code and
options into the version, ``torch.export.export`` it with a dynamic batch dim (and a dynamic ``seq``
dim for token inputs) and compile it with AOTInductor (or trace it with TorchScript), load the
artifact back and check it against the eager wrapper on the example inputs and on two other
shapes, then write the artifact and, last, manifest.json.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from jit_embedding.families import EncoderWrapper, ExportError, build_wrapper, dtype_name

__all__ = [
    "ARTIFACT_FILES",
    "CHECK_TOLERANCE",
    "FORMATS",
    "ExportError",
    "ExportResult",
    "LoadedArtifact",
    "build_manifest",
    "compute_version",
    "export",
    "export_wrapper",
    "load_artifact",
    "read_manifest",
]

FORMAT_VERSION = 1
#: Export formats and their artifact file names.
ARTIFACT_FILES = {"aoti": "model.pt2", "torchscript": "model.pt"}
FORMATS = tuple(ARTIFACT_FILES)
#: (rtol, atol) of the post-export check (artifact vs eager wrapper), by compute dtype. Compiled
#: kernels reorder reductions and, for 16-bit dtypes, keep float32 intermediates that eager rounds.
CHECK_TOLERANCE = {"float32": (1e-4, 1e-4), "bfloat16": (5e-2, 5e-2), "float16": (1e-2, 1e-2)}
_DIGEST_SCHEME = b"jit-embedding version digest 1\n"


@dataclass
class ExportResult:
    """What :func:`export` produced: the folder, the manifest it wrote, and seconds per step
    (``load``, ``export`` (torch.export or trace), ``compile`` (AOTInductor), ``check``)."""

    out: Path
    manifest: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def artifact(self) -> Path:
        return self.out / self.manifest["artifact"]


def compute_version(wrapper: EncoderWrapper, export_options: dict[str, Any]) -> str:
    """``"sha256:<hex>"`` over the wrapper's parameters and buffers (name, dtype, shape, bytes, in name
    order), its source code (:meth:`EncoderWrapper.code_sources`) and construction options, and
    ``export_options``. Deterministic: the same weights, code and options give the same string."""
    h = hashlib.sha256(_DIGEST_SCHEME)
    tensors: dict[str, torch.Tensor] = {}
    for name, p in wrapper.named_parameters(remove_duplicate=False):
        tensors[name] = p
    for name, b in wrapper.named_buffers(remove_duplicate=False):
        tensors[name] = b
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous().reshape(-1)
        raw = t.view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
        header = json.dumps([name, str(t.dtype).removeprefix("torch."), list(tensors[name].shape), raw.numel()])
        h.update(header.encode() + b"\n")
        h.update(raw.numpy())
    rest = {"code": wrapper.code_sources(), "options": wrapper.options, "export": export_options}
    h.update(json.dumps(rest, sort_keys=True, separators=(",", ":"), default=str).encode())
    return "sha256:" + h.hexdigest()


def _check_device(device: str) -> torch.device:
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ExportError("--device cuda: this torch sees no CUDA device (torch.cuda.is_available() is False)")
        return torch.device("cuda")
    raise ExportError(f"unknown device '{device}' (cpu or cuda)")


def _dynamic_shapes(wrapper: EncoderWrapper) -> Any:
    """torch.export's dynamic_shapes: one Dim object per named dim, shared by every input that has it."""
    dims = {n: torch.export.Dim(n, min=lo, max=hi) for n, (lo, hi) in wrapper.spec.dynamic_dims.items()}
    per_input = tuple({i: dims[d] for i, d in enumerate(s.dims) if isinstance(d, str)} for s in wrapper.spec.inputs)
    params = list(inspect.signature(wrapper.forward).parameters.values())
    if params and params[0].kind is inspect.Parameter.VAR_POSITIONAL:
        return {params[0].name: per_input}  # forward(*inputs): torch.export sees one tuple argument
    return per_input


def _probe_sizes(wrapper: EncoderWrapper) -> list[dict[str, int]]:
    """The example sizes plus two more shapes, so the check also covers the dynamic dims."""
    sizes = [wrapper.spec.example_sizes()]
    for batch, other in ((1, 3), (3, 13)):
        s = {}
        for n, (lo, hi) in wrapper.spec.dynamic_dims.items():
            s[n] = min(hi, max(lo, batch if n == "batch" else other))
        if s not in sizes:
            sizes.append(s)
    return sizes


@contextlib.contextmanager
def _quiet():
    """Silences tracing chatter (TracerWarning for shape-dependent Python, deprecation notes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def _as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _compare(
    names: list[str], got: Sequence[torch.Tensor], want: Sequence[torch.Tensor], dtype: str, where: str
) -> None:
    rtol, atol = CHECK_TOLERANCE[dtype]
    if len(got) != len(want):
        raise ExportError(
            f"post-export check failed ({where}): the artifact returned {len(got)} outputs, not {len(want)}"
        )
    for spec, g, w in zip(names, got, want):
        if g.shape != w.shape or g.dtype != w.dtype:
            raise ExportError(
                f"post-export check failed ({where}): output '{spec}' is {g.dtype}{list(g.shape)}, "
                f"eager gives {w.dtype}{list(w.shape)}"
            )
        if not torch.allclose(g.float(), w.float(), rtol=rtol, atol=atol):
            diff = (g.float() - w.float()).abs().max().item()
            raise ExportError(
                f"post-export check failed ({where}): output '{spec}' differs from eager by {diff:.3g} "
                f"(rtol {rtol}, atol {atol})"
            )


def build_manifest(
    wrapper: EncoderWrapper, *, format: str = "aoti", device: str = "cpu", name: str | None = None
) -> dict[str, Any]:
    """The manifest.json (docs/export.md) an export of ``wrapper`` writes, version included; exports
    nothing. Two calls on the same weights, code and options give the same manifest."""
    from jit_embedding import __version__

    if format not in ARTIFACT_FILES:
        raise ExportError(f"unknown format '{format}' (one of {', '.join(FORMATS)})")
    dev = _check_device(device)
    spec = wrapper.spec
    spec.check()
    inputs = [s.manifest_entry(True) for s in spec.inputs]
    outputs = [s.manifest_entry(False) for s in spec.outputs]
    dynamic_dims = {n: [lo, hi] for n, (lo, hi) in spec.dynamic_dims.items()}
    max_batch_size = spec.dynamic_dims["batch"][1]
    export_options = {
        "format": format,
        "device": dev.type,
        "dtype": dtype_name(wrapper.dtype),
        "max_batch_size": max_batch_size,
        "dynamic_dims": dynamic_dims,
        "inputs": inputs,
        "outputs": outputs,
    }
    return {
        "format_version": FORMAT_VERSION,
        "name": name or wrapper.family.replace("_", "-"),
        "family": wrapper.family,
        "format": format,
        "artifact": ARTIFACT_FILES[format],
        "inputs": inputs,
        "outputs": outputs,
        "dynamic_dims": dynamic_dims,
        "version": compute_version(wrapper, export_options),
        "torch_version": torch.__version__,
        "device": dev.type,
        "dtype": dtype_name(wrapper.dtype),
        "max_batch_size": max_batch_size,
        "created_by": f"jit-embedding {__version__}",
    }


def export_wrapper(
    wrapper: EncoderWrapper,
    out: str | Path,
    *,
    format: str = "aoti",
    name: str | None = None,
    device: str = "cpu",
    check: bool = True,
) -> ExportResult:
    """Exports an already built wrapper (see :func:`export`, which builds one from a family name)."""
    dev = _check_device(device)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a folder")
    wrapper = wrapper.eval().to(dev)
    manifest = build_manifest(wrapper, format=format, device=device, name=name)
    spec = wrapper.spec
    seconds: dict[str, float] = {}

    example = wrapper.example_inputs(device=dev)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as tmp:
        tmp_artifact = Path(tmp) / ARTIFACT_FILES[format]
        with _quiet():
            with torch.no_grad():
                if format == "aoti":
                    t0 = time.perf_counter()
                    program = torch.export.export(
                        wrapper, example, dynamic_shapes=_dynamic_shapes(wrapper), strict=False
                    )
                    seconds["export"] = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_artifact))
                    seconds["compile"] = time.perf_counter() - t0
                else:
                    t0 = time.perf_counter()
                    traced = torch.jit.trace(wrapper, example, check_trace=False, strict=False)
                    torch.jit.save(traced, str(tmp_artifact))
                    seconds["export"] = time.perf_counter() - t0
            if check:
                t0 = time.perf_counter()
                run = LoadedArtifact(tmp_artifact, format, dev)
                names = [s.name for s in spec.outputs]
                dt = dtype_name(wrapper.dtype)
                for sizes in _probe_sizes(wrapper):
                    x = example if sizes == spec.example_sizes() else wrapper.example_inputs(sizes, seed=1, device=dev)
                    with torch.no_grad():
                        want = _as_tuple(wrapper(*x))
                    _compare(names, run(*x), want, dt, f"shapes {sizes}")
                seconds["check"] = time.perf_counter() - t0
        out.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_artifact, out / ARTIFACT_FILES[format])
        tmp_manifest = Path(tmp) / "manifest.json"
        tmp_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
        # The manifest goes last: a reader that sees it finds its artifact in place.
        os.replace(tmp_manifest, out / "manifest.json")
    return ExportResult(out=out, manifest=manifest, seconds=seconds)


def export(
    family: str | None,
    checkpoint: str | Path | None,
    out: str | Path,
    *,
    module: str | Callable | None = None,
    format: str = "aoti",
    name: str | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    max_batch_size: int = 256,
    max_seq_len: int | None = None,
    image_size: int | str | Sequence[int] | None = None,
    check: bool = True,
) -> ExportResult:
    """Exports one encoder into the folder ``out`` (created; an existing artifact there is replaced).

    Args:
        family: ``vae``, ``clip_text``, ``t5``, ``minilm``, or ``module`` / None with ``module``.
        checkpoint: the Hugging Face model folder (config.json + *.safetensors).
        module: for your own module, ``"pkg.mod:factory"`` or the factory (docs/export.md).
        format: ``aoti`` (model.pt2, default) or ``torchscript`` (model.pt, deprecated upstream).
        name: the manifest's name (default: the family with ``-`` for ``_``).
        device: ``cpu`` or ``cuda``; an AOTInductor artifact runs only on the device kind it was built for.
        dtype: compute dtype ``float32``, ``bfloat16`` (or ``float16``, which t5 refuses).
        max_batch_size: the upper bound of the dynamic batch dim (the lower bound is 1).
        max_seq_len: the upper bound of the ``seq`` dim of token inputs (default: the checkpoint's).
        image_size: ``vae`` only: ``H`` or ``"HxW"`` (default: the config's sample_size).
        check: load the artifact back and compare it with the eager wrapper (CHECK_TOLERANCE).

    Returns:
        The folder, the manifest written there, and seconds per step (``load``, ``export``,
        ``compile``, ``check``).

    Raises:
        ExportError: a problem with the request (named in its one-line message) or a failed check.
    """
    if format not in ARTIFACT_FILES:
        raise ExportError(f"unknown format '{format}' (one of {', '.join(FORMATS)})")
    _check_device(device)
    t0 = time.perf_counter()
    wrapper = build_wrapper(
        family,
        checkpoint,
        module=module,
        dtype=dtype,
        max_batch_size=max_batch_size,
        max_seq_len=max_seq_len,
        image_size=image_size,
    )
    load_s = time.perf_counter() - t0
    result = export_wrapper(wrapper, out, format=format, name=name, device=device, check=check)
    result.seconds = {"load": load_s, **result.seconds}
    return result


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Reads ``folder/manifest.json`` (or the manifest file itself); ExportError when it is missing."""
    path = Path(folder)
    if path.is_dir():
        path = path / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ExportError(f"no manifest at {path}") from None
    except ValueError as e:
        raise ExportError(f"{path}: not valid JSON: {e}") from None


class LoadedArtifact:
    """An artifact loaded in this Python process: ``run(*inputs) -> tuple`` in manifest order.

    AOTInductor packages load with ``torch._inductor.aoti_load_package``, TorchScript modules with
    ``torch.jit.load``; inputs must be on the device the artifact was built for.
    """

    def __init__(self, path: str | Path, format: str, device: str | torch.device = "cpu"):
        self.path = Path(path)
        self.format = format
        if format == "aoti":
            self._fn = torch._inductor.aoti_load_package(str(self.path))
        elif format == "torchscript":
            self._fn = torch.jit.load(str(self.path), map_location=torch.device(device))
        else:
            raise ExportError(f"unknown format '{format}'")

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return _as_tuple(self._fn(*inputs))


def load_artifact(folder: str | Path) -> tuple[LoadedArtifact, dict[str, Any]]:
    """Loads an export folder: returns the runnable artifact and its manifest."""
    manifest = read_manifest(folder)
    folder = Path(folder)
    if not folder.is_dir():
        folder = folder.parent
    return LoadedArtifact(folder / manifest["artifact"], manifest["format"], manifest.get("device", "cpu")), manifest
