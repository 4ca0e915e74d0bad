"""Transport and preprocessing ops as torch custom ops: fp8/int8 quantization, float casts, and uint8 frames to
normalized planar floats (``kernels/jit_kernels.h``, ``docs/kernels.md``).

Example::

    from jit_embedding import ops
    codes, scales = ops.quantize_fp8_rowwise(embeddings)          # [..., d] -> fp8 [..., d], fp32 [...]
    approx = ops.dequantize_fp8_rowwise(codes, scales, torch.bfloat16)
    pixels = ops.preprocess(frames_u8, mean=0.5, std=0.5, size=(256, 256))   # [n, h, w, 3] -> [n, 3, 256, 256]

Where each op runs, decided by its first tensor's device:

- CPU tensors: the C++ reference (``csrc/ops/ops_ref.h``), one element at a time, with the GIL released.
- CUDA tensors, when :func:`has_cuda_kernels` (``_C`` built against a torch with CUDA, with nvcc): the CUDA kernel,
  enqueued on ``torch.cuda.current_stream()`` of the tensor's device, without synchronizing. It produces the same
  bits as the CPU reference.
- Any other device (CUDA without the kernels, for instance): a pure-torch fallback with the same contract (scale
  rule, saturation, NaN handling, resize formulas) that is NOT bit-exact. Run on the CPU (tests/python/test_ops.py
  does), its quantization codes and scales match the reference; NaN becomes torch's bf16/fp16 NaN pattern rather
  than 0x7FFF; preprocessing differs in the last bit or two (torch's own bilinear weights, and a multiply then an add
  where the contract has one fused multiply-add). On a GPU, torch's kernels may differ further in the last bit.

Every op is registered under the ``jit_embedding`` namespace with ``torch.library.custom_op``
(``torch.ops.jit_embedding.quantize_fp8_rowwise`` and so on) with a fake implementation, so it works under
``torch.compile`` and ``torch.export``; the public functions below reshape and call the registered op, which
validates. With a torch that lacks ``torch.library.custom_op`` (before 2.4) the ops are plain functions. Inputs are
made contiguous; every output is a new contiguous tensor on the input's device. Bad arguments raise TypeError (a
wrong type or dtype) or ValueError (a wrong rank, shape, size, mode or value), naming the op and the argument. The
ops have no gradient.

Quantization contract (``jit_kernels.h``): per row (or over the whole tensor), absmax = max |x| ignoring NaN and Inf;
scale = absmax / qmax in fp32 (qmax = 448 for fp8 e4m3fn, 127 for int8), replaced by 1 when it is 0; code =
encode(x / scale) rounding to nearest even; fp8 saturates to +-448 (Inf too) and maps NaN to 0x7F; int8 clamps to
[-127, 127] and maps NaN to 0. Decoding is float(code) * scale in fp32, rounded to the output dtype.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from jit_embedding import _C

__all__ = [
    "FP8_MAX",
    "INT8_MAX",
    "MAX_CHANNELS",
    "cast",
    "dequantize_fp8_per_tensor",
    "dequantize_fp8_rowwise",
    "dequantize_int8_rowwise",
    "has_cuda_kernels",
    "preprocess",
    "quantize_fp8_per_tensor",
    "quantize_fp8_rowwise",
    "quantize_int8_rowwise",
]

FP8_MAX = 448.0  #: largest finite float8_e4m3fn value: a row's absmax maps onto it
INT8_MAX = 127.0  #: symmetric int8: codes in [-127, 127]
MAX_CHANNELS = 16  #: preprocess: at most this many channels

# kernels::FloatDtype and kernels::ResizeMode values.
_FLOAT_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_MODES = {"none": 0, "bilinear": 1, "area": 2}
_FP8 = torch.float8_e4m3fn
_FP8_CODES = (torch.float8_e4m3fn, torch.uint8)  # decoders also take raw codes viewed as uint8


def has_cuda_kernels() -> bool:
    """Whether CUDA tensors run the CUDA kernels (else they take the pure-torch fallback)."""
    return bool(_C.ops_has_cuda_kernels())


# ---- registration -------------------------------------------------------------------------------------------------

_custom_op = getattr(torch.library, "custom_op", None)


def _custom(name: str) -> Callable:
    """Registers the decorated function as torch.ops.jit_embedding.<name> (or leaves it a plain function)."""

    def wrap(fn: Callable) -> Callable:
        return fn if _custom_op is None else _custom_op(f"jit_embedding::{name}", fn, mutates_args=())

    return wrap


def _fake(op: Callable) -> Callable:
    """Registers the decorated function as op's fake (meta) implementation, when op is a custom op."""
    register = getattr(op, "register_fake", None)
    return register if register is not None else (lambda fn: fn)


