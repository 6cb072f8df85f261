"""Haystack 2.x / 3.x adapter: ``CrossrankRanker``, a ranker component driven by crossrank.

The component only translates: Haystack ``Document`` -> :class:`crossrank.Candidate` (the
document id, a content hash, becomes the candidate id so the engine can deduplicate) and
:class:`crossrank.RerankResult` -> copies of the caller's documents with ``score`` set.
Every ranking decision (deduplication, normalization, thresholds, ``top_k``, fallback)
belongs to the engine.

Pipelines refer to the component by its canonical path
``haystack_integrations.components.rankers.crossrank.CrossrankRanker``: Haystack 3 only
imports modules on its deserialization allowlist when loading YAML, and ``haystack_integrations``
is on it by default, so ``Pipeline.loads(pipeline.dumps())`` works with no extra setup. The
class is implemented here and re-exported there; its ``__module__`` names the canonical path
so that the serialized ``type:`` and Haystack's component registry agree on it.

Deliberately no ``from __future__ import annotations``: Haystack reads ``run``'s annotations
at class creation to build the component's input sockets and needs real types there.
"""

import asyncio
import dataclasses
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from crossrank import (
    BACKENDS,
    Backend,
    BaseBackend,
    Candidate,
    ConfigurationError,
    CrossrankError,
    InvalidInputError,
    MissingDependencyError,
    Reranker,
    RerankResult,
    is_secret_option,
    parse_policy,
)

try:
    from haystack import Document, component, default_from_dict, default_to_dict
    from haystack.core.errors import DeserializationError, SerializationError
    from haystack.utils import Secret, deserialize_secrets_inplace
except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
    raise MissingDependencyError("haystack-ai", "haystack") from exc

#: The import path pipelines serialize; it lies inside Haystack 3's default allowlist.
CANONICAL_MODULE = "haystack_integrations.components.rankers.crossrank"

#: Where each API backend reads its key by default, as Haystack's own integrations do.
DEFAULT_API_KEY_ENV_VARS: dict[str, tuple[str, ...]] = {
    "cohere": ("COHERE_API_KEY", "CO_API_KEY"),
    "jina": ("JINA_API_KEY",),
}

# Per-document metadata written on the returned copies (never on the caller's documents).
META_FIRST_STAGE_SCORE = "first_stage_score"
META_FIRST_STAGE_RANK = "first_stage_rank"
META_RAW_SCORE = "rerank_raw_score"
META_STATUS = "rerank_status"
META_ERROR = "rerank_error"


class _ValidationBackend(BaseBackend):
    """Stands in for the real backend so ``__init__`` can let the engine check its options.

    The engine owns option validation (normalization names, threshold bounds, window
    settings...); building a throwaway engine around this inert backend reuses those checks
    without importing a model library, resolving an API key or touching the network.
    """

    name = "validation"


