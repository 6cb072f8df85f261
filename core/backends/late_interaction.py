"""Late interaction (ColBERT-style) rescoring: MaxSim over per-token embeddings.

A bi-encoder squeezes a passage into one vector before it ever sees the query; late
interaction keeps one vector per token and lets every query token find its best match in the
passage (``sum_q max_d q.d``). It costs more memory than pooled cosine, far less compute than
a cross-encoder, and is the family that ColBERT checkpoints are trained for.

Three ways to get token vectors, chosen with ``encoder=``:

* ``"colbert"`` reads a ColBERT checkpoint in PyLate's layout (``modules.json`` with a
  transformer and ``Dense`` projections, ``config_sentence_transformers.json`` with the
  ``[Q]``/``[D]`` prefixes and lengths) with plain ``transformers``, following PyLate's encoding
  rules: prefix token after ``[CLS]``, queries padded with ``[MASK]`` to ``query_length`` (query
  expansion), punctuation dropped from documents, vectors L2-normalized. It needs only the
  ``local`` extra, so it works beside any sentence-transformers version;
* ``"pylate"`` hands encoding to the ``pylate`` library itself (``late-interaction`` extra),
  which also reads Stanford-format checkpoints (``colbert-ir/colbertv2.0``). PyLate pins an
  exact sentence-transformers release; where that pin cannot be met it fails to load, with a
  message saying so;
* ``"token-embeddings"`` takes the last hidden states of any sentence-transformers encoder
  (the bundled MiniLM by default), normalized per token. That model was trained for pooled
  cosine, not MaxSim, so this is a baseline to measure (``benchmarks/late_interaction.py``),
  not a recommendation.

``"auto"`` picks ``token-embeddings`` for the bundled MiniLM and, for anything else, ``colbert``
when the checkpoint's files say it is a ColBERT model, ``token-embeddings`` otherwise.

The raw score is the MaxSim sum divided by the number of query vectors (``score_scale="mean"``)
so that it lies in [-1, 1] like the embedding backend's cosine and stays well-behaved under the
engine's softmax; ``score_scale="sum"`` gives ColBERT's own (same order, larger spread).
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from crossrank.backends._torch import import_torch, resolve_device
from crossrank.backends.base import BaseBackend
from crossrank.backends.embedding import EMBEDDED_MODEL, shared_sentence_transformer
from crossrank.errors import ConfigurationError, ModelLoadError, missing_dependency
from crossrank.registry import ModelRegistry, default_registry

Encoder = Literal["auto", "colbert", "pylate", "token-embeddings"]
ENCODERS: tuple[str, ...] = ("auto", "colbert", "pylate", "token-embeddings")
ScoreScale = Literal["mean", "sum"]

# PyLate's defaults, used when a checkpoint's config leaves them out.
DEFAULT_QUERY_PREFIX = "[Q] "
DEFAULT_DOCUMENT_PREFIX = "[D] "
DEFAULT_QUERY_LENGTH = 32
DEFAULT_DOCUMENT_LENGTH = 180

# [CLS] [D] text [SEP]: what a document input spends besides its own tokens.
_COLBERT_SPECIAL_TOKENS = 3
# [CLS] text [SEP]
_PLAIN_SPECIAL_TOKENS = 2


# -- MaxSim -------------------------------------------------------------------------------------


def maxsim(
    query: np.ndarray, documents: Sequence[np.ndarray], *, scale: ScoreScale = "mean"
) -> list[float]:
    """Late-interaction scores of one query's token vectors against each document's.

    All documents' vectors are stacked so one matrix product serves the whole list; each
    document's maximum is then taken over its own slice of columns.
    """
    if not documents:
        return []
    query_vectors = np.asarray(query, dtype=np.float32)
    if query_vectors.ndim != 2 or query_vectors.shape[0] == 0:
        raise ValueError("the query must have at least one token vector")
    lengths = [int(np.asarray(document).shape[0]) for document in documents]
    present = [document for document, length in zip(documents, lengths, strict=True) if length]
    scores = [0.0] * len(documents)
    if present:
        stacked = np.concatenate([np.asarray(d, dtype=np.float32) for d in present], axis=0)
        similarity = query_vectors @ stacked.T  # (query tokens, all document tokens)
        offsets = np.cumsum([0] + [length for length in lengths if length])[:-1]
        best = np.maximum.reduceat(similarity, offsets, axis=1)  # (query tokens, documents)
        totals = best.sum(axis=0)
        if scale == "mean":
            totals = totals / query_vectors.shape[0]
        filled = iter(totals.tolist())
        scores = [next(filled) if length else 0.0 for length in lengths]
    return [float(score) for score in scores]


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)  # type: ignore[no-any-return]


# -- encoders -----------------------------------------------------------------------------------


def _offsets(tokenizer: Any, text: str) -> list[tuple[int, int]]:
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [(int(start), int(end)) for start, end in encoded["offset_mapping"]]


class _TokenEmbeddingEncoder:
    """Normalized last hidden states of a sentence-transformers encoder; no projection."""

    kind = "token-embeddings"

    def __init__(self, encoder: Any, batch_size: int) -> None:
        self.encoder = encoder
        self.batch_size = batch_size

    def _encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        outputs = self.encoder.encode(
            list(texts),
            batch_size=self.batch_size,
            output_value="token_embeddings",
            convert_to_numpy=False,
            show_progress_bar=False,
        )
        return [_unit_rows(output.float().cpu().numpy()) for output in outputs]

    encode_queries = _encode
    encode_documents = _encode

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return _offsets(self.encoder.tokenizer, text)

    def document_token_budget(self) -> int:
        return int(self.encoder.max_seq_length) - _PLAIN_SPECIAL_TOKENS


@dataclass
class _Projection:
    weight: Any
    bias: Any | None
    activation: str
    residual: Any | None = None

    def __call__(self, torch: Any, hidden: Any) -> Any:
        projected = torch.nn.functional.linear(hidden, self.weight, self.bias)
        if self.activation == "tanh":
            projected = torch.tanh(projected)
        if self.residual is not None:
            projected = projected + torch.nn.functional.linear(hidden, self.residual)
        return projected


@dataclass
class ColbertSettings:
    """What a PyLate checkpoint's ``config_sentence_transformers.json`` says about encoding."""

    query_prefix: str = DEFAULT_QUERY_PREFIX
    document_prefix: str = DEFAULT_DOCUMENT_PREFIX
    query_length: int = DEFAULT_QUERY_LENGTH
    document_length: int = DEFAULT_DOCUMENT_LENGTH
    do_query_expansion: bool = True
    attend_to_expansion_tokens: bool = False
    skiplist_words: list[str] = field(default_factory=lambda: list(string.punctuation))


