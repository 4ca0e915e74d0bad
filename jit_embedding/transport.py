"""Lossy transport of float outputs: asking for it and undoing it (docs/transport.md).

A client may ask the server to narrow the float outputs it sends back: to bf16 or fp16, or to fp8
(e4m3fn) or int8 codes with float32 scales. The server quantizes (``csrc/ops/transport.h``), lists
each narrowed output in the response meta ``transport`` as ``{"mode", "dtype", "scales"}``, and the
client restores every such output to its dtype with ``restore()``, on whatever device the caller
wants the embedding on: the CPU, or the training GPU (the codes cross PCIe, not the floats).

Modes (``MODES``), per output:

===============  ===========================  ==========================  =====================
mode             values                       scales                      rel. RMS (Gaussian)
===============  ===========================  ==========================  =====================
``exact``        unchanged                    none                        0
``bf16``         bfloat16                     none                        about 0.17%
``fp16``         float16                      none                        about 0.02%
``fp8_rowwise``  float8_e4m3fn                one per last-dim row        about 2.6%
``fp8_tensor``   float8_e4m3fn                one per sample              depends on the spread
``int8_rowwise`` int8                         one per last-dim row        about 0.7%
===============  ===========================  ==========================  =====================

``restore`` computes ``float32(code) * scale`` in float32 and rounds once to the output's dtype,
which is bit for bit what the C++ client (``submit_many``) and the server's reference give, except
that a NaN restored on a GPU is the GPU's canonical NaN (its payload and sign are not part of the
contract).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Union

import torch

__all__ = ["MODES", "TransportSpec", "normalize", "restore"]

#: Every mode name the server accepts.
MODES = ("exact", "bf16", "fp16", "fp8_rowwise", "fp8_tensor", "int8_rowwise")
_SCALED = ("fp8_rowwise", "fp8_tensor", "int8_rowwise")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_WIRE = {
    "bf16": (torch.bfloat16,),
    "fp16": (torch.float16,),
    "fp8_rowwise": (torch.float8_e4m3fn,),
    "fp8_tensor": (torch.float8_e4m3fn,),
    "int8_rowwise": (torch.int8,),
}

#: Every e4m3fn code's float32 value (exact), for restoring on the CPU.
_E4M3_TABLE = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()

#: A mode for every float output, or output name -> mode (key ``"*"``: every float output not named).
TransportSpec = Union[str, Mapping[str, str], None]


def normalize(transport: TransportSpec) -> dict[str, str]:
    """The request meta's ``transport`` map for a user's spec: ``{}`` for None or ``"exact"``.

    Raises:
        ValueError: an unknown mode name.
        TypeError: a spec that is neither a str nor a mapping of str to str.
    """
    if transport is None:
        return {}
    if isinstance(transport, str):
        transport = {"*": transport}
    if not isinstance(transport, Mapping):
        raise TypeError(f"transport must be a mode name or a mapping output -> mode, not {type(transport).__name__}")
    out = {}
    for name, mode in transport.items():
        if not isinstance(name, str) or not isinstance(mode, str):
            raise TypeError(f"transport must map output names to mode names, got {name!r}: {mode!r}")
        if mode not in MODES:
            raise ValueError(f"transport mode {mode!r} for {name!r} is not one of {', '.join(MODES)}")
        out[name] = mode
    if all(m == "exact" for m in out.values()):
        return {}
    return out


def restore(
    outputs: dict[str, Any], carried: Mapping[str, Mapping[str, str]] | None, device: Any = None
) -> dict[str, Any]:
    """Restores the outputs a response carried lossy, in place of their codes, and drops the scales.

    Args:
        outputs: the response's tensors by name (values ``[batch, ...]`` and scale entries).
        carried: the response meta's ``transport`` map, output -> ``{"mode", "dtype", "scales"}``;
            None or empty: nothing to do.
        device: where the restored outputs go (``"cuda"``: codes and scales move there first, so
            the narrow form crosses the bus); None: where they are (the CPU).

    Returns:
        ``outputs`` with every carried output ``[batch, ...]`` back in its dtype and the scale
        entries removed; other tensors moved to ``device`` when one is given.

    Raises:
        ValueError: an answer whose codes or scales do not fit its mode (a malformed response).
    """
    carried = carried or {}
    scale_names = {c.get("scales") for c in carried.values() if c.get("scales")}
    out = {}
    for name, value in outputs.items():
        if name in scale_names:
            continue
        if name in carried:
            value = _restore_one(name, value, outputs, carried[name], device)
        elif device is not None and isinstance(value, torch.Tensor):
            value = value.to(device)
        out[name] = value
    return out


def _restore_one(name: str, values: Any, outputs: Mapping[str, Any], how: Mapping[str, str], device: Any):
    mode, dtype_name, scales_name = how.get("mode"), how.get("dtype"), how.get("scales")
    if mode not in _WIRE or dtype_name not in _DTYPES:
        raise ValueError(f"transport of '{name}': unknown mode {mode!r} or dtype {dtype_name!r}")
    if not isinstance(values, torch.Tensor) or values.dtype not in _WIRE[mode] or values.dim() < 1:
        raise ValueError(f"transport {mode} of '{name}': values must be {_WIRE[mode][0]} [batch, ...]")
    dtype = _DTYPES[dtype_name]
    if device is not None:
        values = values.to(device)
    if mode not in _SCALED:
        return values.to(dtype)
    scales = outputs.get(scales_name) if scales_name else None
    if mode == "fp8_tensor":
        want = (values.shape[0],)
    else:
        want = tuple(values.shape[:-1]) if values.dim() > 1 else tuple(values.shape)
    if not isinstance(scales, torch.Tensor) or scales.dtype != torch.float32 or tuple(scales.shape) != want:
        raise ValueError(f"transport {mode} of '{name}': scales '{scales_name}' must be float32 {list(want)}")
    if device is not None:
        scales = scales.to(device)
    if mode == "fp8_tensor":
        scales = scales.reshape((-1,) + (1,) * (values.dim() - 1))
    elif values.dim() > 1:
        scales = scales.unsqueeze(-1)
    return (_widen(values) * scales).to(dtype)


def _widen(values: torch.Tensor) -> torch.Tensor:
    """Codes as exact float32 values. On the CPU, fp8 goes through a 256-entry table, about 3x
    faster than torch's element-wise conversion there, with the same bits."""
    if values.dtype != torch.float8_e4m3fn or values.device.type != "cpu":
        return values.to(torch.float32)
    flat = values.contiguous().view(torch.uint8).reshape(-1).to(torch.int32)
    return _E4M3_TABLE.index_select(0, flat).view(values.shape)
