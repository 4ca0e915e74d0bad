"""Python encoder factories for the client tests (`jit-embedding serve` config entries name them as
``client_encoders:<function>``). Each returns (nn.Module, spec) as jit_embedding.serve documents."""

from __future__ import annotations

import torch


class TokenEmbed(torch.nn.Module):
    """Per-token embeddings and their sum: h[b, t] = E[ids[b, t]], pooled[b] = sum_t h[b, t]. Row 0 of
    E is zero, so right-padding with id 0 changes neither the kept tokens nor the pooled sum."""

    def __init__(self, vocab: int, width: int, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        table = torch.randn(vocab, width, generator=gen)
        table[0] = 0
        self.table = torch.nn.Parameter(table)

    def forward(self, ids: torch.Tensor):
        h = self.table[ids]
        return {"h": h, "pooled": h.sum(dim=1)}


def tokens(vocab: int = 50, width: int = 8, seed: int = 0):
    spec = {
        "inputs": [{"name": "ids", "dtype": "int64", "shape": [-1, -1], "seq_dim": 1}],
        "outputs": [
            {"name": "h", "dtype": "float32", "shape": [-1, -1, width], "seq_dim": 1},
            {"name": "pooled", "dtype": "float32", "shape": [-1, width]},
        ],
    }
    return TokenEmbed(vocab, width, seed), spec


class Argmax(torch.nn.Module):
    """The largest value of each row and where it is: a float and an int64 output."""

    def forward(self, x: torch.Tensor):
        top = x.max(dim=1)
        return {"max": top.values, "index": top.indices}


def argmax():
    spec = {
        "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, -1]}],
        "outputs": [
            {"name": "max", "dtype": "float32", "shape": [-1]},
            {"name": "index", "dtype": "int64", "shape": [-1]},
        ],
    }
    return Argmax(), spec
