"""The token families: ``clip_text`` (CLIPTextModel), ``t5`` (T5EncoderModel) and ``minilm`` (a
sentence-transformers folder on a BertModel). Inputs are ``input_ids`` and ``attention_mask``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from jit_embedding.families.base import (
    EncoderSpec,
    EncoderWrapper,
    ExportError,
    TensorSpec,
    arch_versions,
    check_checkpoint,
    compute_dtype,
    dtype_name,
    read_json,
)


def _token_inputs(max_seq: int, vocab_size: int) -> list[TensorSpec]:
    return [
        TensorSpec("input_ids", "int64", ("batch", "seq"), seq_dim=1, pad_value=0, example_range=(1, vocab_size)),
        TensorSpec("attention_mask", "int64", ("batch", "seq"), seq_dim=1, pad_value=0),
    ]


class _TextEncoder(EncoderWrapper):
    """Shared by the token families: example inputs are right-padded batches (row i keeps
    ``seq - i`` tokens, at least 1) whose padding holds pad_value 0 and mask 0, as the server sends."""

    def example_inputs(self, sizes=None, seed: int = 0, device="cpu"):
        all_sizes = {**self.spec.example_sizes(), **(sizes or {})}
        batch, seq = all_sizes["batch"], all_sizes["seq"]
        lo, hi = self.spec.inputs[0].example_range
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(int(lo), int(hi), (batch, seq), generator=gen)
        lengths = torch.clamp(seq - torch.arange(batch), min=1)
        mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
        ids = ids * mask
        eos = getattr(self, "eos_token_id", None)
        if eos is not None:
            ids[torch.arange(batch), lengths - 1] = eos
        return ids.to(device), mask.to(device)

    def _open_checkpoint(self, checkpoint: str | Path, model_types: tuple[str, ...], needs: str) -> Path:
        """The checkpoint folder, checked to hold one of ``model_types`` (config.json's model_type)."""
        path = check_checkpoint(checkpoint, self.family)
        model_type = read_json(path / "config.json").get("model_type")
        if model_type not in model_types:
            raise ExportError(f"checkpoint {path} is a {model_type!r} model, family {self.family} needs {needs}")
        return path

    def _text_spec(self, max_seq_len: int | None, default_max: int, hard_max: int | None, max_batch_size: int):
        max_seq = default_max if max_seq_len is None else int(max_seq_len)
        if hard_max is not None and max_seq > hard_max:
            raise ExportError(f"--max-seq-len {max_seq} exceeds this {self.family} checkpoint's limit {hard_max}")
        if max_seq < 2:
            raise ExportError(f"--max-seq-len must be at least 2, got {max_seq}")
        return max_seq, {"batch": (1, int(max_batch_size)), "seq": (1, max_seq)}


class ClipTextEncoder(_TextEncoder):
    """transformers ``CLIPTextModel``: ``input_ids``, ``attention_mask`` [B, S] int64 ->
    ``last_hidden_state`` [B, S, D] and ``pooled`` [B, D] (the model's pooler_output, the hidden state
    at each row's end-of-text token). S is at most ``max_position_embeddings`` (77 for CLIP)."""

    family = "clip_text"

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        dtype: str | torch.dtype = "float32",
        max_batch_size: int = 256,
        max_seq_len: int | None = None,
    ):
        super().__init__()
        self.dtype = compute_dtype(dtype)
        path = self._open_checkpoint(checkpoint, ("clip", "clip_text_model"), "a CLIP checkpoint")
        from transformers import CLIPTextConfig, CLIPTextModel

        config = CLIPTextConfig.from_pretrained(path, local_files_only=True)
        model = CLIPTextModel.from_pretrained(
            path,
            config=config,
            dtype=self.dtype,
            attn_implementation="sdpa",
            use_safetensors=True,
            local_files_only=True,
        )
        self.model = model.eval().requires_grad_(False)
        cfg = model.config
        self.eos_token_id = int(cfg.eos_token_id)
        max_seq, dyn = self._text_spec(
            max_seq_len, cfg.max_position_embeddings, cfg.max_position_embeddings, max_batch_size
        )
        out_dtype = dtype_name(self.dtype)
        self.options = {
            "max_seq_len": max_seq,
            "dtype": out_dtype,
            "attn_implementation": "sdpa",
            "arch": {"class": "CLIPTextModel", **arch_versions("transformers")},
        }
        self.spec = EncoderSpec(
            inputs=_token_inputs(max_seq, cfg.vocab_size),
            outputs=[
                TensorSpec("last_hidden_state", out_dtype, ("batch", "seq", cfg.hidden_size), seq_dim=1),
                TensorSpec("pooled", out_dtype, ("batch", cfg.hidden_size)),
            ],
            dynamic_dims=dyn,
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state, out.pooler_output


class T5Encoder(_TextEncoder):
    """transformers ``T5EncoderModel``: ``input_ids``, ``attention_mask`` [B, S] int64 ->
    ``last_hidden_state`` [B, S, D]. Runs in float32 or bfloat16; float16 is refused because T5's
    activations overflow it. S defaults to at most 512 (T5 has relative positions; raise it with
    ``max_seq_len``)."""

    family = "t5"
    DEFAULT_MAX_SEQ = 512

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        dtype: str | torch.dtype = "float32",
        max_batch_size: int = 256,
        max_seq_len: int | None = None,
    ):
        super().__init__()
        self.dtype = compute_dtype(dtype)
        if self.dtype == torch.float16:
            raise ExportError(
                "family t5 cannot run in float16: T5's activations overflow float16 (inf/NaN); use float32 or bfloat16"
            )
        path = self._open_checkpoint(checkpoint, ("t5", "umt5", "mt5"), "a T5 checkpoint")
        from transformers import T5EncoderModel

        model = T5EncoderModel.from_pretrained(
            path, dtype=self.dtype, attn_implementation="sdpa", use_safetensors=True, local_files_only=True
        )
        self.model = model.eval().requires_grad_(False)
        cfg = model.config
        max_seq, dyn = self._text_spec(max_seq_len, self.DEFAULT_MAX_SEQ, None, max_batch_size)
        out_dtype = dtype_name(self.dtype)
        self.eos_token_id = cfg.eos_token_id
        self.options = {
            "max_seq_len": max_seq,
            "dtype": out_dtype,
            "attn_implementation": "sdpa",
            "arch": {"class": "T5EncoderModel", **arch_versions("transformers")},
        }
        self.spec = EncoderSpec(
            inputs=_token_inputs(max_seq, cfg.vocab_size),
            outputs=[TensorSpec("last_hidden_state", out_dtype, ("batch", "seq", cfg.d_model), seq_dim=1)],
            dynamic_dims=dyn,
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state,)


