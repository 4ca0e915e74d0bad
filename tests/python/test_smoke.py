"""The package imports and its native module matches its Python wrappers."""

import torch

import jit_embedding
from jit_embedding import codec


def test_version_and_roundtrip():
    assert jit_embedding.__version__
    values, meta = codec.decode(codec.encode({"x": torch.ones(2, 2)}, meta={"k": 1}))
    assert torch.equal(values["x"], torch.ones(2, 2))
    assert meta == {"k": 1}
