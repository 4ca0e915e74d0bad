"""jit-embedding: frozen encoders (VAE, CLIP, T5) served to training jobs just in time.

    from jit_embedding import EmbeddingClient, codec
    client = EmbeddingClient(endpoints=["http://127.0.0.1:8000"])
    outputs, meta = client.encode("clip", {"input_ids": ids, "attention_mask": mask})

Modules: ``codec`` (the wire format), ``client`` (EmbeddingClient), ``data`` (DataLoader wrappers),
``export`` (artifact export), ``serve`` (the server hosted by Python).
"""

from jit_embedding import codec
from jit_embedding.client import ClientError, EmbeddingClient
from jit_embedding.codec import CodecError, CodecLimits

__version__ = "0.1.0"
__all__ = ["ClientError", "CodecError", "CodecLimits", "EmbeddingClient", "codec", "__version__"]
