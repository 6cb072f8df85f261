"""A cross-encoder served from a ``crossrank optimize`` artifact with ONNX Runtime alone.

Importing sentence-transformers costs seconds and hundreds of MB before the first score; a
reranker that only runs a ready ONNX graph needs none of it. This backend reads an artifact
folder (``model.onnx``, fp32 or int8, with ``tokenizer.json`` and its settings, see
:mod:`crossrank.backends.lite_artifact`) with ``onnxruntime``, the ``tokenizers`` library and
numpy: ``pip install 'crossrank[onnx-lite]'``, no torch, no transformers.

It scores as the local backend's ONNX variants do (same artifact, same tokenization, pairs
sorted by length and cut into batches by a token budget, raw logits out), offers the
engine's windowing, and pickles: a copy carries only its options and opens the session
lazily, shared through the model registry.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossrank.backends.base import BaseBackend
from crossrank.backends.lite_artifact import LiteFiles, artifact_folder, read_lite_files
from crossrank.errors import ConfigurationError, ModelLoadError, missing_dependency
from crossrank.registry import ModelRegistry, default_registry

#: Padded tokens per forward pass on a CPU, as the local backend's default.
DEFAULT_TOKEN_BUDGET = 1024

#: What a copy or pickle carries; the session and tokenizers are loaded again on demand.
_CONFIG_STATE = (
    "model",
    "batch_size",
    "token_budget",
    "num_threads",
    "max_length",
    "label_index",
    "_registry",
)


@dataclass(frozen=True)
class _Loaded:
    """One artifact ready to score, shared by every backend on a registry."""

    files: LiteFiles
    session: Any
    input_names: frozenset[str]
    #: Pairs: truncation longest-first to ``max_length``, no padding (batches pad themselves).
    pair_tokenizer: Any
    max_length: int
    pair_special_tokens: int


class OnnxLiteBackend(BaseBackend):
    """Scores (query, text) pairs with an ONNX cross-encoder; returns raw logits."""

    name = "onnx-lite"

    def __init__(
        self,
        model: str | Path,
        *,
        batch_size: int = 32,
        token_budget: int | None = None,
        num_threads: int | None = None,
        max_length: int | None = None,
        label_index: int | None = None,
        registry: ModelRegistry | None = None,
    ) -> None:
        """``model`` is an artifact folder built by ``crossrank optimize`` (or its
        ``model.onnx``). ``batch_size`` and ``token_budget`` cap pairs and padded tokens per
        pass; ``num_threads`` sets ONNX Runtime's intra-op threads (default: its own choice).
        ``max_length`` and ``label_index`` override what the artifact's settings say, for an
        artifact built with ``--max-length`` or a multi-label head.
        """
        self.model = str(artifact_folder(model))
        self.batch_size = _positive("batch_size", batch_size)
        self.token_budget = _optional_positive("token_budget", token_budget)
        self.num_threads = _optional_positive("num_threads", num_threads)
        self.max_length = _optional_positive("max_length", max_length)
        if label_index is not None and (
            isinstance(label_index, bool) or not isinstance(label_index, int)
        ):
            raise ConfigurationError(f"label_index must be an integer or None, got {label_index!r}")
        self.label_index = label_index
        self._registry = registry or default_registry
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._loaded: _Loaded | None = None
        self._text: Any = None
        self._load_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _CONFIG_STATE}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def __repr__(self) -> str:
        return f"OnnxLiteBackend(model={self.model!r}, batch_size={self.batch_size})"

    @property
    def model_name(self) -> str:
        return self.model

    def cache_identity(self) -> tuple[Any, ...]:
        """Scores of two lite backends are interchangeable when they read the same bytes."""
        loaded = self.load()
        stat = loaded.files.model_file.stat()
        return (
            self.name,
            self.model,
            stat.st_size,
            stat.st_mtime_ns,
            loaded.max_length,
            self._label(),
        )

    # -- loading --------------------------------------------------------------------------------

    def load(self) -> _Loaded:
        """The shared session and tokenizers, loaded on first use; call it to pay up front."""
        loaded = self._loaded
        if loaded is None:
            with self._load_lock:
                if self._loaded is None:
                    files = read_lite_files(self.model)
                    stat = files.model_file.stat()
                    key = (
                        "onnx-lite",
                        str(files.model_file.resolve()),
                        stat.st_size,
                        stat.st_mtime_ns,
                        str(files.tokenizer_file),
                        self.num_threads,
                        self.max_length,
                    )
                    self._loaded = self._registry.get_or_load(key, lambda: self._open(files))
                loaded = self._loaded
        return loaded

    def _open(self, files: LiteFiles) -> _Loaded:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise missing_dependency("onnxruntime", "onnx-lite") from exc
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise missing_dependency("tokenizers", "onnx-lite") from exc
        max_length = self.max_length or files.settings.max_length
        pair_tokenizer = _read_tokenizer(Tokenizer, files.tokenizer_file)
        # Configured once here and never again: a tokenizer shared by threads must not change.
        pair_tokenizer.enable_truncation(max_length, strategy="longest_first")
        processor = pair_tokenizer.post_processor
        special = processor.num_special_tokens_to_add(True) if processor is not None else 0
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.num_threads is not None:
            options.intra_op_num_threads = self.num_threads
        # One call's batches run one after another; parallelism lives inside each op.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            session = ort.InferenceSession(
                str(files.model_file), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelLoadError(
                f"could not open ONNX model {str(files.model_file)!r}: {type(exc).__name__}: {exc}"
            ) from exc
        input_names = frozenset(node.name for node in session.get_inputs())
        missing = {"input_ids", "attention_mask"} - input_names
        if missing:
            raise ModelLoadError(
                f"ONNX model {str(files.model_file)!r} lacks the inputs {sorted(missing)}; "
                "it was not exported by `crossrank optimize`"
            )
        return _Loaded(
            files=files,
            session=session,
            input_names=input_names,
            pair_tokenizer=pair_tokenizer,
            max_length=max_length,
            pair_special_tokens=int(special),
        )

    # -- scoring --------------------------------------------------------------------------------

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        return self.score_pairs([query] * len(texts), list(texts))

    def score_pairs(self, queries: Sequence[str], texts: Sequence[str]) -> list[float]:
        """Raw scores of ``(queries[i], texts[i])``; a micro-batcher mixes queries in a pass."""
        if len(queries) != len(texts):
            raise ConfigurationError(
                f"queries and texts differ in length: {len(queries)} vs {len(texts)}"
            )
        if not texts:
            return []
        loaded = self.load()
        encodings = loaded.pair_tokenizer.encode_batch(list(zip(queries, texts, strict=True)))
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        # Longest first, so each batch is padded to its first pair and the budget bounds it.
        order = np.argsort(-lengths, kind="stable")
        budget = self.token_budget or DEFAULT_TOKEN_BUDGET
        scores = np.empty(len(encodings), dtype=np.float64)
        start = 0
        while start < len(order):
            longest = int(lengths[order[start]])
            size = max(1, min(self.batch_size, budget // max(longest, 1)))
            batch = order[start : start + size]
            scores[batch] = self._run(loaded, [encodings[i] for i in batch], longest)
            start += size
        return scores.tolist()  # type: ignore[no-any-return]

    def _run(self, loaded: _Loaded, encodings: list[Any], width: int) -> np.ndarray:
        rows = len(encodings)
        ids = np.full((rows, width), loaded.files.settings.pad_id, dtype=np.int64)
        mask = np.zeros((rows, width), dtype=np.int64)
        types = np.zeros((rows, width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            length = len(encoding.ids)
            ids[row, :length] = encoding.ids
            mask[row, :length] = 1
            types[row, :length] = encoding.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in loaded.input_names:
            feeds["token_type_ids"] = types
        logits = loaded.session.run(None, feeds)[0]
        return self._relevance(np.asarray(logits, dtype=np.float32))

    def _label(self) -> int | None:
        if self.label_index is not None:
            return self.label_index
        return self.load().files.settings.label_index

    def _relevance(self, logits: np.ndarray) -> np.ndarray:
        """The one logit per pair that means "relevant"."""
        labels = logits.shape[-1] if logits.ndim == 2 else 1
        if labels == 1:
            return logits.reshape(-1)
        label_index = self._label()
        if label_index is None:
            raise ConfigurationError(
                f"model {self.model!r} has {labels} output labels; pass label_index= to say "
                "which logit means 'relevant'"
            )
        if not -labels <= label_index < labels:
            raise ConfigurationError(
                f"label_index {label_index} is out of range for {labels} labels"
            )
        return logits[:, label_index]

    # -- windowing (the engine's TokenWindowing) -------------------------------------------------

    def _text_tokenizer(self) -> Any:
        """Single texts, whole (offsets for windows, query lengths): a second tokenizer, so
        the pair one's truncation never changes under a thread; loaded only when windowing
        asks, since a short-lived process that never windows should not pay for it."""
        text = self._text
        if text is None:
            from tokenizers import Tokenizer

            path = self.load().files.tokenizer_file
            key = ("onnx-lite-text-tokenizer", str(path), path.stat().st_mtime_ns)
            text = self._text = self._registry.get_or_load(
                key, lambda: _read_tokenizer(Tokenizer, path)
            )
        return text

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        encoding = self._text_tokenizer().encode(text, add_special_tokens=False)
        return [(int(start), int(end)) for start, end in encoding.offsets]

    def window_token_budget(self, query: str) -> int | None:
        """Tokens of passage that fit beside ``query``; at least half the model's input.

        The floor keeps a query as long as the input from cutting passages into one-token
        windows; such a query is then the side truncation trims, as in the local backend.
        """
        loaded = self.load()
        room = loaded.max_length - loaded.pair_special_tokens
        query_tokens = len(self._text_tokenizer().encode(query, add_special_tokens=False).ids)
        return max(room - query_tokens, room // 2)


def _read_tokenizer(tokenizer_class: Any, path: Path) -> Any:
    """A tokenizer from ``tokenizer.json`` that neither pads nor truncates until told to."""
    try:
        tokenizer = tokenizer_class.from_file(str(path))
    except Exception as exc:
        raise ModelLoadError(
            f"could not read tokenizer {str(path)!r}: {type(exc).__name__}: {exc}"
        ) from exc
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    return value


def _optional_positive(name: str, value: Any) -> int | None:
    return None if value is None else _positive(name, value)
