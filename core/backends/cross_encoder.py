"""Local cross-encoder backend on sentence-transformers' ``CrossEncoder``.

sentence-transformers loads the model (any hub id or local path, safetensors preferred,
``trust_remote_code`` off by default); scoring bypasses ``predict`` and drives the underlying
transformers model directly: pairs are tokenized once with the fast tokenizer, sorted by
length so batches carry little padding, and run under ``torch.inference_mode``. Outputs are
raw logits; normalization belongs to the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from crossrank.backends._torch import import_torch, resolve_device, resolve_dtype
from crossrank.backends.base import BaseBackend
from crossrank.errors import ConfigurationError, ModelLoadError, missing_dependency
from crossrank.registry import ModelRegistry, default_registry

DEFAULT_CROSS_ENCODER = "cross-encoder/ms-marco-MiniLM-L-6-v2"

# [CLS] query [SEP] text [SEP]: three special tokens around a pair for BERT-style models.
_PAIR_SPECIAL_TOKENS = 3


def load_cross_encoder(
    model: str,
    *,
    device: str,
    dtype: str | None,
    max_length: int | None,
    revision: str | None,
    trust_remote_code: bool,
    local_files_only: bool,
) -> Any:
    """Load a ``CrossEncoder``; every failure becomes a ``ModelLoadError`` naming the model."""
    try:
        from sentence_transformers import CrossEncoder
    except ImportError as exc:
        raise missing_dependency("sentence-transformers", "local") from exc
    torch = import_torch()
    try:
        cross_encoder = CrossEncoder(
            model,
            device=device,
            max_length=max_length,
            revision=revision,
            trust_remote_code=trust_remote_code,
            local_files_only=local_files_only,
            model_kwargs={"torch_dtype": resolve_dtype(dtype)} if dtype else None,
        )
    except Exception as exc:
        raise ModelLoadError(
            f"could not load cross-encoder {model!r}: {type(exc).__name__}: {exc}"
        ) from exc
    cross_encoder.eval()
    if dtype and dtype != "float32":
        cross_encoder.to(resolve_dtype(dtype))
    del torch
    return cross_encoder


class CrossEncoderBackend(BaseBackend):
    """Scores (query, text) pairs with a local cross-encoder; returns raw logits."""

    name = "cross-encoder"

    def __init__(
        self,
        model: str = DEFAULT_CROSS_ENCODER,
        *,
        device: str = "auto",
        dtype: str | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        token_budget: int | None = None,
        label_index: int | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        local_files_only: bool = False,
        registry: ModelRegistry | None = None,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise ConfigurationError(f"model must be a non-empty id or path, got {model!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be a positive integer, got {batch_size!r}")
        if token_budget is not None and (not isinstance(token_budget, int) or token_budget < 1):
            raise ConfigurationError(
                f"token_budget must be a positive integer, got {token_budget!r}"
            )
        if max_length is not None and (not isinstance(max_length, int) or max_length < 8):
            raise ConfigurationError(f"max_length must be an integer >= 8, got {max_length!r}")
        self.model = model
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_length = max_length
        self.token_budget = token_budget
        self.label_index = label_index
        self.revision = revision
        self.trust_remote_code = trust_remote_code
        self.local_files_only = local_files_only
        self._registry = registry if registry is not None else default_registry
        self._loaded: Any = None

    def __repr__(self) -> str:
        return (
            f"CrossEncoderBackend(model={self.model!r}, device={self.device!r}, "
            f"dtype={self.dtype!r})"
        )

    @property
    def model_name(self) -> str:
        return self.model

    # -- loading ----------------------------------------------------------------------------

    def load(self) -> Any:
        """The shared ``CrossEncoder``, loaded on first use; call it early to pay up front."""
        if self._loaded is None:
            device = resolve_device(self.device)
            key = (
                "cross-encoder",
                self.model,
                self.revision,
                device,
                self.dtype or "float32",
                self.max_length,
                self.trust_remote_code,
            )
            self._loaded = self._registry.get_or_load(
                key,
                lambda: load_cross_encoder(
                    self.model,
                    device=device,
                    dtype=self.dtype,
                    max_length=self.max_length,
                    revision=self.revision,
                    trust_remote_code=self.trust_remote_code,
                    local_files_only=self.local_files_only,
                ),
            )
        return self._loaded

    @property
    def tokenizer(self) -> Any:
        return self.load().tokenizer

    @property
    def model_max_length(self) -> int:
        loaded = self.load()
        return int(self.max_length or loaded.max_length or 512)

    # -- windowing capability ---------------------------------------------------------------

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [tuple(span) for span in encoded["offset_mapping"]]  # type: ignore[misc]

    def window_token_budget(self, query: str) -> int | None:
        query_tokens = len(self.tokenizer(query, add_special_tokens=False)["input_ids"])
        return self.model_max_length - query_tokens - _PAIR_SPECIAL_TOKENS

    # -- scoring ----------------------------------------------------------------------------

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        cross_encoder = self.load()
        torch = import_torch()
        tokenizer = cross_encoder.tokenizer
        encoded = tokenizer(
            [query] * len(texts),
            list(texts),
            padding=False,
            truncation="longest_first",
            max_length=self.model_max_length,
        )
        input_ids: list[list[int]] = encoded["input_ids"]
        token_type_ids: list[list[int]] | None = encoded.get("token_type_ids")
        lengths = np.fromiter((len(ids) for ids in input_ids), dtype=np.int64, count=len(input_ids))
        order = np.argsort(-lengths, kind="stable")
        scores = np.empty(len(texts), dtype=np.float64)
        model = (
            cross_encoder.transformers_model
            if hasattr(cross_encoder, "transformers_model")
            else cross_encoder.model
        )
        device = next(model.parameters()).device
        pad_id = tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for batch in self._batches(order, lengths):
                width = int(lengths[batch[0]])
                ids = np.full((len(batch), width), pad_id, dtype=np.int64)
                mask = np.zeros((len(batch), width), dtype=np.int64)
                types = np.zeros((len(batch), width), dtype=np.int64) if token_type_ids else None
                for row, index in enumerate(batch):
                    length = int(lengths[index])
                    ids[row, :length] = input_ids[index]
                    mask[row, :length] = 1
                    if types is not None and token_type_ids is not None:
                        types[row, :length] = token_type_ids[index]
                features = {
                    "input_ids": torch.from_numpy(ids).to(device),
                    "attention_mask": torch.from_numpy(mask).to(device),
                }
                if types is not None:
                    features["token_type_ids"] = torch.from_numpy(types).to(device)
                logits = model(**features).logits
                scores[batch] = self._select_logit(logits).float().cpu().numpy()
        return scores.tolist()

    def _batches(self, order: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """Consecutive slices of the length-sorted order, capped by count and token budget."""
        batches: list[np.ndarray] = []
        start = 0
        total = len(order)
        while start < total:
            longest = int(lengths[order[start]])
            size = self.batch_size
            if self.token_budget is not None:
                size = max(1, min(size, self.token_budget // max(longest, 1)))
            batches.append(order[start : start + size])
            start += size
        return batches

    def _select_logit(self, logits: Any) -> Any:
        labels = logits.shape[-1]
        if labels == 1:
            return logits[:, 0]
        if self.label_index is None:
            raise ConfigurationError(
                f"model {self.model!r} has {labels} output labels; pass label_index= to say "
                "which logit means 'relevant'"
            )
        if not -labels <= self.label_index < labels:
            raise ConfigurationError(
                f"label_index {self.label_index} is out of range for {labels} labels"
            )
        return logits[:, self.label_index]
