"""The ``vae`` family: the encoder half of a diffusers ``AutoencoderKL``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from jit_embedding.families.base import (
    EncoderSpec,
    EncoderWrapper,
    ExportError,
    TensorSpec,
    arch_versions,
    check_checkpoint,
    compute_dtype,
    dtype_name,
    parse_image_size,
    read_json,
)


class VaeEncoder(EncoderWrapper):
    """diffusers ``AutoencoderKL`` encoder: ``pixels`` [B, C, H, W] in [-1, 1] -> ``latent``.

    ``latent = (latent_dist.mean - shift_factor) * scaling_factor`` (shift_factor only when the config
    sets one, as SD3/Flux VAEs do; SD 1.x/SDXL VAEs have none). H and W are static, chosen at export
    (default: the config's sample_size) and must be multiples of the downsampling factor
    ``2 ** (len(block_out_channels) - 1)``. The decoder is not kept.
    """

    family = "vae"

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        dtype: str | torch.dtype = "float32",
        max_batch_size: int = 256,
        image_size: int | str | Sequence[int] | None = None,
    ):
        super().__init__()
        self.dtype = compute_dtype(dtype)
        path = check_checkpoint(checkpoint, self.family)
        config = read_json(path / "config.json")
        if config.get("_class_name") != "AutoencoderKL":
            raise ExportError(
                f"checkpoint {path} is a {config.get('_class_name')!r}, family vae needs an AutoencoderKL"
            )
        if self.dtype == torch.float16 and config.get("force_upcast", True):
            raise ExportError(
                f"checkpoint {path} sets force_upcast: this VAE overflows in float16; export float32 or bfloat16"
            )
        # AutoencoderKL's defaults, for keys the config leaves out: block_out_channels (64,), sample_size 32.
        factor = 2 ** (len(config.get("block_out_channels", [64])) - 1)
        size = parse_image_size(image_size)
        if size is None:
            sample = config.get("sample_size", 32)
            size = tuple(sample) if isinstance(sample, (list, tuple)) else (int(sample), int(sample))
        h, w = size
        if h % factor or w % factor:
            raise ExportError(f"image size {h}x{w} is not a multiple of this VAE's downsampling factor {factor}")
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(path, torch_dtype=self.dtype, use_safetensors=True, local_files_only=True)
        vae.eval().requires_grad_(False)
        # encode() never touches the decoder; dropping it keeps the artifact and the digest to the encoder.
        vae.decoder = None
        vae.post_quant_conv = None
        self.vae = vae
        cfg = vae.config
        self.scaling_factor = float(cfg.scaling_factor)
        self.shift_factor = None if cfg.shift_factor is None else float(cfg.shift_factor)
        self.options = {
            "image_size": [h, w],
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor,
            "dtype": dtype_name(self.dtype),
            "arch": {"class": "AutoencoderKL", **arch_versions("diffusers")},
        }
        out_dtype = dtype_name(self.dtype)
        self.spec = EncoderSpec(
            inputs=[TensorSpec("pixels", out_dtype, ("batch", cfg.in_channels, h, w), example_range=(-1.0, 1.0))],
            outputs=[TensorSpec("latent", out_dtype, ("batch", cfg.latent_channels, h // factor, w // factor))],
            dynamic_dims={"batch": (1, int(max_batch_size))},
        )

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor]:
        latent = self.vae.encode(pixels).latent_dist.mean
        if self.shift_factor is not None:
            latent = latent - self.shift_factor
        return (latent * self.scaling_factor,)
