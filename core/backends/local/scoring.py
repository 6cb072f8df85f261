"""Scoring pairs with any variant: tokenize once, sort by length, cut by token budget, run.

Scoring never goes through ``CrossEncoder.predict``: pairs are tokenized once per call with
the fast tokenizer, sorted by length, cut into batches by a *token budget* (the padded
tokens a batch carries, so short passages travel in big batches and long ones in small), and
handed to the variant's runner. Every variant shares this path, so they differ only in the
arithmetic of the forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossrank.errors import ConfigurationError

#: A runner takes padded int64 (ids, mask, token types or None) and returns float32 logits.
Runner = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], np.ndarray]


@dataclass(frozen=True)
class Encoded:
    """One call's pairs, tokenized once: ragged ids, optional types, and their lengths."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    lengths: np.ndarray


def encode_pairs(
    tokenizer: Any, queries: Sequence[str], texts: Sequence[str], *, max_length: int
) -> Encoded:
    """Tokenize pairs once, unpadded; batches are padded later, each to its own longest."""
    encoded = tokenizer(
        list(queries),
        list(texts),
        padding=False,
        truncation="longest_first",
        max_length=max_length,
    )
    input_ids: list[list[int]] = encoded["input_ids"]
    lengths = np.fromiter((len(ids) for ids in input_ids), dtype=np.int64, count=len(input_ids))
    return Encoded(input_ids, encoded.get("token_type_ids"), lengths)


def pad(
    encoded: Encoded, batch: np.ndarray, pad_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Right-pad one batch to its longest pair."""
    width = int(encoded.lengths[batch].max())
    ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    types = np.zeros((len(batch), width), dtype=np.int64) if encoded.token_type_ids else None
    for row, index in enumerate(batch):
        length = int(encoded.lengths[index])
        ids[row, :length] = encoded.input_ids[index]
        mask[row, :length] = 1
        if types is not None and encoded.token_type_ids is not None:
            types[row, :length] = encoded.token_type_ids[index]
    return ids, mask, types


def plan_batches(
    order: np.ndarray, lengths: np.ndarray, *, batch_size: int, budget: int
) -> list[np.ndarray]:
    """Consecutive slices of the length-sorted order, capped by count and token budget.

    With descending lengths the first pair of a batch is its longest, so the batch's
    padded size is ``count * lengths[first]``; the budget bounds exactly that.
    """
    batches: list[np.ndarray] = []
    start = 0
    total = len(order)
    while start < total:
        longest = int(lengths[order[start]])
        size = max(1, min(batch_size, budget // max(longest, 1)))
        batches.append(order[start : start + size])
        start += size
    return batches


def select_logit(logits: np.ndarray, *, label_index: int | None, model: str) -> np.ndarray:
    """The one logit per pair that means "relevant"."""
    labels = logits.shape[-1]
    if labels == 1:
        return logits[:, 0]
    if label_index is None:
        raise ConfigurationError(
            f"model {model!r} has {labels} output labels; pass label_index= to say "
            "which logit means 'relevant'"
        )
    if not -labels <= label_index < labels:
        raise ConfigurationError(f"label_index {label_index} is out of range for {labels} labels")
    return logits[:, label_index]


def score_encoded(
    runner: Runner,
    encoded: Encoded,
    *,
    pad_id: int,
    batch_size: int,
    budget: int,
    label_index: int | None,
    model: str,
) -> list[float]:
    """Raw scores of every encoded pair, in input order."""
    lengths = encoded.lengths
    order = np.argsort(-lengths, kind="stable")
    scores = np.empty(len(lengths), dtype=np.float64)
    for batch in plan_batches(order, lengths, batch_size=batch_size, budget=budget):
        ids, mask, types = pad(encoded, batch, pad_id)
        scores[batch] = select_logit(runner(ids, mask, types), label_index=label_index, model=model)
    return scores.tolist()  # type: ignore[no-any-return]


def torch_features(
    torch: Any, ids: np.ndarray, mask: np.ndarray, types: np.ndarray | None, device: Any = None
) -> dict[str, Any]:
    """Padded numpy arrays as the keyword tensors a transformers model takes."""
    arrays = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        arrays["token_type_ids"] = types
    tensors = {name: torch.from_numpy(array) for name, array in arrays.items()}
    if device is None:
        return tensors
    return {name: tensor.to(device) for name, tensor in tensors.items()}
