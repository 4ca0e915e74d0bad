"""Shared helpers for the codec tests: deterministic tensors of every wire dtype and bit-exact comparison."""

from __future__ import annotations

import numpy as np
import torch

from jit_embedding import codec

ITEMSIZE = {name: torch.empty(0, dtype=dt).element_size() for name, dt in codec.DTYPES.items()}
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float8_e4m3fn")
# NumPy has these; bfloat16 and float8 it does not.
NUMPY_DTYPES = ("float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool")


def raw_bytes(t: torch.Tensor) -> bytes:
    """The tensor's elements in C order, as the wire format stores them (little-endian host)."""
    fresh = torch.empty(t.shape, dtype=t.dtype)  # default strides, even where torch calls `t` contiguous
    fresh.copy_(t.detach())
    return fresh.reshape(-1).view(torch.uint8).numpy().tobytes()


def make_tensor(dtype: str, shape, seed: int = 0, alphabet: int = 256) -> torch.Tensor:
    """A contiguous tensor of `dtype` whose bytes are drawn from `alphabet` byte values.

    alphabet=256 gives random bit patterns (NaNs, infinities, subnormals included), which zstd cannot
    compress; a small alphabet gives data it can. bool tensors always hold 0/1.
    """
    shape = tuple(shape)
    n = int(np.prod(shape, dtype=np.int64)) * ITEMSIZE[dtype]
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        alphabet = 2
    data = rng.integers(0, alphabet, size=n, dtype=np.uint8)
    t = torch.empty(shape, dtype=codec.DTYPES[dtype])
    if n:
        t.reshape(-1).view(torch.uint8).copy_(torch.from_numpy(data))
    return t


def as_bits(t: torch.Tensor) -> torch.Tensor:
    """A same-shape integer view, so that NaN payloads and -0.0 compare exactly."""
    if t.dtype == torch.bool:
        return t
    int_dtype = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.contiguous().view(int_dtype)


def assert_bit_equal(got: torch.Tensor, want: torch.Tensor) -> None:
    assert isinstance(got, torch.Tensor), type(got)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert tuple(got.shape) == tuple(want.shape), (got.shape, want.shape)
    assert torch.equal(as_bits(got), as_bits(want))


def roundtrip(values, **kw):
    frame = codec.encode(values, **kw)
    return (*codec.decode(frame), frame)


def large_values() -> dict:
    """Compressible payloads of a few MiB, where chunking choices matter."""
    return {
        "a": (torch.arange(3 << 18) % 7).float(),  # 3 MiB
        "b": (torch.arange(5 << 19) % 11).to(torch.bfloat16),  # 5 MiB
        "c": (torch.arange(700_000) % 3).to(torch.int8),
    }
