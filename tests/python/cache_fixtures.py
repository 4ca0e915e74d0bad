"""Factories for the `jit-embedding cache` tests: datasets and fields for `cache warm --dataset/--fields`
(called without arguments), and a slow token encoder for `jit-embedding serve` configs
(``cache_fixtures:slow_tokens``). Module level, so both the CLI process and the server import them."""

from __future__ import annotations

import time

import client_encoders
import torch
from torch.utils.data import Dataset

VOCAB = 50


class Tokens(Dataset):
    """Sample i: {"idx": i, "ids": 2 + i % 5 token ids in [1, VOCAB)}, deterministic and distinct for
    offset + i < 49 * 49."""

    def __init__(self, n: int, offset: int = 0):
        self.n = n
        self.offset = offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(i)
        gen = torch.Generator().manual_seed(self.offset + i)
        # The first and last ids spell offset + i (< 49 * 49), so no two samples share their inputs.
        k = self.offset + i
        ids = torch.randint(1, VOCAB, (1 + i % 5,), generator=gen)
        ids[0] = 1 + k % (VOCAB - 1)
        return {"idx": i, "ids": torch.cat([ids, torch.tensor([1 + k // (VOCAB - 1) % (VOCAB - 1)])])}


def small() -> Tokens:
    return Tokens(40)


def other() -> Tokens:
    """Samples no other factory here makes."""
    return Tokens(30, offset=500)


def medium() -> Tokens:
    return Tokens(120, offset=1000)


def broken_at_7() -> Dataset:
    class Broken(Tokens):
        def __getitem__(self, i: int) -> dict:
            if i == 7:
                raise KeyError("no such file: sample-7.jpg")
            return super().__getitem__(i)

    return Broken(20, offset=1500)


def not_a_dataset() -> int:
    return 3


def prep_ids(sample: dict) -> dict:
    return {"ids": sample["ids"]}


def fields() -> dict:
    return {"emb": ("tokens", prep_ids)}


def slow_fields() -> dict:
    return {"emb": ("slow_tokens", prep_ids)}


def two_fields() -> dict:
    return {"emb": ("tokens", prep_ids), "emb2": ("tokens2", prep_ids)}


def missing_encoder_fields() -> dict:
    return {"emb": ("no_such_encoder", prep_ids)}


def sample_key(sample: dict) -> str:
    return f"sample-{sample['idx']}"


class SlowTokenEmbed(client_encoders.TokenEmbed):
    """client_encoders.TokenEmbed that sleeps per forward, so a warm run is mid-flight long enough
    to be interrupted."""

    def __init__(self, vocab: int, width: int, seed: int, seconds: float):
        super().__init__(vocab, width, seed)
        self.seconds = seconds

    def forward(self, ids: torch.Tensor):
        time.sleep(self.seconds)
        return super().forward(ids)


def slow_tokens(seconds: float = 0.1, vocab: int = VOCAB, width: int = 8, seed: int = 0):
    _, spec = client_encoders.tokens(vocab, width, seed)
    return SlowTokenEmbed(vocab, width, seed, seconds), spec


def reload_fields() -> dict:
    return {"emb": ("reloadable", prep_ids)}