class _ColbertEncoder:
    """PyLate's encoding rules on plain ``transformers``: prefixes, expansion, skiplist."""

    kind = "colbert"

    def __init__(
        self,
        tokenizer: Any,
        transformer: Any,
        projections: list[_Projection],
        settings: ColbertSettings,
        *,
        device: str,
        batch_size: int,
    ) -> None:
        self.torch = import_torch()
        self.tokenizer = tokenizer
        self.transformer = transformer
        self.projections = projections
        self.settings = settings
        self.device = device
        self.batch_size = batch_size
        # Query expansion pads with [MASK]: ColBERT learned to use those slots as soft terms.
        if tokenizer.mask_token is not None:
            tokenizer.pad_token = tokenizer.mask_token
        unknown = tokenizer.unk_token_id
        self.prefix_ids = {
            True: self._prefix_id(settings.query_prefix),
            False: self._prefix_id(settings.document_prefix),
        }
        skip = {tokenizer.convert_tokens_to_ids(word) for word in settings.skiplist_words}
        self.skiplist = sorted(token for token in skip if token is not None and token != unknown)

    def _prefix_id(self, prefix: str) -> int | None:
        if not prefix:
            return None
        token_id = self.tokenizer.convert_tokens_to_ids(prefix)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ModelLoadError(
                f"the ColBERT prefix {prefix!r} is not a token of this checkpoint's tokenizer"
            )
        return int(token_id)

    def _encode(self, texts: Sequence[str], *, is_query: bool) -> list[np.ndarray]:
        vectors: list[np.ndarray] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            vectors.extend(self._encode_batch(batch, is_query))
        return vectors

    def _encode_batch(self, texts: list[str], is_query: bool) -> list[np.ndarray]:
        torch = self.torch
        settings = self.settings
        prefix_id = self.prefix_ids[is_query]
        length = settings.query_length if is_query else settings.document_length
        expand = is_query and settings.do_query_expansion
        inputs = self.tokenizer(
            texts,
            max_length=length - 1 if prefix_id is not None else length,
            truncation=True,
            padding="max_length" if expand else True,
            return_tensors="pt",
        )
        if prefix_id is not None:
            inputs["input_ids"] = _insert_after_first(torch, inputs["input_ids"], prefix_id)
            inputs["attention_mask"] = _insert_after_first(torch, inputs["attention_mask"], 1)
            if "token_type_ids" in inputs:
                inputs["token_type_ids"] = _insert_after_first(torch, inputs["token_type_ids"], 0)
        if expand and settings.attend_to_expansion_tokens:
            inputs["attention_mask"].fill_(1)
        inputs = {name: tensor.to(self.device) for name, tensor in inputs.items()}
        with torch.inference_mode():
            hidden = self.transformer(**inputs).last_hidden_state
            for projection in self.projections:
                hidden = projection(torch, hidden)
            hidden = torch.nn.functional.normalize(hidden.float(), p=2, dim=-1)
        if expand:
            keep = torch.ones_like(inputs["input_ids"], dtype=torch.bool)
        elif is_query:
            keep = inputs["attention_mask"].bool()
        else:
            keep = inputs["attention_mask"].bool()
            if self.skiplist:
                skipped = torch.isin(
                    inputs["input_ids"], torch.tensor(self.skiplist, device=self.device)
                )
                keep = keep & ~skipped
        return [hidden[row][keep[row]].cpu().numpy() for row in range(hidden.shape[0])]

    def encode_queries(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self._encode(texts, is_query=True)

    def encode_documents(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self._encode(texts, is_query=False)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return _offsets(self.tokenizer, text)

    def document_token_budget(self) -> int:
        return self.settings.document_length - _COLBERT_SPECIAL_TOKENS


class _PylateEncoder:
    """Encoding delegated to ``pylate.models.ColBERT``."""

    kind = "pylate"

    def __init__(self, model: Any, batch_size: int) -> None:
        self.model = model
        self.batch_size = batch_size

    def _encode(self, texts: Sequence[str], *, is_query: bool) -> list[np.ndarray]:
        outputs = self.model.encode(
            list(texts),
            is_query=is_query,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return [np.asarray(output, dtype=np.float32) for output in outputs]

    def encode_queries(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self._encode(texts, is_query=True)

    def encode_documents(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self._encode(texts, is_query=False)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return _offsets(self.model.tokenizer, text)

    def document_token_budget(self) -> int:
        return int(self.model.document_length) - _COLBERT_SPECIAL_TOKENS


def _insert_after_first(torch: Any, tensor: Any, value: int) -> Any:
    column = torch.full((tensor.shape[0], 1), value, dtype=tensor.dtype)
    return torch.cat([tensor[:, :1], column, tensor[:, 1:]], dim=1)


# -- loading ------------------------------------------------------------------------------------


def _checkpoint_dir(model: str) -> Path:
    """A local folder for ``model``: the path itself, or the hub snapshot (downloaded once)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise missing_dependency("huggingface-hub", "local") from exc
    try:
        return Path(snapshot_download(repo_id=model))
    except Exception as exc:
        raise ModelLoadError(
            f"could not find late-interaction model {model!r}: {type(exc).__name__}: {exc}"
        ) from exc


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not read {path}: {exc}") from exc


def is_colbert_checkpoint(directory: Path) -> bool:
    """Whether a folder is a PyLate-layout ColBERT checkpoint (its files say so)."""
    config = _read_json(directory / "config_sentence_transformers.json")
    if isinstance(config, dict) and config.get("model_type") == "ColBERT":
        return True
    modules = _read_json(directory / "modules.json")
    return isinstance(modules, list) and any(
        isinstance(entry, dict) and str(entry.get("type", "")).startswith("pylate.")
        for entry in modules
    )


def colbert_settings(
    directory: Path, *, query_length: int | None, document_length: int | None
) -> ColbertSettings:
    settings = ColbertSettings()
    config = _read_json(directory / "config_sentence_transformers.json")
    if isinstance(config, dict):
        for name in (
            "query_prefix",
            "document_prefix",
            "query_length",
            "document_length",
            "do_query_expansion",
            "attend_to_expansion_tokens",
            "skiplist_words",
        ):
            if config.get(name) is not None:
                setattr(settings, name, config[name])
    if query_length is not None:
        settings.query_length = query_length
    if document_length is not None:
        settings.document_length = document_length
    if not settings.do_query_expansion:
        settings.attend_to_expansion_tokens = False
    return settings


def _load_weights(directory: Path) -> dict[str, Any]:
    torch = import_torch()
    safetensors_file = directory / "model.safetensors"
    if safetensors_file.is_file():
        from safetensors.torch import load_file

        return dict(load_file(str(safetensors_file)))
    bin_file = directory / "pytorch_model.bin"
    if bin_file.is_file():
        return dict(torch.load(str(bin_file), map_location="cpu", weights_only=True))
    raise ModelLoadError(f"no model.safetensors or pytorch_model.bin in {directory}")


_ACTIVATIONS = {
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
}


def _load_projection(directory: Path, device: str) -> _Projection:
    config = _read_json(directory / "config.json")
    if not isinstance(config, dict):
        raise ModelLoadError(f"Dense module {directory} has no config.json")
    activation_name = str(config.get("activation_function", "torch.nn.modules.linear.Identity"))
    activation = _ACTIVATIONS.get(activation_name)
    if activation is None:
        raise ModelLoadError(
            f"Dense module {directory} uses activation {activation_name!r}; the built-in "
            f"ColBERT reader knows {sorted(_ACTIVATIONS)} (use encoder='pylate' for others)"
        )
    weights = _load_weights(directory)
    if "linear.weight" not in weights:
        raise ModelLoadError(f"Dense module {directory} has no linear.weight")
    return _Projection(
        weight=weights["linear.weight"].to(device),
        bias=weights["linear.bias"].to(device) if "linear.bias" in weights else None,
        activation=activation,
        residual=weights["residual.weight"].to(device) if "residual.weight" in weights else None,
    )


def load_colbert(
    model: str,
    *,
    device: str,
    batch_size: int,
    query_length: int | None,
    document_length: int | None,
    trust_remote_code: bool,
) -> _ColbertEncoder:
    """Read a PyLate-layout checkpoint with ``transformers`` (no PyLate needed)."""
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise missing_dependency("transformers", "local") from exc
    directory = _checkpoint_dir(model)
    modules = _read_json(directory / "modules.json")
    if not isinstance(modules, list) or not modules:
        raise ModelLoadError(
            f"{model!r} has no modules.json: not a PyLate-layout ColBERT checkpoint (a Stanford "
            "checkpoint loads with encoder='pylate')"
        )
    ordered = sorted(modules, key=lambda entry: int(entry.get("idx", 0)))
    transformer_dir = directory / str(ordered[0].get("path", ""))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(transformer_dir))
        transformer = AutoModel.from_pretrained(
            str(transformer_dir), trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        raise ModelLoadError(
            f"could not load ColBERT model {model!r}: {type(exc).__name__}: {exc}"
        ) from exc
    transformer.to(device)
    transformer.eval()
    projections = [
        _load_projection(directory / str(entry.get("path", "")), device)
        for entry in ordered[1:]
        if str(entry.get("type", "")).endswith("Dense")
    ]
    settings = colbert_settings(
        directory, query_length=query_length, document_length=document_length
    )
    return _ColbertEncoder(
        tokenizer, transformer, projections, settings, device=device, batch_size=batch_size
    )


def load_pylate(
    model: str,
    *,
    device: str,
    batch_size: int,
    query_length: int | None,
    document_length: int | None,
    trust_remote_code: bool,
) -> _PylateEncoder:
    try:
        from pylate import models as pylate_models
    except ImportError as exc:
        raise missing_dependency("pylate", "late-interaction") from exc
    try:
        colbert = pylate_models.ColBERT(
            model_name_or_path=model,
            device=device,
            query_length=query_length,
            document_length=document_length,
            trust_remote_code=trust_remote_code,
        )
    except Exception as exc:
        versions = _versions("pylate", "sentence-transformers")
        raise ModelLoadError(
            f"pylate could not load {model!r} ({versions}): {type(exc).__name__}: {exc}; pylate "
            "pins an exact sentence-transformers release, so encoder='colbert' (no pylate) "
            "is the way to read PyLate-layout checkpoints beside another one"
        ) from exc
    colbert.eval()
    return _PylateEncoder(colbert, batch_size)


def _versions(*packages: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in packages:
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} missing")
    return ", ".join(found)


# -- the backend --------------------------------------------------------------------------------


class LateInteractionBackend(BaseBackend):
    """Scores each text by MaxSim of its token vectors against the query's (see module doc)."""

    name = "late-interaction"

    def __init__(
        self,
        model: str = EMBEDDED_MODEL,
        *,
        encoder: Encoder = "auto",
        query_length: int | None = None,
        document_length: int | None = None,
        score_scale: ScoreScale = "mean",
        device: str = "auto",
        batch_size: int = 32,
        trust_remote_code: bool = False,
        registry: ModelRegistry | None = None,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise ConfigurationError(f"model must be a non-empty id or path, got {model!r}")
        if encoder not in ENCODERS:
            raise ConfigurationError(f"unknown encoder {encoder!r}; expected one of {ENCODERS}")
        if score_scale not in ("mean", "sum"):
            raise ConfigurationError(f"score_scale must be 'mean' or 'sum', got {score_scale!r}")
        for option, value in (("query_length", query_length), ("document_length", document_length)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 4
            ):
                raise ConfigurationError(f"{option} must be an integer >= 4, got {value!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be a positive integer, got {batch_size!r}")
        if encoder == "token-embeddings" and (query_length or document_length):
            raise ConfigurationError(
                "query_length and document_length apply to ColBERT encoders, not token-embeddings"
            )
        self.model = model
        self.encoder = encoder
        self.query_length = query_length
        self.document_length = document_length
        self.score_scale: ScoreScale = score_scale
        self.device = device
        self.batch_size = batch_size
        self.trust_remote_code = trust_remote_code
        self._registry = registry if registry is not None else default_registry

    def __repr__(self) -> str:
        return (
            f"LateInteractionBackend(model={self.model!r}, encoder={self.encoder!r}, "
            f"device={self.device!r})"
        )

    @property
    def model_name(self) -> str:
        return self.model

    def to_config(self) -> dict[str, Any]:
        """Every option, as keyword arguments that rebuild an equivalent backend."""
        return {
            "model": self.model,
            "encoder": self.encoder,
            "query_length": self.query_length,
            "document_length": self.document_length,
            "score_scale": self.score_scale,
            "device": self.device,
            "batch_size": self.batch_size,
            "trust_remote_code": self.trust_remote_code,
        }

    def resolved_encoder(self) -> str:
        """What ``encoder="auto"`` stands for with this model (reads the checkpoint's files)."""
        if self.encoder != "auto":
            return self.encoder
        if self.model == EMBEDDED_MODEL:
            return "token-embeddings"
        colbert = is_colbert_checkpoint(_checkpoint_dir(self.model))
        return "colbert" if colbert else "token-embeddings"

    def load(self) -> Any:
        """The process-wide token encoder for this model (loaded once, see the registry)."""
        device = resolve_device(self.device)
        kind = self.resolved_encoder()
        key = (
            "late-interaction",
            kind,
            self.model,
            device,
            self.query_length,
            self.document_length,
            self.batch_size,
            self.trust_remote_code,
        )
        return self._registry.get_or_load(key, lambda: self._build(kind, device))

    def _build(self, kind: str, device: str) -> Any:
        if kind == "token-embeddings":
            encoder = shared_sentence_transformer(
                self.model,
                device=device,
                trust_remote_code=self.trust_remote_code,
                registry=self._registry,
            )
            return _TokenEmbeddingEncoder(encoder, self.batch_size)
        loader = load_colbert if kind == "colbert" else load_pylate
        return loader(
            self.model,
            device=device,
            batch_size=self.batch_size,
            query_length=self.query_length,
            document_length=self.document_length,
            trust_remote_code=self.trust_remote_code,
        )

    # -- windowing capability (engine's TokenWindowing protocol) -------------------------------

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return self.load().token_spans(text)  # type: ignore[no-any-return]

    def window_token_budget(self, query: str) -> int | None:
        # Query and document are encoded apart, so a document window gets the whole input.
        return int(self.load().document_token_budget())

    # -- scoring ---------------------------------------------------------------------------------

    def token_vectors(
        self, query: str, texts: Sequence[str]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """The query's and each text's unit-length token vectors, for inspection."""
        encoder = self.load()
        (query_vectors,) = encoder.encode_queries([query])
        return query_vectors, encoder.encode_documents(list(texts))

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        query_vectors, document_vectors = self.token_vectors(query, texts)
        return maxsim(query_vectors, document_vectors, scale=self.score_scale)