# ---- validation (shared by the real and the fake implementations, so torch.compile raises the same errors) --------


def _tensor(op: str, arg: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {arg} must be a torch.Tensor, not {type(t).__name__}")
    return t


def _float_tensor(op: str, arg: str, t: object) -> Tensor:
    t = _tensor(op, arg, t)
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: {arg} must be float32, float16 or bfloat16, not {t.dtype}")
    return t


def _float_dtype(op: str, dtype: object) -> torch.dtype:
    if dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: dtype must be torch.float32, torch.float16 or torch.bfloat16, not {dtype}")
    return dtype


def _check_codes(op: str, codes: object, allowed: tuple, scales: object, rowwise: bool) -> None:
    codes = _tensor(op, "codes", codes)
    scales = _tensor(op, "scales" if rowwise else "scale", scales)
    if codes.dtype not in allowed:
        raise TypeError(f"{op}: codes must be {' or '.join(map(str, allowed))}, not {codes.dtype}")
    if scales.dtype != torch.float32:
        raise TypeError(f"{op}: {'scales' if rowwise else 'scale'} must be float32, not {scales.dtype}")
    if scales.device != codes.device:
        raise ValueError(f"{op}: codes are on {codes.device} but the scales on {scales.device}")
    if rowwise:
        if codes.dim() < 1:
            raise ValueError(f"{op}: codes must have at least one dimension, got a 0-d tensor")
        if scales.shape != codes.shape[:-1]:
            raise ValueError(
                f"{op}: scales must have shape codes.shape[:-1] = {list(codes.shape[:-1])}, got {list(scales.shape)}"
            )
    elif scales.numel() != 1:
        raise ValueError(f"{op}: scale must hold exactly one value, got shape {list(scales.shape)}")


def _rowwise_input(op: str, x: object) -> Tensor:
    x = _float_tensor(op, "x", x)
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have at least one dimension ([..., cols]), got a 0-d tensor")
    return x


# ---- dispatch -----------------------------------------------------------------------------------------------------


def _native(t: Tensor) -> bool:
    """Whether t's device runs the C++ reference (CPU) or the CUDA kernels, rather than the torch fallback."""
    return t.device.type == "cpu" or (t.device.type == "cuda" and has_cuda_kernels())


def _run(t: Tensor, fn: Callable, *args: object) -> None:
    """Calls _C.ops_<fn>(*args, cuda, stream) for t's device: the current stream, with that device made current."""
    if t.device.type == "cpu":
        fn(*args, False, 0)
        return
    with torch.cuda.device(t.device):
        fn(*args, True, torch.cuda.current_stream(t.device).cuda_stream)


def _rows(shape: Sequence[int]) -> int:
    return math.prod(shape[:-1])


# ---- pure-torch fallbacks (same contract, not bit-exact; see the module docstring) ---------------------------------


def _scale_torch(absmax: Tensor, qmax: float) -> Tensor:
    # A tensor divisor: torch would multiply by the reciprocal of a Python scalar on CUDA.
    scale = absmax / torch.full_like(absmax, qmax)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _absmax_torch(xf: Tensor) -> Tensor:
    """max |x| over the last dimension, ignoring NaN and Inf (0 for an empty row)."""
    if xf.shape[-1] == 0:
        return xf.new_zeros(xf.shape[:-1])
    return torch.where(torch.isfinite(xf), xf.abs(), torch.zeros_like(xf)).amax(dim=-1)


def _encode_fp8_torch(q: Tensor) -> Tensor:
    codes = q.clamp(-FP8_MAX, FP8_MAX).to(_FP8).view(torch.uint8)  # saturate first: torch's cast overflows to NaN
    codes = torch.where(torch.isnan(q), torch.full_like(codes, 0x7F), codes)
    return codes.view(_FP8)


def _encode_int8_torch(q: Tensor) -> Tensor:
    q = torch.nan_to_num(q, nan=0.0, posinf=INT8_MAX, neginf=-INT8_MAX)
    return torch.round(q).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)  # torch.round: half to even


