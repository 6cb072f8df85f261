"""The local cross-encoder backend: one model, several ways to run it, all returning raw logits.

``precision="fp32"`` (default) equals ``CrossEncoder.predict`` within 1e-5; ``"bf16"``,
``"fp16"``, ``"int8"``, ``"int8-mixed"`` with ``runtime="torch"`` or ``"onnx"`` trade a little
precision for speed (:mod:`crossrank.backends.local.variants`); ``"auto"`` picks the fastest
variant on this CPU whose ranking agrees with fp32 (:mod:`crossrank.backends.local.auto`)
and keeps its evidence in :attr:`CrossEncoderBackend.selection`.

The backend pickles and deep-copies: the loaded model is not copied but shared through the
registry and reloaded lazily by the copy; locks and worker threads are made anew.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from crossrank.backends._torch import resolve_device
from crossrank.backends.base import BaseBackend
from crossrank.backends.local.fidelity import FidelityGate, Selection
from crossrank.backends.local.options import (
    DEFAULT_CROSS_ENCODER,
    AutoSettings,
    Batching,
    Execution,
    ModelSource,
    reject_removed,
)
from crossrank.backends.local.runners import LoadedVariant, load_variant
from crossrank.backends.local.scoring import encode_pairs, score_encoded
from crossrank.backends.local.variants import (
    Variant,
    canonical_precision,
    parse_variant,
    variant_from_label,
)
from crossrank.backends.local.windowing import PairWindowing
from crossrank.errors import ConfigurationError
from crossrank.registry import ModelRegistry, default_registry

#: What a copy or pickle carries; everything else is loaded or rebuilt on demand.
_CONFIG_STATE = (
    "source",
    "batching",
    "execution",
    "auto",
    "precision",
    "runtime",
    "score_cache_size",
    "micro_batch",
    "micro_batch_wait_s",
    "_registry",
)


class CrossEncoderBackend(PairWindowing, BaseBackend):
    """Scores (query, text) pairs with a local cross-encoder; returns raw logits."""

    name = "cross-encoder"

    def __init__(
        self,
        model: str = DEFAULT_CROSS_ENCODER,
        *,
        # which variant runs, and where
        precision: str = "fp32",
        runtime: str = "auto",
        device: str = "auto",
        num_threads: int | None = None,
        compile: bool = True,
        cache_dir: str | Path | None = None,
        opset: int = 17,
        # how pairs are batched
        batch_size: int = 32,
        token_budget: int | None = None,
        # which weights, read how
        max_length: int | None = None,
        label_index: int | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        local_files_only: bool = False,
        # precision="auto"
        fidelity_sample: Sequence[tuple[str, Sequence[str]]] | None = None,
        fidelity_gate: FidelityGate | Mapping[str, Any] | None = None,
        # conveniences that wrap the scorer (crossrank.backends.wrappers)
        score_cache_size: int = 0,
        micro_batch: bool = False,
        micro_batch_wait_s: float = 0.005,
        registry: ModelRegistry | None = None,
        **removed: Any,
    ) -> None:
        """Options (all keyword-only), by group.

        Variant: ``precision`` and ``runtime`` pick it (module docstring); ``num_threads``
        sets ONNX Runtime's intra-op threads, or torch's process-wide count for torch
        variants; ``compile`` lets torch int8 run through ``torch.compile`` (tens of seconds
        at first load, cached by inductor, about twice the speed after); ``cache_dir`` roots
        the ONNX artifacts and auto's remembered choices (``crossrank optimize`` fills it).
        Batching: at most ``batch_size`` pairs and ``token_budget`` padded tokens per pass
        (default :data:`~crossrank.backends.local.options.DEFAULT_TOKEN_BUDGET` on a CPU).
        Auto: ``fidelity_sample`` is the (query, texts) sample whose rankings a candidate
        must keep (default: the bundled demo), ``fidelity_gate`` the thresholds.
        Conveniences: ``score_cache_size`` > 0 wraps scoring in a
        :class:`~crossrank.backends.wrappers.CachedBackend`, ``micro_batch`` in a
        :class:`~crossrank.backends.wrappers.MicroBatchedBackend`; the wrappers work around
        any backend, these options only save writing them.
        """
        reject_removed(removed, _accepted_options())
        if not isinstance(precision, str):
            raise ConfigurationError(f"precision must be a string, got {precision!r}")
        self.source = ModelSource(
            model, revision, max_length, label_index, trust_remote_code, local_files_only
        )
        self.batching = Batching(batch_size, token_budget)
        self.execution = Execution(device, num_threads, cache_dir, opset, compile)
        self.auto = AutoSettings.build(fidelity_sample, fidelity_gate)
        if precision != "auto":  # validate names now; hardware checks wait for load()
            device_hint = "cuda" if canonical_precision(precision) == "fp16" else "cpu"
            parse_variant(precision, runtime, device=device_hint, check_hardware=False)
        elif runtime != "auto":
            raise ConfigurationError(
                f"precision='auto' chooses the runtime itself; got runtime={runtime!r}"
            )
        self.precision = precision
        self.runtime = runtime
        self.score_cache_size = score_cache_size
        self.micro_batch = micro_batch
        self.micro_batch_wait_s = micro_batch_wait_s
        self._registry = registry or default_registry
        self._init_runtime()

    def _init_runtime(self) -> None:
        """State that is never copied: the loaded variant, the lock, the wrappers' threads."""
        from crossrank.backends.wrappers import scoring_front

        self._loaded: LoadedVariant | None = None
        self._variant: Variant | None = None
        self._resolved_device: str | None = None
        self._load_lock = threading.Lock()
        #: What ``precision="auto"`` chose and why (``None`` for an explicit precision).
        self.selection: Selection | None = None
        self._front = scoring_front(
            self,
            score_cache_size=self.score_cache_size,
            micro_batch=self.micro_batch,
            micro_batch_wait_s=self.micro_batch_wait_s,
            max_pairs=self.batching.batch_size * 8,
        )

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _CONFIG_STATE}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def __repr__(self) -> str:
        return (
            f"CrossEncoderBackend(model={self.model!r}, device={self.device!r}, "
            f"precision={self.precision!r}, runtime={self.runtime!r})"
        )

    # -- the options most often read, flat ----------------------------------------------------

    @property
    def model(self) -> str:
        return self.source.model

    @property
    def model_name(self) -> str:
        return self.source.model

    @property
    def device(self) -> str:
        return self.execution.device

    @property
    def trust_remote_code(self) -> bool:
        return self.source.trust_remote_code

    # -- loading --------------------------------------------------------------------------------

    def load(self) -> Any:
        """The shared model object, loaded on first use; call it early to pay up front.

        Torch variants return the ``CrossEncoder``; ONNX variants return the shared ONNX
        Runtime session. ``precision="auto"`` chooses here (or reads its remembered choice).
        """
        loaded = self._loaded
        if loaded is None:
            with self._load_lock:
                if self._loaded is None:
                    device = resolve_device(self.execution.device)
                    self._resolved_device = device
                    if self.precision == "auto":
                        from crossrank.backends.local.auto import select_variant

                        self.selection = select_variant(self, device)
                        variant = variant_from_label(self.selection.chosen)
                    else:
                        variant = parse_variant(self.precision, self.runtime, device=device)
                    self._loaded = load_variant(
                        variant,
                        source=self.source,
                        execution=self.execution,
                        device=device,
                        registry=self._registry,
                        int8_sample=self._int8_sample,
                    )
                    self._variant = variant
                loaded = self._loaded
        return loaded.model

    def _int8_sample(self) -> tuple[list[tuple[str, Sequence[str]]], str]:
        from crossrank.backends.local.auto import sample_digest

        sample = self.auto.sample()
        return sample, sample_digest(sample)

    @property
    def variant(self) -> Variant:
        """The variant that actually runs (resolved, after the choice for ``"auto"``)."""
        self.load()
        assert self._variant is not None
        return self._variant

    @property
    def compile_fell_back(self) -> bool:
        """True when compiling was asked for, failed, and the loaded variant runs eager.

        Auto lists torch int8 for its compiled speed, so it must not pick one running eager.
        """
        self.load()
        return self._loaded is not None and self._loaded.compile_fell_back

    def sibling(self, variant: Variant) -> CrossEncoderBackend:
        """A plain backend for one explicit variant sharing this one's options and registry."""
        copy = CrossEncoderBackend.__new__(CrossEncoderBackend)
        state = self.__getstate__()
        state.update(
            precision=variant.precision,
            runtime=variant.runtime,
            score_cache_size=0,
            micro_batch=False,
        )
        copy.__setstate__(state)
        return copy

    @property
    def tokenizer(self) -> Any:
        self.load()
        assert self._loaded is not None
        return self._loaded.tokenizer

    # -- scoring --------------------------------------------------------------------------------

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        if self._front is not None:
            return self._front.score(query, list(texts))
        return self.score_pairs([query] * len(texts), list(texts))

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        if self._front is None or not texts:
            return await super().ascore(query, texts)
        return await self._front.ascore(query, list(texts))

    @property
    def score_cache(self) -> Any:
        """The :class:`~crossrank.backends.score_cache.ScoreCache` of ``score_cache_size``."""
        return getattr(self._front, "cache", None)

    @property
    def micro_batcher(self) -> Any:
        """The running :class:`~crossrank.backends.micro_batch.MicroBatcher`, if any."""
        from crossrank.backends.wrappers import find_micro_batcher

        return find_micro_batcher(self._front)

    def cache_identity(self) -> tuple[Any, ...]:
        """What makes two backends' scores interchangeable in a shared score cache."""
        source = self.source
        label = self.variant.label
        return (source.model, source.revision, label, source.max_length, source.label_index)

    def close(self) -> None:
        """Stop the micro-batching worker, if one was started."""
        closer = getattr(self._front, "close", None)
        if closer is not None:
            closer()

    def score_pairs(self, queries: Sequence[str], texts: Sequence[str]) -> list[float]:
        """Raw scores of ``(queries[i], texts[i])`` pairs; queries may differ between pairs."""
        if len(queries) != len(texts):
            raise ConfigurationError(
                f"queries and texts differ in length: {len(queries)} vs {len(texts)}"
            )
        if not texts:
            return []
        self.load()
        loaded = self._loaded
        assert loaded is not None
        encoded = encode_pairs(loaded.tokenizer, queries, texts, max_length=self.model_max_length)
        return score_encoded(
            loaded.runner,
            encoded,
            pad_id=loaded.tokenizer.pad_token_id or 0,
            batch_size=self.batching.batch_size,
            budget=self.batching.budget(self._resolved_device),
            label_index=self.source.label_index,
            model=self.source.model,
        )


def _accepted_options() -> list[str]:
    import inspect

    parameters = inspect.signature(CrossEncoderBackend.__init__).parameters
    return [name for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
