"""A base dataset and prep functions for the DataLoader tests. Module level, so spawn workers can
unpickle them."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

WIDTH = 16
VOCAB = 50


class Numbers(Dataset):
    """Sample i: {"idx": i, "x": a [WIDTH] float vector, "ids": 1 + i % 7 token ids in [1, VOCAB)},
    deterministic by index."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        gen = torch.Generator().manual_seed(i)
        return {
            "idx": i,
            "x": torch.randn(WIDTH, generator=gen),
            "ids": torch.randint(1, VOCAB, (1 + i % 7,), generator=gen),
        }


def prep_x(sample: dict) -> dict:
    return {"x": sample["x"]}


def prep_ids(sample: dict) -> dict:
    return {"ids": sample["ids"]}


def identity_collate(batch: list) -> list:
    return batch
