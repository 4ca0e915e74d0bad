"""jit-embedding: frozen encoders (VAE, CLIP, T5) served to training jobs just in time.

The public API grows by layer; today it has the wire codec::

    from jit_embedding import codec, CodecError
"""

from jit_embedding import codec
from jit_embedding.codec import CodecError, CodecLimits

__version__ = "0.1.0"
__all__ = ["CodecError", "CodecLimits", "codec", "__version__"]
