"""Local cross-encoder backend: one model, several ways to run it, all returning raw logits.

sentence-transformers loads the model (any hub id or local path, safetensors preferred,
``trust_remote_code`` off by default). Scoring never goes through ``predict``: pairs are
tokenized once per call with the fast tokenizer, sorted by length, cut into batches by a
*token budget* (the padded tokens a batch carries, so short passages travel in big batches
and long ones in small), and handed to a runner for the chosen variant:

- ``precision="fp32"`` (default), torch: equals ``CrossEncoder.predict`` within 1e-5;
- ``"bf16"`` (CPUs with native bf16) / ``"fp16"`` (GPUs), torch;
- ``runtime="onnx"``, fp32: ONNX Runtime on a fused graph exported once and cached on disk;
- ``"int8"`` / ``"int8-mixed"``: ONNX Runtime with dynamic int8 quantization;
- ``"int8"`` with ``runtime="torch"``: int8 matmuls with one activation scale per token,
  compiled with ``torch.compile`` (:mod:`crossrank.backends.token_int8`);
- ``"auto"``: the fastest variant whose ranking agrees with fp32 on a calibration sample
  (see :mod:`crossrank.backends.fidelity`); the choice and its evidence are kept in
  :attr:`CrossEncoderBackend.selection`.

Optional: an LRU score cache (``score_cache_size=``) and a micro-batcher that merges
concurrent requests into shared forward passes (``micro_batch=True``). Both are off by
default. Normalization belongs to the engine.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossrank.backends._torch import import_torch, resolve_device, resolve_dtype
from crossrank.backends.base import BaseBackend
from crossrank.backends.fidelity import FidelityGate, Selection
from crossrank.backends.micro_batch import MicroBatcher
from crossrank.backends.precision import (
    FP32_TORCH,
    TORCH_INT8,
    Variant,
    auto_candidates,
    parse_variant,
)
from crossrank.backends.score_cache import ScoreCache
from crossrank.errors import ConfigurationError, ModelLoadError, missing_dependency
from crossrank.registry import ModelRegistry, default_registry

DEFAULT_CROSS_ENCODER = "cross-encoder/ms-marco-MiniLM-L-6-v2"

#: Padded tokens per forward pass when ``token_budget`` is not given. Measured with
#: ``benchmarks/local_backend.py`` on a quiet 2-core AVX-512 CPU (MiniLM-L6, 100 passages of
#: 61-320 tokens), budget -> x ``predict``: fp32 16384 -> 1.15, 4096 -> 1.34, 1024 -> 1.61,
#: 512 -> 1.54; bf16 4096 -> 2.34, 1024 -> 2.61; ONNX int8 4096 -> 2.90, 1024 -> 3.49. Small
#: batches keep activations in cache on a CPU; a GPU wants big ones.
DEFAULT_TOKEN_BUDGET = 1024
GPU_TOKEN_BUDGET = 16384

# [CLS] query [SEP] text [SEP]: three special tokens around a pair for BERT-style models.
_PAIR_SPECIAL_TOKENS = 3
_DTYPE_TO_PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
_PRECISION_TO_DTYPE = {value: key for key, value in _DTYPE_TO_PRECISION.items()}
_torch_threads_lock = threading.Lock()

#: A runner takes padded int64 (ids, mask, token types or None) and returns float32 logits.
Runner = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], np.ndarray]


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
    import_torch()
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
    return cross_encoder


def load_tokenizer(
    model: str,
    *,
    max_length: int | None,
    revision: str | None,
    trust_remote_code: bool,
    local_files_only: bool,
) -> Any:
    """The model's fast tokenizer alone (ONNX variants need no torch weights in memory)."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise missing_dependency("transformers", "local") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model,
            revision=revision,
            trust_remote_code=trust_remote_code,
            local_files_only=local_files_only,
            use_fast=True,
        )
    except Exception as exc:
        raise ModelLoadError(
            f"could not load cross-encoder {model!r}: {type(exc).__name__}: {exc}"
        ) from exc
    if max_length is not None:
        tokenizer.model_max_length = max_length
    return tokenizer