@component
class CrossrankRanker:
    """Reranks retrieved documents with a cross-encoder, Cohere, Jina or embedding backend.

    Construction is light: the backend is built and its model loaded in :meth:`warm_up`
    (which Haystack pipelines call before the first run; a direct ``run`` warms up on its
    own). Pass ``backend`` by name (``"cross-encoder"``, ``"embedding"``, ``"cohere"``,
    ``"jina"``) for a component that serializes, or a backend instance for one that does not.

    Returned documents are copies with ``score`` set to the normalized rerank score; the
    caller's documents, ids and metadata are left untouched. Each copy's ``meta`` also holds
    ``first_stage_score`` (the incoming ``Document.score``), ``first_stage_rank``,
    ``rerank_raw_score`` (``None`` when the reranker did not run) and ``rerank_status``
    (``"reranked"``, ``"skipped"`` or ``"fallback"``; a fallback also carries
    ``rerank_error``): when the backend fails at query time and ``strict`` is off, the
    first-stage order is returned and flagged rather than raising.

    Text read by the reranker: the values of ``meta_fields_to_embed`` (when present) followed
    by ``content``, joined with ``embedding_separator``. A document whose ``content`` is
    ``None`` (e.g. a blob-only document) is kept and scored on its embedded meta fields
    alone, or on the empty string, the way Haystack's own rankers treat it; it is never
    dropped.
    """

    __module__ = CANONICAL_MODULE

    def __init__(
        self,
        *,
        reranker: Reranker | None = None,
        backend: str | Backend = "cross-encoder",
        model: str | None = None,
        backend_options: Mapping[str, Any] | None = None,
        api_key: Secret | None = None,
        top_k: int | None = 10,
        score_threshold: float | None = None,
        normalization: str | None = None,
        scale_score: bool | None = None,
        temperature: float = 1.0,
        meta_fields_to_embed: list[str] | None = None,
        embedding_separator: str = "\n",
        selective: str | None = None,
        blend: str | None = None,
        windowing: bool = True,
        window_stride: int = 32,
        window_aggregation: str = "max",
        deduplicate: bool = True,
        strict: bool = False,
    ) -> None:
        """Check every option now; build nothing heavy.

        :param reranker: A ready :class:`crossrank.Reranker` (shared with other adapters); then
            the engine options below stay at their defaults except ``top_k`` and
            ``score_threshold``, which apply per call. Such a component cannot be serialized.
        :param backend: A backend name (serializable) or a ready backend instance (not).
        :param model: Model id or local path for a backend given by name.
        :param backend_options: Further keyword options of the named backend (``device``,
            ``batch_size``, ``base_url``...). Credentials do not belong here: use ``api_key``.
        :param api_key: The key of an API backend as a Haystack ``Secret``. Defaults to the
            provider's usual environment variables (``COHERE_API_KEY``/``CO_API_KEY``,
            ``JINA_API_KEY``), non-strict, so a pipeline loads even where the key is unset.
        :param top_k: How many documents to return (``None``: all); ``run`` may override it.
        :param score_threshold: Drop documents whose normalized score is below this value.
        :param normalization: ``"softmax"`` (default), ``"sigmoid"``, ``"minmax"`` or ``"none"``.
        :param scale_score: Haystack-style switch, for users coming from Haystack's rankers:
            ``True`` means sigmoid scores, ``False`` raw scores. Give it or ``normalization``.
        :param temperature: Softmax temperature.
        :param meta_fields_to_embed: Metadata fields whose values are read with the content.
        :param embedding_separator: Joins those values and the content.
        :param selective: Selective reranking policy spec (``"always"``, ``"never"``...).
        :param blend: Blend of first-stage and rerank scores (``"rrf"``, ``"weighted:0.3"``...).
        :param windowing: Cut documents longer than the model's input into windows.
        :param window_stride: Token overlap between windows.
        :param window_aggregation: How window scores combine (``"max"``, ``"mean"``...).
        :param deduplicate: Drop repeated documents (same id) before scoring.
        :param strict: Raise when the backend fails instead of falling back to first-stage order.
        """
        self._backend_instance: Backend | None = None
        self._given_reranker: Reranker | None = None
        if reranker is not None:
            if not isinstance(reranker, Reranker):
                raise ConfigurationError(
                    f"reranker must be a crossrank.Reranker, got {type(reranker).__name__}"
                )
            if backend != "cross-encoder" or model is not None or backend_options or api_key:
                raise ConfigurationError(
                    "give either reranker= or backend/model/backend_options/api_key, not both"
                )
            self._given_reranker = reranker
            backend = reranker.backend
        if isinstance(backend, str):
            backend_name = backend.strip().lower()
            if backend_name not in BACKENDS:
                raise ConfigurationError(
                    f"unknown backend {backend!r}; expected one of {sorted(BACKENDS)} or a "
                    "Backend instance"
                )
        elif isinstance(backend, Backend):
            if model is not None or backend_options or api_key is not None:
                raise ConfigurationError(
                    "model, backend_options and api_key apply only when backend is given by "
                    f"name; configure the {type(backend).__name__} instance instead"
                )
            backend_name = backend.name
            self._backend_instance = backend
        else:
            raise ConfigurationError(
                f"backend must be a backend name or a Backend instance, got {backend!r}"
            )
        if backend_options is not None and not isinstance(backend_options, Mapping):
            raise ConfigurationError(
                f"backend_options must be a mapping of option names, got {backend_options!r}"
            )
        options = dict(backend_options or {})
        secret_options = sorted(name for name in options if is_secret_option(name))
        if secret_options:
            raise ConfigurationError(
                f"backend_options {secret_options} look like credentials; pass them as "
                "api_key=Secret.from_env_var(...) so they are never serialized in plain text"
            )
        if api_key is not None and not isinstance(api_key, Secret):
            raise ConfigurationError(
                "api_key must be a haystack.utils.Secret (e.g. Secret.from_env_var"
                f"('COHERE_API_KEY')), got {type(api_key).__name__}"
            )
        if api_key is None and isinstance(backend, str):
            env_vars = DEFAULT_API_KEY_ENV_VARS.get(backend_name)
            if env_vars is not None:
                api_key = Secret.from_env_var(list(env_vars), strict=False)
        if api_key is not None and backend_name not in DEFAULT_API_KEY_ENV_VARS:
            raise ConfigurationError(
                f"api_key applies only to the API backends {sorted(DEFAULT_API_KEY_ENV_VARS)}, "
                f"not to {backend_name!r}"
            )
        if normalization is not None and scale_score is not None:
            raise ConfigurationError(
                f"give either normalization ({normalization!r}) or scale_score "
                f"({scale_score!r}), not both"
            )
        if meta_fields_to_embed is not None and (
            isinstance(meta_fields_to_embed, str)
            or not all(isinstance(name, str) for name in meta_fields_to_embed)
        ):
            raise ConfigurationError(
                f"meta_fields_to_embed must be a list of field names, got {meta_fields_to_embed!r}"
            )
        if not isinstance(embedding_separator, str):
            raise ConfigurationError(
                f"embedding_separator must be a string, got {embedding_separator!r}"
            )

        self.backend = backend if isinstance(backend, str) else backend_name
        self.model = model
        self.backend_options = options
        self.api_key = api_key
        self.top_k = top_k
        self.score_threshold = score_threshold
        self.normalization = normalization
        self.scale_score = scale_score
        self.temperature = temperature
        self.meta_fields_to_embed = list(meta_fields_to_embed or [])
        self.embedding_separator = embedding_separator
        self.selective = selective
        self.blend = blend
        self.windowing = windowing
        self.window_stride = window_stride
        self.window_aggregation = window_aggregation
        self.deduplicate = deduplicate
        self.strict = strict

        # The engine checks its own options now, so mistakes surface at construction.
        if self._given_reranker is None:
            self._build_reranker(_ValidationBackend())
        self._reranker: Reranker | None = None
        self._warm = False
        self._lock = threading.Lock()

    # -- engine -----------------------------------------------------------------------------

    @property
    def resolved_normalization(self) -> str:
        """The engine normalization that ``normalization`` / ``scale_score`` select."""
        if self.normalization is not None:
            return self.normalization
        if self.scale_score is None:
            return "softmax"
        return "sigmoid" if self.scale_score else "none"

    def _build_reranker(self, backend: Backend | None = None) -> Reranker:
        """The engine for this configuration; ``backend`` replaces the configured one."""
        if self._given_reranker is not None and backend is None:
            return self._given_reranker
        engine_options: dict[str, Any] = {
            "top_n": self.top_k,
            "normalization": self.resolved_normalization,
            "temperature": self.temperature,
            "threshold": self.score_threshold,
            "selective": None if self.selective is None else parse_policy(self.selective),
            "blend": self.blend,
            "windowing": self.windowing,
            "window_stride": self.window_stride,
            "window_aggregation": self.window_aggregation,
            "deduplicate": self.deduplicate,
            "strict": self.strict,
        }
        if backend is None:
            backend = self._backend_instance
        if backend is not None:
            return Reranker(backend, **engine_options)
        options = dict(self.backend_options)
        key = None if self.api_key is None else self.api_key.resolve_value()
        if key is not None:
            options["api_key"] = key
        return Reranker(self.backend, model=self.model, backend_options=options, **engine_options)

    def warm_up(self) -> None:
        """Build the backend and load its model; safe to call any number of times.

        Misconfiguration (an unknown model path, a missing API key) raises here, loudly;
        only failures while scoring degrade to the flagged first-stage fallback.
        """
        with self._lock:
            if self._warm:
                return
            if self._reranker is None:
                self._reranker = self._build_reranker()
            load = getattr(self._reranker.backend, "load", None)
            if callable(load):
                load()
            self._warm = True

    async def warm_up_async(self) -> None:
        """Haystack 3 warms components up on the serving loop; keep the model load off it."""
        await asyncio.to_thread(self.warm_up)

    def _ready_reranker(self) -> Reranker:
        if not self._warm:
            self.warm_up()
        assert self._reranker is not None
        return self._reranker

    # -- serialization ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Init parameters for YAML; the API key is written as a Secret reference only.

        A token secret (``Secret.from_token``) refuses to serialize, as everywhere in
        Haystack; a backend given as an instance cannot be written down by name.
        """
        if self._given_reranker is not None:
            raise SerializationError(
                "CrossrankRanker wraps a ready Reranker; configure it by name "
                "(backend=..., model=...) to serialize"
            )
        if self._backend_instance is not None:
            raise SerializationError(
                f"CrossrankRanker wraps a {type(self._backend_instance).__name__} instance; "
                "give the backend by name (e.g. backend='cross-encoder', model=...) to serialize"
            )
        return default_to_dict(  # type: ignore[no-any-return]
            self,
            backend=self.backend,
            model=self.model,
            backend_options=dict(self.backend_options),
            api_key=None if self.api_key is None else self.api_key.to_dict(),
            top_k=self.top_k,
            score_threshold=self.score_threshold,
            normalization=self.normalization,
            scale_score=self.scale_score,
            temperature=self.temperature,
            meta_fields_to_embed=list(self.meta_fields_to_embed),
            embedding_separator=self.embedding_separator,
            selective=self.selective,
            blend=self.blend,
            windowing=self.windowing,
            window_stride=self.window_stride,
            window_aggregation=self.window_aggregation,
            deduplicate=self.deduplicate,
            strict=self.strict,
        )

    @classmethod
    def from_reranker_config(
        cls, config: Mapping[str, Any], *, api_key: Secret | None = None
    ) -> "CrossrankRanker":
        """A ranker configured like ``Reranker.from_config(config)`` (e.g. the file written by
        ``crossrank tune-selective``), serializable in Haystack's own format from then on."""
        options = dict(Reranker.from_config(config).to_config())  # validates the config
        backend_options = dict(options.pop("backend_options") or {})
        model = backend_options.pop("model", None)
        top_n = options.pop("top_n")
        threshold = options.pop("threshold")
        return cls(
            backend=options.pop("backend"),
            model=model,
            backend_options=backend_options,
            api_key=api_key,
            top_k=top_n,
            score_threshold=threshold,
            **options,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CrossrankRanker":
        """Rebuild from :meth:`to_dict` output (the Secret reference is turned back into one)."""
        init_parameters = data.get("init_parameters", {})
        try:
            deserialize_secrets_inplace(init_parameters, keys=["api_key"])
            return default_from_dict(cls, data)  # type: ignore[no-any-return]
        except CrossrankError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            # Haystack's documented error for a component dict it cannot turn into a component.
            raise DeserializationError(
                f"cannot build CrossrankRanker from {init_parameters!r}: {exc}"
            ) from exc

    # -- running ----------------------------------------------------------------------------

    @component.output_types(documents=list[Document])
    def run(
        self,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, list[Document]]:
        """Rerank ``documents`` for ``query``.

        :param query: The query the documents were retrieved for.
        :param documents: First-stage documents, best first.
        :param top_k: Overrides the component's ``top_k`` for this call.
        :param score_threshold: Overrides the component's ``score_threshold`` for this call.
        :returns: ``{"documents": [...]}``: reranked copies, best first.
        """
        candidates = self._candidates(documents)
        if not candidates:
            return {"documents": []}
        reranker = self._ready_reranker()
        result = reranker.rerank(query, candidates, **self._call_limits(top_k, score_threshold))
        return {"documents": _ranked_documents(documents, result)}

    @component.output_types(documents=list[Document])
    async def run_async(
        self,
        query: str,
        documents: list[Document],
        top_k: int | None = None,
        score_threshold: float | None = None,
    ) -> dict[str, list[Document]]:
        """Async twin of :meth:`run`: the backend's async path keeps the event loop free."""
        candidates = self._candidates(documents)
        if not candidates:
            return {"documents": []}
        if not self._warm:
            await self.warm_up_async()
        reranker = self._ready_reranker()
        result = await reranker.arerank(
            query, candidates, **self._call_limits(top_k, score_threshold)
        )
        return {"documents": _ranked_documents(documents, result)}

    def _call_limits(self, top_k: int | None, score_threshold: float | None) -> dict[str, Any]:
        """Per-call overrides, else the component's own (which a given Reranker lacks)."""
        return {
            "top_n": top_k if top_k is not None else self.top_k,
            "threshold": score_threshold if score_threshold is not None else self.score_threshold,
        }

    # -- translation ------------------------------------------------------------------------

    def _candidates(self, documents: Any) -> list[Candidate]:
        if isinstance(documents, (str, bytes, Mapping)) or not isinstance(documents, Sequence):
            raise InvalidInputError(
                f"documents must be a list of haystack Documents, got {type(documents).__name__}"
            )
        candidates: list[Candidate] = []
        for position, document in enumerate(documents):
            if not isinstance(document, Document):
                raise InvalidInputError(
                    f"document {position} must be a haystack Document, got "
                    f"{type(document).__name__}"
                )
            candidates.append(
                Candidate(
                    text=self._text_of(document),
                    id=document.id,
                    first_stage_score=_first_stage_score(document, position),
                    metadata=document.meta,
                )
            )
        return candidates

    def _text_of(self, document: Document) -> str:
        """Embedded meta values, then the content (type conversion, not a ranking decision)."""
        parts = [
            str(document.meta[name])
            for name in self.meta_fields_to_embed
            if document.meta.get(name) is not None
        ]
        if document.content is not None:
            parts.append(document.content)
        return self.embedding_separator.join(parts)


def _first_stage_score(document: Document, position: int) -> float | None:
    score = document.score
    if score is None:
        return None
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise InvalidInputError(
            f"document {position} (id={document.id!r}) has an unusable score {score!r}; "
            "expected a finite number or None"
        )
    return float(score)


def _ranked_documents(documents: Sequence[Document], result: RerankResult) -> list[Document]:
    """Copies of the kept documents in final order, scored, with what happened in ``meta``."""
    report = result.report
    ranked: list[Document] = []
    for item in result:
        original = documents[item.input_index]
        meta = dict(original.meta)
        meta[META_FIRST_STAGE_SCORE] = original.score
        meta[META_FIRST_STAGE_RANK] = item.first_stage_rank
        meta[META_RAW_SCORE] = item.raw_score
        meta[META_STATUS] = report.status
        if report.error is not None:
            meta[META_ERROR] = report.error
        ranked.append(dataclasses.replace(original, meta=meta, score=item.score))
    return ranked


__all__ = ["CANONICAL_MODULE", "DEFAULT_API_KEY_ENV_VARS", "CrossrankRanker"]