def _quantize_rowwise_torch(x: Tensor, qmax: float, encode: Callable) -> tuple[Tensor, Tensor]:
    xf = x.float()
    scales = _scale_torch(_absmax_torch(xf), qmax)
    return encode(xf / scales.unsqueeze(-1)), scales


def _preprocess_torch(frames: Tensor, mean: list, std: list, out_h: int, out_w: int, mode: str, dtype) -> Tensor:
    v = frames.permute(0, 3, 1, 2).float()
    if mode == "bilinear":
        v = F.interpolate(v, size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=False)
    elif mode == "area":
        v = F.adaptive_avg_pool2d(v, (out_h, out_w))
    m = torch.tensor(mean, dtype=torch.float32, device=frames.device)
    s = torch.tensor(std, dtype=torch.float32, device=frames.device)
    a, b = 1.0 / (255.0 * s), -m / s  # kernels::normalize_coefficients
    return (v * a.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)).to(dtype).contiguous()


# ---- the registered ops -------------------------------------------------------------------------------------------


@_custom("quantize_fp8_rowwise")
def _quantize_fp8_rowwise(x: Tensor) -> tuple[Tensor, Tensor]:
    x = _rowwise_input("quantize_fp8_rowwise", x).contiguous()
    if not _native(x):
        return _quantize_rowwise_torch(x, FP8_MAX, _encode_fp8_torch)
    codes = torch.empty(x.shape, dtype=_FP8, device=x.device)
    scales = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    args = (x.data_ptr(), _FLOAT_DTYPES[x.dtype], _rows(x.shape), x.shape[-1], codes.data_ptr(), scales.data_ptr())
    _run(x, _C.ops_quantize_fp8_rowwise, *args)
    return codes, scales


@_fake(_quantize_fp8_rowwise)
def _(x: Tensor) -> tuple[Tensor, Tensor]:
    x = _rowwise_input("quantize_fp8_rowwise", x)
    return x.new_empty(x.shape, dtype=_FP8), x.new_empty(x.shape[:-1], dtype=torch.float32)


@_custom("dequantize_fp8_rowwise")
def _dequantize_fp8_rowwise(codes: Tensor, scales: Tensor, dtype: torch.dtype) -> Tensor:
    _check_codes("dequantize_fp8_rowwise", codes, _FP8_CODES, scales, rowwise=True)
    _float_dtype("dequantize_fp8_rowwise", dtype)
    codes, scales = codes.contiguous(), scales.contiguous()
    if not _native(codes):
        return (codes.view(_FP8).float() * scales.unsqueeze(-1)).to(dtype)
    out = torch.empty(codes.shape, dtype=dtype, device=codes.device)
    args = (codes.data_ptr(), scales.data_ptr(), _rows(codes.shape), codes.shape[-1], out.data_ptr())
    _run(codes, _C.ops_dequantize_fp8_rowwise, *args, _FLOAT_DTYPES[dtype])
    return out


@_fake(_dequantize_fp8_rowwise)
def _(codes: Tensor, scales: Tensor, dtype: torch.dtype) -> Tensor:
    _check_codes("dequantize_fp8_rowwise", codes, _FP8_CODES, scales, rowwise=True)
    return codes.new_empty(codes.shape, dtype=_float_dtype("dequantize_fp8_rowwise", dtype))