def _network(cross_encoder: Any) -> Any:
    """The transformers model inside a ``CrossEncoder`` (its attribute moved across versions)."""
    return getattr(cross_encoder, "transformers_model", None) or cross_encoder.model


def _torch_runner(cross_encoder: Any, forward: Callable[..., Any] | None = None) -> Runner:
    """Runs batches through the network, or through ``forward`` (a compiled wrapper of it)."""
    torch = import_torch()
    network = _network(cross_encoder)
    call = forward or network
    device = next(network.parameters()).device

    def run(ids: np.ndarray, mask: np.ndarray, types: np.ndarray | None) -> np.ndarray:
        features = {
            "input_ids": torch.from_numpy(ids).to(device),
            "attention_mask": torch.from_numpy(mask).to(device),
        }
        if types is not None:
            features["token_type_ids"] = torch.from_numpy(types).to(device)
        with torch.inference_mode():
            logits = call(**features).logits
        return logits.float().cpu().numpy()  # type: ignore[no-any-return]

    return run


@dataclass(frozen=True)
class _Encoded:
    """One call's pairs, tokenized once: ragged ids, optional types, and their lengths."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    lengths: np.ndarray


# What makes an auto candidate unavailable here, rather than an error for the caller.
_CANDIDATE_FAILURES = (ImportError, ModelLoadError, ConfigurationError, RuntimeError)


class CrossEncoderBackend(BaseBackend):
    """Scores (query, text) pairs with a local cross-encoder; returns raw logits."""

    name = "cross-encoder"

    def __init__(
        self,
        model: str = DEFAULT_CROSS_ENCODER,
        *,
        device: str = "auto",
        precision: str = "fp32",
        runtime: str = "auto",
        dtype: str | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        token_budget: int | None = None,
        num_threads: int | None = None,
        label_index: int | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        local_files_only: bool = False,
        cache_dir: str | Path | None = None,
        opset: int = 17,
        calibration: Sequence[tuple[str, Sequence[str]]] | None = None,
        fidelity_gate: FidelityGate | None = None,
        score_cache_size: int = 0,
        micro_batch: bool = False,
        micro_batch_wait_s: float = 0.005,
        compile: bool = True,
        registry: ModelRegistry | None = None,
    ) -> None:
        """Options (all keyword-only).

        ``precision``/``runtime`` pick the variant (``dtype=`` is the older spelling of a
        torch precision and still works). ``batch_size`` caps pairs per forward pass and
        ``token_budget`` caps padded tokens per pass (default: :data:`DEFAULT_TOKEN_BUDGET`
        on a CPU, :data:`GPU_TOKEN_BUDGET` on a GPU);
        ``num_threads`` sets ONNX Runtime's intra-op threads, or torch's process-wide thread
        count for torch variants. ``cache_dir`` roots the ONNX export cache. ``calibration``
        is the (query, texts) sample ``precision="auto"`` checks rankings on (default: the
        bundled demo knowledge base); ``fidelity_gate`` holds its thresholds.
        ``compile`` lets torch int8 (``precision="int8", runtime="torch"``) run through
        ``torch.compile``, which fuses its quantization steps: tens of seconds at load,
        about twice the speed after; ``False`` runs it eagerly.
        """
        if not isinstance(model, str) or not model.strip():
            raise ConfigurationError(f"model must be a non-empty id or path, got {model!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be a positive integer, got {batch_size!r}")
        if token_budget is not None and (
            isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < 1
        ):
            raise ConfigurationError(
                f"token_budget must be a positive integer, got {token_budget!r}"
            )
        if max_length is not None and (not isinstance(max_length, int) or max_length < 8):
            raise ConfigurationError(f"max_length must be an integer >= 8, got {max_length!r}")
        if num_threads is not None and (
            isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
        ):
            raise ConfigurationError(f"num_threads must be a positive integer, got {num_threads!r}")
        if dtype is not None:
            if dtype not in _DTYPE_TO_PRECISION:
                raise ConfigurationError(
                    f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPE_TO_PRECISION)}"
                )
            if precision not in ("fp32", _DTYPE_TO_PRECISION[dtype]):
                raise ConfigurationError(
                    f"dtype={dtype!r} conflicts with precision={precision!r}; pass one of them"
                )
            precision = _DTYPE_TO_PRECISION[dtype]
        if not isinstance(precision, str):
            raise ConfigurationError(f"precision must be a string, got {precision!r}")
        if precision != "auto":  # validate names now; hardware checks wait for load()
            fp16 = _DTYPE_TO_PRECISION.get(precision, precision) == "fp16"
            parse_variant(
                precision, runtime, device="cuda" if fp16 else "cpu", check_hardware=False
            )
        elif runtime != "auto":
            raise ConfigurationError(
                f"precision='auto' chooses the runtime itself; got runtime={runtime!r}"
            )
        self.model = model
        self.device = device
        self.precision = precision
        self.runtime = runtime
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_length = max_length
        self.token_budget = token_budget
        self.num_threads = num_threads
        self.label_index = label_index
        self.revision = revision
        self.trust_remote_code = trust_remote_code
        self.local_files_only = local_files_only
        self.cache_dir = cache_dir
        self.opset = opset
        self.calibration = calibration
        self.fidelity_gate = fidelity_gate or FidelityGate()
        self.score_cache = ScoreCache(score_cache_size) if score_cache_size else None
        self.micro_batch = micro_batch
        self.micro_batch_wait_s = micro_batch_wait_s
        self.compile = bool(compile)
        self._registry = registry or default_registry
        self._loaded: Any = None
        self._runner: Runner | None = None
        self._compile_fell_back = False
        self._tokenizer: Any = None
        self._variant: Variant | None = None
        self._resolved_device: str | None = None
        self._batcher: MicroBatcher | None = None
        self._load_lock = threading.Lock()
        #: What ``precision="auto"`` chose and why (``None`` for an explicit precision).
        self.selection: Selection | None = None

    def __repr__(self) -> str:
        return (
            f"CrossEncoderBackend(model={self.model!r}, device={self.device!r}, "
            f"precision={self.precision!r}, runtime={self.runtime!r})"
        )

    @property
    def model_name(self) -> str:
        return self.model

    # -- loading ----------------------------------------------------------------------------

    @property
    def variant(self) -> Variant:
        """The variant that actually runs (resolved, after calibration for ``"auto"``)."""
        self.load()
        assert self._variant is not None
        return self._variant

    def load(self) -> Any:
        """The shared model object, loaded on first use; call it early to pay up front.

        Torch variants return the ``CrossEncoder``; ONNX variants return the shared ONNX
        Runtime session. ``precision="auto"`` calibrates here.
        """
        if self._loaded is not None:
            return self._loaded
        with self._load_lock:
            if self._loaded is None:
                device = resolve_device(self.device)
                self._resolved_device = device
                if self.precision == "auto":
                    variant = self._select_variant(device)
                else:
                    variant = parse_variant(self.precision, self.runtime, device=device)
                self._loaded, self._runner, self._tokenizer = self._load_variant(variant, device)
                self._variant = variant
        return self._loaded

    @property
    def compile_fell_back(self) -> bool:
        """True when compiling was asked for, failed, and the loaded variant runs eager.

        Auto ranks candidates by their compiled speed, so it must not pick one running eager.
        """
        return self._compile_fell_back

    def _torch_key(self, device: str, dtype: str) -> tuple[Any, ...]:
        return (
            "cross-encoder",
            self.model,
            self.revision,
            device,
            dtype,
            self.max_length,
            self.trust_remote_code,
        )

    def _load_variant(self, variant: Variant, device: str) -> tuple[Any, Runner, Any]:
        if variant == TORCH_INT8:
            sample = self._calibration_sample()
            quantized = self._registry.get_or_load(
                (*self._torch_key(device, "int8-token"), self.compile, _sample_digest(sample)),
                lambda: self._load_token_int8(device, sample),
            )
            self._apply_torch_threads()
            cross_encoder, forward = quantized
            self._compile_fell_back = self.compile and not forward.compiled
            return cross_encoder, _torch_runner(cross_encoder, forward), cross_encoder.tokenizer
        if variant.runtime == "torch":
            dtype = _PRECISION_TO_DTYPE[variant.precision]
            cross_encoder = self._registry.get_or_load(
                self._torch_key(device, dtype),
                lambda: load_cross_encoder(
                    self.model,
                    device=device,
                    dtype=None if dtype == "float32" else dtype,
                    max_length=self.max_length,
                    revision=self.revision,
                    trust_remote_code=self.trust_remote_code,
                    local_files_only=self.local_files_only,
                ),
            )
            self._apply_torch_threads()
            return cross_encoder, _torch_runner(cross_encoder), cross_encoder.tokenizer
        from crossrank.backends.onnx_export import ensure_artifact
        from crossrank.backends.onnx_runtime import load_session

        artifact = ensure_artifact(
            self.model,
            quantization=variant.quantization,
            cache_dir=self.cache_dir,
            revision=self.revision,
            opset=self.opset,
            max_length=self.max_length,
            trust_remote_code=self.trust_remote_code,
            local_files_only=self.local_files_only,
        )
        session = load_session(self._registry, artifact, num_threads=self.num_threads)
        tokenizer = self._registry.get_or_load(
            ("cross-encoder-tokenizer", self.model, self.revision, self.max_length),
            lambda: load_tokenizer(
                self.model,
                max_length=self.max_length,
                revision=self.revision,
                trust_remote_code=self.trust_remote_code,
                local_files_only=self.local_files_only,
            ),
        )
        return session, session, tokenizer

    def _apply_torch_threads(self) -> None:
        if self.num_threads is not None:
            torch = import_torch()
            with _torch_threads_lock:
                torch.set_num_threads(self.num_threads)

    def _calibration_sample(self) -> list[tuple[str, Sequence[str]]]:
        return list(self.calibration) if self.calibration is not None else _demo_calibration()

    def _load_token_int8(
        self, device: str, sample: list[tuple[str, Sequence[str]]]
    ) -> tuple[Any, Any]:
        """A private fp32 copy of the model, its encoder quantized in place, then compiled.

        The copy is private because quantizing rewrites its layers; the fp32 weights it
        replaces are freed, so its weights take about a quarter of an fp32 copy (the compiler's
        own state adds a few hundred MB: 460 MB of RSS for MiniLM in the benchmark). Smoothing
        factors come from activation ranges on the calibration sample (the bundled demo by
        default): outlier channels belong to the model, not to the text, so a generic sample
        finds them. Warm-up runs here, so compiling is paid at load, not by a request.
        """
        from crossrank.backends.token_int8 import (
            CompiledForward,
            activation_ranges,
            quantize_encoder,
        )

        torch = import_torch()
        cross_encoder = load_cross_encoder(
            self.model,
            device=device,
            dtype=None,
            max_length=self.max_length,
            revision=self.revision,
            trust_remote_code=self.trust_remote_code,
            local_files_only=self.local_files_only,
        )
        network = _network(cross_encoder)
        tokenizer = cross_encoder.tokenizer
        encoded = _encode_pairs(
            tokenizer,
            [query for query, texts in sample for _ in texts],
            [text for _, texts in sample for text in texts],
            max_length=_input_limit(tokenizer, self.max_length),
        )
        batches = []
        start = 0
        for _, texts in sample:  # each query's texts in order, 16 pairs per pass
            for first in range(start, start + len(texts), 16):
                chunk = np.arange(first, min(first + 16, start + len(texts)))
                ids, mask, types = _pad(encoded, chunk, tokenizer.pad_token_id or 0)
                features = {
                    "input_ids": torch.from_numpy(ids),
                    "attention_mask": torch.from_numpy(mask),
                }
                if types is not None:
                    features["token_type_ids"] = torch.from_numpy(types)
                batches.append(features)
            start += len(texts)
        if not quantize_encoder(network, activation_ranges(network, batches)):
            # Serving it would be fp32 under an int8 label (and pass any fidelity gate).
            raise ConfigurationError(
                f"precision='int8' with runtime='torch' found no linear layers under an "
                f"'encoder' module in {self.model!r}; use runtime='onnx' for this architecture"
            )
        forward = CompiledForward(network, enabled=self.compile)
        with torch.inference_mode():
            for features in batches[:2]:  # two shapes, so dynamic shapes compile up front
                forward(**features)
        return cross_encoder, forward

    def _sibling(self, variant: Variant) -> CrossEncoderBackend:
        """A backend for one explicit variant sharing this one's options and registry."""
        return CrossEncoderBackend(
            self.model,
            device=self.device,
            precision=variant.precision,
            runtime=variant.runtime,
            batch_size=self.batch_size,
            max_length=self.max_length,
            token_budget=self.token_budget,
            num_threads=self.num_threads,
            label_index=self.label_index,
            revision=self.revision,
            trust_remote_code=self.trust_remote_code,
            local_files_only=self.local_files_only,
            cache_dir=self.cache_dir,
            opset=self.opset,
            calibration=self.calibration,
            compile=self.compile,
            registry=self._registry,
        )

    def _select_variant(self, device: str) -> Variant:
        """Score the calibration sample with fp32 and each candidate; keep the first that agrees.

        Candidates come fastest first (:func:`auto_candidates`), so the first passing one is
        the fastest faithful one. The result is memoized in the registry per model and
        calibration sample, so many rerankers calibrate once, and on disk under the cache
        folder (:mod:`crossrank.backends.auto_choice`), so later processes do not recalibrate.
        """
        sample = self._calibration_sample()
        digest = _sample_digest(sample)
        key = (
            "auto-precision",
            self.model,
            self.revision,
            device,
            self.max_length,
            self.label_index,
            self.fidelity_gate,
            digest,
        )
        self.selection = self._registry.get_or_load(
            key, lambda: self._remembered_or_calibrated(device, sample, digest)
        )
        return _variant_from_label(self.selection.chosen)

    def _remembered_or_calibrated(
        self, device: str, sample: list[tuple[str, Sequence[str]]], sample_digest: str
    ) -> Selection:
        """An earlier process's choice for exactly these inputs, else a fresh calibration."""
        from crossrank.backends.auto_choice import choice_key, load_choice, save_choice
        from crossrank.backends.onnx_export import cache_root

        root = cache_root(self.cache_dir)
        labels = [candidate.label for candidate in auto_candidates(device, compiled=self.compile)]
        key = choice_key(
            model=self.model,
            revision=self.revision,
            device=device,
            settings={"max_length": self.max_length, "label_index": self.label_index},
            gate=self.fidelity_gate,
            sample_digest=sample_digest,
            candidates=labels,
        )
        if key is not None:
            remembered = load_choice(root, key)
            if (
                remembered is not None
                and remembered.chosen in labels
                and self._still_runs_as_chosen(remembered)
            ):
                return remembered
        selection = self._calibrate(device, sample)
        if key is not None:
            save_choice(root, key, selection)
        return selection

    def _still_runs_as_chosen(self, remembered: Selection) -> bool:
        """Whether a remembered choice still loads the way it did when it was chosen.

        A torch int8 choice was made compiled; on a machine that has since lost its C++
        compiler it would run eager, behind bf16, so it is calibrated afresh instead. The
        check loads the variant, which the load that follows then reuses from the registry.
        """
        try:
            self._load_candidate(_variant_from_label(remembered.chosen))
        except _CANDIDATE_FAILURES:
            return False
        return True

    def _load_candidate(self, variant: Variant) -> CrossEncoderBackend:
        """A loaded sibling for ``variant``, or an error when it cannot run as auto lists it."""
        sibling = self._sibling(variant)
        sibling.load()  # torch int8 compiles and warms up here, so a failure shows now
        if sibling.compile_fell_back:
            # Listed for its compiled speed; eager, it is behind the candidates after it.
            raise RuntimeError("torch.compile failed; eager int8 is slower than bf16")
        return sibling

    def _calibrate(self, device: str, sample: list[tuple[str, Sequence[str]]]) -> Selection:
        reference_backend = self._sibling(FP32_TORCH)
        reference = [reference_backend.score(query, texts) for query, texts in sample]
        agreements = []
        for candidate in auto_candidates(device, compiled=self.compile):
            if candidate == FP32_TORCH:
                break
            try:
                sibling = self._load_candidate(candidate)
                scores = [sibling.score(query, texts) for query, texts in sample]
            except _CANDIDATE_FAILURES as exc:
                from crossrank.backends.fidelity import Agreement

                agreements.append(
                    Agreement(candidate.label, 0.0, 0.0, float("inf"), False, error=str(exc))
                )
                continue
            agreement = self.fidelity_gate.measure(candidate.label, reference, scores)
            agreements.append(agreement)
            if agreement.passed:
                return Selection(
                    chosen=candidate.label,
                    reason=(
                        f"fastest candidate whose ranking agrees with fp32 on {len(sample)} "
                        f"calibration queries (tau >= {self.fidelity_gate.min_kendall_tau}, "
                        f"top-{self.fidelity_gate.top_k} overlap >= "
                        f"{self.fidelity_gate.min_top_k_overlap})"
                    ),
                    agreements=agreements,
                    gate=self.fidelity_gate,
                )
        return Selection(
            chosen=FP32_TORCH.label,
            reason="no faster variant met the fidelity gate; fp32 is the reference",
            agreements=agreements,
            gate=self.fidelity_gate,
        )

    @property
    def tokenizer(self) -> Any:
        self.load()
        return self._tokenizer

    @property
    def model_max_length(self) -> int:
        if self.max_length:
            return int(self.max_length)
        self.load()
        return _input_limit(self._tokenizer, None)

    # -- windowing capability ---------------------------------------------------------------

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
        room = self.model_max_length - _PAIR_SPECIAL_TOKENS
        query_tokens = len(
            self.tokenizer(query, add_special_tokens=False, verbose=False)["input_ids"]
        )
        return max(room - query_tokens, room // 2)

    # -- scoring ----------------------------------------------------------------------------

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        texts = list(texts)
        cached, keys = self._cache_lookup(query, texts)
        missing = [i for i, value in enumerate(cached) if value is None]
        if missing:
            subset = [texts[i] for i in missing]
            if self.micro_batch:
                fresh = self._micro_batcher().submit(query, subset).result()
            else:
                fresh = self.score_pairs([query] * len(subset), subset)
            self._cache_store(keys, missing, fresh)
            for index, value in zip(missing, fresh, strict=True):
                cached[index] = value
        return [float(value) for value in cached]  # type: ignore[arg-type]

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        if not self.micro_batch or not texts:
            return await super().ascore(query, texts)
        texts = list(texts)
        cached, keys = self._cache_lookup(query, texts)
        missing = [i for i, value in enumerate(cached) if value is None]
        if missing:
            if self._loaded is None:  # load off the event loop
                await asyncio.to_thread(self.load)
            future = self._micro_batcher().submit(query, [texts[i] for i in missing])
            fresh = await asyncio.wrap_future(future)
            self._cache_store(keys, missing, fresh)
            for index, value in zip(missing, fresh, strict=True):
                cached[index] = value
        return [float(value) for value in cached]  # type: ignore[arg-type]

    def _cache_lookup(self, query: str, texts: list[str]) -> tuple[list[float | None], list[Any]]:
        if self.score_cache is None:
            return [None] * len(texts), []
        return self.score_cache.lookup(self._cache_model_key(), query, texts)

    def _cache_store(self, keys: list[Any], missing: list[int], fresh: list[float]) -> None:
        if self.score_cache is not None:
            self.score_cache.store([keys[i] for i in missing], fresh)

    def _cache_model_key(self) -> tuple[Any, ...]:
        return (self.model, self.revision, self.variant.label, self.max_length, self.label_index)

    def _micro_batcher(self) -> MicroBatcher:
        if self._batcher is None:
            with self._load_lock:
                if self._batcher is None:
                    self._batcher = MicroBatcher(
                        self.score_pairs,
                        max_wait_s=self.micro_batch_wait_s,
                        max_pairs=max(self.batch_size, 1) * 8,
                    )
        return self._batcher

    def close(self) -> None:
        """Stop the micro-batching worker, if one was started."""
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None

    def score_pairs(self, queries: Sequence[str], texts: Sequence[str]) -> list[float]:
        """Raw scores of ``(queries[i], texts[i])`` pairs; queries may differ between pairs."""
        if len(queries) != len(texts):
            raise ConfigurationError(
                f"queries and texts differ in length: {len(queries)} vs {len(texts)}"
            )
        if not texts:
            return []
        self.load()
        runner = self._runner
        assert runner is not None
        encoded = self._encode(queries, texts)
        lengths = encoded.lengths
        order = np.argsort(-lengths, kind="stable")
        scores = np.empty(len(texts), dtype=np.float64)
        pad_id = self._tokenizer.pad_token_id or 0
        for batch in self._batches(order, lengths):
            ids, mask, types = _pad(encoded, batch, pad_id)
            logits = runner(ids, mask, types)
            scores[batch] = self._select_logit(logits)
        return scores.tolist()  # type: ignore[no-any-return]

    def _encode(self, queries: Sequence[str], texts: Sequence[str]) -> _Encoded:
        return _encode_pairs(self._tokenizer, queries, texts, max_length=self.model_max_length)

    def _batches(self, order: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """Consecutive slices of the length-sorted order, capped by count and token budget.

        With descending lengths the first pair of a batch is its longest, so the batch's
        padded size is ``count * lengths[first]``; the budget bounds exactly that.
        """
        budget = self.token_budget
        if budget is None:
            on_gpu = self._resolved_device is not None and self._resolved_device.startswith("cuda")
            budget = GPU_TOKEN_BUDGET if on_gpu else DEFAULT_TOKEN_BUDGET
        batches: list[np.ndarray] = []
        start = 0
        total = len(order)
        while start < total:
            longest = int(lengths[order[start]])
            size = max(1, min(self.batch_size, budget // max(longest, 1)))
            batches.append(order[start : start + size])
            start += size
        return batches

    def _select_logit(self, logits: np.ndarray) -> np.ndarray:
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


def _encode_pairs(
    tokenizer: Any, queries: Sequence[str], texts: Sequence[str], *, max_length: int
) -> _Encoded:
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
    return _Encoded(input_ids, encoded.get("token_type_ids"), lengths)


def _pad(
    encoded: _Encoded, batch: np.ndarray, pad_id: int
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


def _input_limit(tokenizer: Any, max_length: int | None) -> int:
    """Tokens per pair the model takes: ``max_length`` if set, else the tokenizer's limit
    (512 when the tokenizer reports its "no limit" sentinel)."""
    limit = max_length or getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and limit <= 100_000 else 512


def _sample_digest(sample: Sequence[tuple[str, Sequence[str]]]) -> str:
    """Identity of a calibration sample, for registry and on-disk keys."""
    return hashlib.sha256(
        json.dumps([[q, list(t)] for q, t in sample]).encode("utf-8", "surrogatepass")
    ).hexdigest()


def _variant_from_label(label: str) -> Variant:
    runtime, _, precision = label.partition("-")
    return parse_variant(precision, runtime, device="cuda" if precision == "fp16" else "cpu")


def _demo_calibration() -> list[tuple[str, Sequence[str]]]:
    """Every demo query against all bundled demo passages: near-misses on purpose."""
    from importlib import resources

    data = json.loads(
        resources.files("crossrank").joinpath("data/demo_kb.json").read_text(encoding="utf-8")
    )
    passages = [passage["text"] for passage in data["passages"]]
    return [(query["text"], passages) for query in data["queries"]]
