"""Python encoder factories for `jit-embedding serve` tests (config entries name them as
``python_encoders:<function>``). Each returns (nn.Module, spec) as jit_embedding.serve documents."""

from __future__ import annotations

import time

import torch


class Affine(torch.nn.Module):
    """y = x @ W + b and the row norms; seeded, so a test can rebuild the same module locally."""

    def __init__(self, width: int, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(width, width, generator=gen))
        self.bias = torch.nn.Parameter(torch.randn(width, generator=gen))

    def forward(self, x: torch.Tensor):
        return {"y": x @ self.weight + self.bias, "norm": x.norm(dim=-1)}


def spec(width: int) -> dict:
    return {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, width]}],
        "outputs": [
            {"name": "y", "dtype": "float32", "shape": [-1, width]},
            {"name": "norm", "dtype": "float32", "shape": [-1]},
        ],
    }


def affine(width: int = 16, seed: int = 0):
    return Affine(width, seed), spec(width)


class Slow(torch.nn.Module):
    """Echoes x * 2 after sleeping: holds the executor so queues fill and deadlines pass."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def forward(self, x: torch.Tensor):
        time.sleep(self.seconds)
        return x * 2, x.norm(dim=-1)


def slow(seconds: float = 0.3, width: int = 4):
    return Slow(seconds), spec(width)


def identity(width: int = 4):
    """Returns its input itself: the server must copy it out before the batch's bytes are freed."""

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x, x.sum(-1)

    return Identity(), spec(width)


def broken():
    return "not a module"


def affine_dims(width: int = 16, seed: int = 0):
    """affine() with its spec in the `export --module` format (dims), which serve also accepts."""
    module, _ = affine(width, seed)
    return module, {
        "inputs": [{"name": "x", "dtype": "float32", "dims": ["batch", width]}],
        "outputs": [
            {"name": "y", "dtype": "float32", "dims": ["batch", width]},
            {"name": "norm", "dtype": "float32", "dims": ["batch"]},
        ],
    }