class MiniLMEncoder(_TextEncoder):
    """A sentence-transformers folder on a BERT checkpoint (all-MiniLM-L6-v2's layout): BertModel,
    then mean pooling over the attention mask, then L2 normalisation when modules.json lists a
    Normalize module. ``input_ids``, ``attention_mask`` [B, S] int64 -> ``embedding`` [B, D] float32
    (pooling and normalisation run in float32 whatever the compute dtype). token_type_ids are zeros.
    S defaults to sentence_bert_config.json's max_seq_length."""

    family = "minilm"

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        dtype: str | torch.dtype = "float32",
        max_batch_size: int = 256,
        max_seq_len: int | None = None,
    ):
        super().__init__()
        self.dtype = compute_dtype(dtype)
        path = self._open_checkpoint(checkpoint, ("bert",), "a BERT")
        if not (path / "modules.json").is_file():
            raise ExportError(
                f"checkpoint {path} has no modules.json (family minilm reads a sentence-transformers folder)"
            )
        modules = read_json(path / "modules.json")
        kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
        if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]):
            raise ExportError(
                f"checkpoint {path}: modules.json lists {kinds}; minilm reads Transformer, Pooling[, Normalize]"
            )
        pooling_dir = next(m.get("path", "") for m in modules if m.get("type", "").endswith(".Pooling"))
        pooling = read_json(path / pooling_dir / "config.json")
        modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v is True)
        if modes != ["pooling_mode_mean_tokens"]:
            raise ExportError(f"checkpoint {path}: pooling {modes}; family minilm supports mean pooling only")
        st_max = None
        if (path / "sentence_bert_config.json").is_file():
            st_max = read_json(path / "sentence_bert_config.json").get("max_seq_length")
        self.normalize = "Normalize" in kinds
        from transformers import BertModel

        model = BertModel.from_pretrained(
            path, dtype=self.dtype, add_pooling_layer=False, attn_implementation="sdpa", use_safetensors=True,
            local_files_only=True,
        )  # fmt: skip
        self.model = model.eval().requires_grad_(False)
        cfg = model.config
        hard_max = cfg.max_position_embeddings
        max_seq, dyn = self._text_spec(max_seq_len, min(st_max or hard_max, hard_max), hard_max, max_batch_size)
        self.options = {
            "max_seq_len": max_seq,
            "dtype": dtype_name(self.dtype),
            "pooling": "mean",
            "normalize": self.normalize,
            "attn_implementation": "sdpa",
            "arch": {"class": "BertModel", **arch_versions("transformers")},
        }
        self.spec = EncoderSpec(
            inputs=_token_inputs(max_seq, cfg.vocab_size),
            outputs=[TensorSpec("embedding", "float32", ("batch", cfg.hidden_size))],
            dynamic_dims=dyn,
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor]:
        hidden = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
        ).last_hidden_state.float()
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        # Mean over the real tokens only; the clamp keeps an all-padding row finite (zeros).
        mean = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        if self.normalize:
            mean = nn.functional.normalize(mean, p=2.0, dim=1)
        return (mean,)