@_custom("quantize_fp8_per_tensor")
def _quantize_fp8_per_tensor(x: Tensor) -> tuple[Tensor, Tensor]:
    x = _float_tensor("quantize_fp8_per_tensor", "x", x).contiguous()
    if not _native(x):
        flat = x.reshape(1, -1).float()
        scale = _scale_torch(_absmax_torch(flat), FP8_MAX)
        return _encode_fp8_torch(flat / scale).reshape(x.shape), scale
    codes = torch.empty(x.shape, dtype=_FP8, device=x.device)
    scale = torch.empty(1, dtype=torch.float32, device=x.device)
    args = (x.data_ptr(), _FLOAT_DTYPES[x.dtype], x.numel(), codes.data_ptr(), scale.data_ptr())
    _run(x, _C.ops_quantize_fp8_per_tensor, *args)
    return codes, scale


@_fake(_quantize_fp8_per_tensor)
def _(x: Tensor) -> tuple[Tensor, Tensor]:
    x = _float_tensor("quantize_fp8_per_tensor", "x", x)
    return x.new_empty(x.shape, dtype=_FP8), x.new_empty(1, dtype=torch.float32)


@_custom("dequantize_fp8_per_tensor")
def _dequantize_fp8_per_tensor(codes: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    _check_codes("dequantize_fp8_per_tensor", codes, _FP8_CODES, scale, rowwise=False)
    _float_dtype("dequantize_fp8_per_tensor", dtype)
    codes, scale = codes.contiguous(), scale.contiguous()
    if not _native(codes):
        return (codes.view(_FP8).float() * scale.reshape(())).to(dtype)
    out = torch.empty(codes.shape, dtype=dtype, device=codes.device)
    args = (codes.data_ptr(), scale.data_ptr(), codes.numel(), out.data_ptr(), _FLOAT_DTYPES[dtype])
    _run(codes, _C.ops_dequantize_fp8_per_tensor, *args)
    return out


@_fake(_dequantize_fp8_per_tensor)
def _(codes: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    _check_codes("dequantize_fp8_per_tensor", codes, _FP8_CODES, scale, rowwise=False)
    return codes.new_empty(codes.shape, dtype=_float_dtype("dequantize_fp8_per_tensor", dtype))


@_custom("quantize_int8_rowwise")
def _quantize_int8_rowwise(x: Tensor) -> tuple[Tensor, Tensor]:
    x = _rowwise_input("quantize_int8_rowwise", x).contiguous()
    if not _native(x):
        return _quantize_rowwise_torch(x, INT8_MAX, _encode_int8_torch)
    codes = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    scales = torch.empty(x.shape[:-1], dtype=torch.float32, device=x.device)
    args = (x.data_ptr(), _FLOAT_DTYPES[x.dtype], _rows(x.shape), x.shape[-1], codes.data_ptr(), scales.data_ptr())
    _run(x, _C.ops_quantize_int8_rowwise, *args)
    return codes, scales


@_fake(_quantize_int8_rowwise)
def _(x: Tensor) -> tuple[Tensor, Tensor]:
    x = _rowwise_input("quantize_int8_rowwise", x)
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty(x.shape[:-1], dtype=torch.float32)


@_custom("dequantize_int8_rowwise")
def _dequantize_int8_rowwise(codes: Tensor, scales: Tensor, dtype: torch.dtype) -> Tensor:
    _check_codes("dequantize_int8_rowwise", codes, (torch.int8,), scales, rowwise=True)
    _float_dtype("dequantize_int8_rowwise", dtype)
    codes, scales = codes.contiguous(), scales.contiguous()
    if not _native(codes):
        return (codes.float() * scales.unsqueeze(-1)).to(dtype)
    out = torch.empty(codes.shape, dtype=dtype, device=codes.device)
    args = (codes.data_ptr(), scales.data_ptr(), _rows(codes.shape), codes.shape[-1], out.data_ptr())
    _run(codes, _C.ops_dequantize_int8_rowwise, *args, _FLOAT_DTYPES[dtype])
    return out


@_fake(_dequantize_int8_rowwise)
def _(codes: Tensor, scales: Tensor, dtype: torch.dtype) -> Tensor:
    _check_codes("dequantize_int8_rowwise", codes, (torch.int8,), scales, rowwise=True)
    return codes.new_empty(codes.shape, dtype=_float_dtype("dequantize_int8_rowwise", dtype))


@_custom("cast")
def _cast(x: Tensor, dtype: torch.dtype) -> Tensor:
    x = _float_tensor("cast", "x", x).contiguous()
    _float_dtype("cast", dtype)
    if not _native(x):
        return x.to(dtype, copy=True)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    _run(x, _C.ops_cast_float, x.data_ptr(), _FLOAT_DTYPES[x.dtype], out.data_ptr(), _FLOAT_DTYPES[dtype], x.numel())
    return out


@_fake(_cast)
def _(x: Tensor, dtype: torch.dtype) -> Tensor:
    x = _float_tensor("cast", "x", x)
    return x.new_empty(x.shape, dtype=_float_dtype("cast", dtype))


def _check_preprocess(frames: object, mean: list, std: list, out_h: int, out_w: int, mode: str, dtype) -> Tensor:
    frames = _tensor("preprocess", "frames", frames)
    if frames.dtype != torch.uint8:
        raise TypeError(f"preprocess: frames must be uint8, not {frames.dtype}")
    if frames.dim() != 4:
        raise ValueError(f"preprocess: frames must be [n, h, w, c], got shape {list(frames.shape)}")
    n, h, w, c = frames.shape
    if not 1 <= c <= MAX_CHANNELS:
        raise ValueError(f"preprocess: frames must have 1 to {MAX_CHANNELS} channels (last dimension), got {c}")
    if h < 1 or w < 1:
        raise ValueError(f"preprocess: frames must be at least 1x1, got {h}x{w}")
    for arg, values in (("mean", mean), ("std", std)):
        if len(values) != c:
            raise ValueError(f"preprocess: {arg} must have one value per channel ({c}), got {len(values)}")
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"preprocess: {arg} must be finite, got {list(values)}")
    if any(s == 0 for s in std):
        raise ValueError(f"preprocess: std must not be 0, got {list(std)}")
    if out_h < 1 or out_w < 1:
        raise ValueError(f"preprocess: size must be at least 1x1, got {out_h}x{out_w}")
    if mode not in _MODES:
        raise ValueError(f"preprocess: mode must be one of {sorted(_MODES)}, not {mode!r}")
    if mode == "none" and (out_h, out_w) != (h, w):
        raise ValueError(f"preprocess: mode 'none' cannot resize {h}x{w} to {out_h}x{out_w}")
    _float_dtype("preprocess", dtype)
    return frames


@_custom("preprocess")
def _preprocess(
    frames: Tensor, mean: list[float], std: list[float], out_h: int, out_w: int, mode: str, dtype: torch.dtype
) -> Tensor:
    frames = _check_preprocess(frames, mean, std, out_h, out_w, mode, dtype).contiguous()
    if not _native(frames):
        return _preprocess_torch(frames, mean, std, out_h, out_w, mode, dtype)
    n, h, w, c = frames.shape
    out = torch.empty((n, c, out_h, out_w), dtype=dtype, device=frames.device)
    args = (frames.data_ptr(), n, h, w, c, out_h, out_w, list(mean), list(std), _MODES[mode], _FLOAT_DTYPES[dtype])
    _run(frames, _C.ops_preprocess_nhwc_u8, *args, out.data_ptr())
    return out


@_fake(_preprocess)
def _(frames: Tensor, mean: list[float], std: list[float], out_h: int, out_w: int, mode: str, dtype) -> Tensor:
    frames = _check_preprocess(frames, mean, std, out_h, out_w, mode, dtype)
    return frames.new_empty((frames.shape[0], frames.shape[3], out_h, out_w), dtype=dtype)


# ---- public API ---------------------------------------------------------------------------------------------------


def quantize_fp8_rowwise(x: Tensor) -> tuple[Tensor, Tensor]:
    """Quantizes each row of x to fp8 e4m3fn with one fp32 scale per row.

    x: [..., cols] float32, float16 or bfloat16; the rows are all the leading dimensions together.
    Returns (codes, scales): codes float8_e4m3fn of x's shape, scales float32 of shape x.shape[:-1], such that
    ``codes.float() * scales[..., None]`` approximates x (relative RMS error about 2.6% on Gaussian data).
    Scale rule, saturation and NaN handling: see the module docstring.
    """
    return _quantize_fp8_rowwise(_tensor("quantize_fp8_rowwise", "x", x))


def dequantize_fp8_rowwise(codes: Tensor, scales: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Inverse of :func:`quantize_fp8_rowwise`: ``codes.float() * scales[..., None]`` rounded to dtype.

    codes: [..., cols] float8_e4m3fn (or the same bytes as uint8); scales: float32 of shape codes.shape[:-1], on the
    same device. dtype: float32, float16 or bfloat16. Returns [..., cols] of dtype.
    """
    return _dequantize_fp8_rowwise(*_decode_args("dequantize_fp8_rowwise", codes, scales, dtype))


def quantize_fp8_per_tensor(x: Tensor) -> tuple[Tensor, Tensor]:
    """Quantizes the whole of x to fp8 e4m3fn with a single fp32 scale (absmax over every element / 448).

    x: any shape, float32, float16 or bfloat16. Returns (codes float8_e4m3fn of x's shape, scale float32 [1]).
    One outlier costs every other element precision; prefer the rowwise form for embeddings.
    """
    return _quantize_fp8_per_tensor(_tensor("quantize_fp8_per_tensor", "x", x))


def dequantize_fp8_per_tensor(codes: Tensor, scale: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Inverse of :func:`quantize_fp8_per_tensor`: ``codes.float() * scale`` rounded to dtype.

    codes: any shape, float8_e4m3fn (or uint8); scale: float32 with one element ([1] or []), on the same device.
    Returns codes' shape in dtype (float32, float16 or bfloat16).
    """
    return _dequantize_fp8_per_tensor(*_decode_args("dequantize_fp8_per_tensor", codes, scale, dtype, "scale"))


def quantize_int8_rowwise(x: Tensor) -> tuple[Tensor, Tensor]:
    """Quantizes each row of x to symmetric int8 with one fp32 scale per row (absmax / 127).

    x: [..., cols] float32, float16 or bfloat16. Returns (codes int8 in [-127, 127] of x's shape, scales float32 of
    shape x.shape[:-1]). Every finite element satisfies |x - code * scale| <= scale / 2 (up to fp32 rounding).
    """
    return _quantize_int8_rowwise(_tensor("quantize_int8_rowwise", "x", x))


def dequantize_int8_rowwise(codes: Tensor, scales: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Inverse of :func:`quantize_int8_rowwise`: ``codes.float() * scales[..., None]`` rounded to dtype.

    codes: [..., cols] int8; scales: float32 of shape codes.shape[:-1], on the same device. Returns [..., cols] of
    dtype (float32, float16 or bfloat16).
    """
    return _dequantize_int8_rowwise(*_decode_args("dequantize_int8_rowwise", codes, scales, dtype))


def cast(x: Tensor, dtype: torch.dtype) -> Tensor:
    """x converted to dtype, both among float32, float16 and bfloat16; always a new tensor.

    Narrowing rounds to nearest even (fp16 overflow gives Inf); widening is exact; bf16 <-> fp16 rounds once.
    NaN becomes the canonical 0x7FFF in 16-bit outputs; equal dtypes copy the bits.
    """
    return _cast(_tensor("cast", "x", x), _float_dtype("cast", dtype))


def preprocess(
    frames: Tensor,
    mean: float | Sequence[float],
    std: float | Sequence[float],
    size: int | tuple[int, int] | None = None,
    mode: str = "bilinear",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """uint8 channels-last frames -> normalized planar floats, resized on the way (one fused pass).

    frames: uint8 ``[n, h, w, c]`` (images), ``[h, w, c]`` (one image) or ``[n, t, h, w, c]`` (videos: the t frames
    of each clip are processed as images, then t moves behind c), with 1 <= c <= 16.
    Returns ``[n, c, out_h, out_w]``, ``[c, out_h, out_w]`` or ``[n, c, t, out_h, out_w]`` respectively, contiguous.

    mean, std: per channel (or one value for all), in [0, 1] units like torchvision's Normalize (CLIP: mean
    (0.4815, 0.4578, 0.4082), std (0.2686, 0.2613, 0.2758); a VAE's [-1, 1] input: 0.5 and 0.5); rounded to fp32.
    out = (v / 255 - mean) / std, computed as fma(v, 1 / (255 std), -mean / std) in fp32, rounded to dtype.
    size: (out_h, out_w), an int for a square, or None to keep h x w.
    mode: "bilinear" (interpolate(mode="bilinear", align_corners=False, antialias=False) on the frame as fp32, so
    the fraction is kept where torch's uint8 path would round), "area" (adaptive_avg_pool2d's windows) or "none"
    (no resize; size must be None or (h, w)).
    dtype: float32, float16 or bfloat16.
    """
    frames = _tensor("preprocess", "frames", frames)
    if frames.dim() not in (3, 4, 5):
        raise ValueError(
            f"preprocess: frames must be [h, w, c], [n, h, w, c] or [n, t, h, w, c], got shape {list(frames.shape)}"
        )
    h, w, c = frames.shape[-3:]
    out_h, out_w = _resolve_size(size, h, w)
    mean_c, std_c = _per_channel("mean", mean, c), _per_channel("std", std, c)
    if not isinstance(mode, str):
        raise TypeError(f"preprocess: mode must be a str, not {type(mode).__name__}")
    _float_dtype("preprocess", dtype)
    images = frames.reshape(math.prod(frames.shape[:-3]), h, w, c)  # [h, w, c] -> [1, ...]; [n, t, ...] -> [n * t, ...]
    out = _preprocess(images, mean_c, std_c, out_h, out_w, mode, dtype)
    if frames.dim() == 3:
        return out[0]
    if frames.dim() == 5:
        n, t = frames.shape[:2]
        return out.reshape(n, t, c, out_h, out_w).permute(0, 2, 1, 3, 4).contiguous()
    return out


def _decode_args(op: str, codes: object, scales: object, dtype: object, scales_arg: str = "scales") -> tuple:
    # The dispatcher would reject a non-tensor or a non-dtype with a RuntimeError of its own: name it here instead.
    return _tensor(op, "codes", codes), _tensor(op, scales_arg, scales), _float_dtype(op, dtype)


def _resolve_size(size: object, h: int, w: int) -> tuple[int, int]:
    if size is None:
        return int(h), int(w)
    try:
        if isinstance(size, (tuple, list)) and len(size) == 2:
            return operator.index(size[0]), operator.index(size[1])
        if not isinstance(size, bool):
            side = operator.index(size)  # an int, or anything that is one (a NumPy integer)
            return side, side
    except TypeError:
        pass
    raise TypeError(f"preprocess: size must be None, an int or (out_h, out_w), not {size!r}")


def _per_channel(arg: str, value: object, c: int) -> list[float]:
    if isinstance(value, Tensor):
        value = value.tolist()
    if isinstance(value, (int, float)):
        return [float(value)] * c
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise TypeError(f"preprocess: {arg} must be a float or a sequence of floats, not {type(value).__name__}")
    return [float(v) for v in value]
