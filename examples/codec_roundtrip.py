"""Encode the three payloads a training job moves (VAE latents, text embeddings, images), decode
them, and show sizes and speeds. Run it with `make demo` or `python examples/codec_roundtrip.py`."""

import time

import torch

from jit_embedding import codec


def payloads() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(16, 4, 128, 128, generator=g).to(torch.bfloat16)  # [batch, channels, h, w]
    text = torch.randn(16, 256, 4096, generator=g)  # [batch, tokens, dim]
    y = torch.linspace(0, 1, 1024).view(1, 1024, 1, 1)
    x = torch.linspace(0, 1, 1024).view(1, 1, 1024, 1)
    phase = torch.rand(8, 1, 1, 3, generator=g) * 6.28
    smooth = 127 + 100 * torch.sin(6 * x + 4 * y + phase)
    images = (smooth + 8 * torch.randn(8, 1024, 1024, 3, generator=g)).clamp(0, 255).to(torch.uint8)  # [b, h, w, c]
    return {"vae latents": latents, "text embeddings": text, "images": images}


def main() -> None:
    print(f"{'payload':<16} {'mode':<5} {'MB':>7} {'ratio':>6} {'encode GB/s':>12} {'decode GB/s':>12}  exact")
    for name, t in payloads().items():
        raw = t.numel() * t.element_size()
        for mode in ("none", "zstd"):
            t0 = time.perf_counter()
            frame = codec.encode({"x": t}, compression=mode, meta={"payload": name})
            t1 = time.perf_counter()
            values, meta = codec.decode(frame)
            t2 = time.perf_counter()
            exact = torch.equal(values["x"], t) and meta == {"payload": name}
            print(
                f"{name:<16} {mode:<5} {raw / 1e6:>7.1f} {raw / len(frame):>6.2f} "
                f"{raw / (t1 - t0) / 1e9:>12.2f} {raw / (t2 - t1) / 1e9:>12.2f}  {exact}"
            )
            if not exact:
                raise SystemExit(f"round trip of {name} ({mode}) changed the data")


if __name__ == "__main__":
    main()
