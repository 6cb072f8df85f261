"""The windowing capability of a pair cross-encoder: token spans and the room beside a query.

The engine cuts a passage longer than the model's input into windows; it needs each token's
character span and how many passage tokens fit beside the query in one input.
"""

from __future__ import annotations

from typing import Any

from crossrank.backends.local.loading import input_limit

# [CLS] query [SEP] text [SEP]: three special tokens around a pair for BERT-style models.
PAIR_SPECIAL_TOKENS = 3


class PairWindowing:
    """Mixed into a backend with a ``tokenizer`` and a ``source`` (its ``max_length``)."""

    tokenizer: Any
    source: Any

    @property
    def model_max_length(self) -> int:
        if self.source.max_length:
            return int(self.source.max_length)
        return input_limit(self.tokenizer, None)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        # A passage longer than the model input is what windowing is for: verbose=False keeps
        # transformers from warning that running it whole "will result in indexing errors".
        encoded = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        return [tuple(span) for span in encoded["offset_mapping"]]  # type: ignore[misc]

    def window_token_budget(self, query: str) -> int | None:
        """Tokens of passage that fit beside ``query``; at least half the model's input.

        Without the floor, a query as long as the input would cut passages into windows of
        one token each: hundreds of pairs per passage, each read beside a clipped query.
        With it, a long query is the side the tokenizer trims (``longest_first``).
        """
        room = self.model_max_length - PAIR_SPECIAL_TOKENS
        query_tokens = len(
            self.tokenizer(query, add_special_tokens=False, verbose=False)["input_ids"]
        )
        return max(room - query_tokens, room // 2)
