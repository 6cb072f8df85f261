"""The local backend's options in four groups, each checked once and hashable for registry keys.

A constructor with twenty flat keywords hides which options change what. Grouped, each part
of the backend reads only its own group: loading reads :class:`ModelSource`, the scorer
:class:`Batching`, the variant loaders :class:`Execution`, the ``auto`` choice
:class:`AutoSettings`. The constructor still takes flat keywords, because a saved reranker
config stores backend options flat and JSON-able.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossrank.backends.local.fidelity import FidelityGate
from crossrank.errors import ConfigurationError

DEFAULT_CROSS_ENCODER = "cross-encoder/ms-marco-MiniLM-L-6-v2"

#: Padded tokens per forward pass when ``token_budget`` is not given. Measured with
#: ``benchmarks/local_backend.py`` on a quiet 2-core AVX-512 CPU (MiniLM-L6, 100 passages of
#: 61-320 tokens), budget -> x ``predict``: fp32 16384 -> 1.15, 4096 -> 1.34, 1024 -> 1.61,
#: 512 -> 1.54; bf16 4096 -> 2.34, 1024 -> 2.61; ONNX int8 4096 -> 2.90, 1024 -> 3.49. Small
#: batches keep activations in cache on a CPU; a GPU wants big ones.
DEFAULT_TOKEN_BUDGET = 1024
GPU_TOKEN_BUDGET = 16384

#: Options that no longer exist, with what to write instead (a clear error beats a TypeError).
REMOVED_OPTIONS = {
    "dtype": "dtype= was removed: pass precision= ('fp32', 'bf16', 'fp16', 'int8', "
    "'int8-mixed' or 'auto') and, if needed, runtime= ('torch', 'onnx' or 'openvino')",
    "calibration": "calibration= was renamed fidelity_sample= (the (query, texts) sample "
    "precision='auto' checks rankings on); 'calibration' means score calibration only",
}

#: A ranking sample: (query, texts) pairs.
Sample = tuple[tuple[str, tuple[str, ...]], ...]


def _positive_int(name: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class ModelSource:
    """Which weights, read how: everything that changes the loaded model or its outputs."""

    model: str
    revision: str | None = None
    max_length: int | None = None
    label_index: int | None = None
    trust_remote_code: bool = False
    local_files_only: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigurationError(f"model must be a non-empty id or path, got {self.model!r}")
        if self.max_length is not None and (
            not isinstance(self.max_length, int) or self.max_length < 8
        ):
            raise ConfigurationError(f"max_length must be an integer >= 8, got {self.max_length!r}")

    def torch_key(self, device: str, dtype: str) -> tuple[Any, ...]:
        """Registry key of one torch copy (``trust_remote_code`` apart: see the hardening tests)."""
        return (
            "cross-encoder",
            self.model,
            self.revision,
            device,
            dtype,
            self.max_length,
            self.trust_remote_code,
        )


@dataclass(frozen=True)
class Batching:
    """How pairs are cut into forward passes: at most ``batch_size`` pairs and
    ``token_budget`` padded tokens each (default by device)."""

    batch_size: int = 32
    token_budget: int | None = None

    def __post_init__(self) -> None:
        _positive_int("batch_size", self.batch_size)
        _positive_int("token_budget", self.token_budget, optional=True)

    def budget(self, device: str | None) -> int:
        if self.token_budget is not None:
            return self.token_budget
        on_gpu = device is not None and device.startswith("cuda")
        return GPU_TOKEN_BUDGET if on_gpu else DEFAULT_TOKEN_BUDGET


@dataclass(frozen=True)
class Execution:
    """Where and how a variant runs: device, threads, the artifact cache, compiling."""

    device: str = "auto"
    num_threads: int | None = None
    cache_dir: str | Path | None = None
    opset: int = 17
    compile: bool = True

    def __post_init__(self) -> None:
        _positive_int("num_threads", self.num_threads, optional=True)
        object.__setattr__(self, "compile", bool(self.compile))


@dataclass(frozen=True)
class AutoSettings:
    """What ``precision="auto"`` checks: the ranking sample and the gate it must pass.

    ``fidelity_sample`` ``None`` means every bundled demo query against all demo passages.
    """

    fidelity_sample: Sample | None = None
    fidelity_gate: FidelityGate = field(default_factory=FidelityGate)

    @classmethod
    def build(
        cls,
        fidelity_sample: Sequence[tuple[str, Sequence[str]]] | None,
        fidelity_gate: FidelityGate | Mapping[str, Any] | None,
    ) -> AutoSettings:
        try:
            gate = FidelityGate.coerce(fidelity_gate)
        except TypeError as exc:
            raise ConfigurationError(str(exc)) from exc
        return cls(_sample(fidelity_sample), gate)

    def sample(self) -> list[tuple[str, Sequence[str]]]:
        if self.fidelity_sample is not None:
            return [(query, list(texts)) for query, texts in self.fidelity_sample]
        return demo_fidelity_sample()


def _sample(value: Sequence[tuple[str, Sequence[str]]] | None) -> Sample | None:
    if value is None:
        return None
    try:
        pairs = tuple((query, tuple(texts)) for query, texts in value)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"fidelity_sample must be a list of (query, [texts]) pairs, got {value!r}"
        ) from exc
    if not pairs or not all(
        isinstance(query, str) and texts and all(isinstance(text, str) for text in texts)
        for query, texts in pairs
    ):
        raise ConfigurationError(
            "fidelity_sample must be a non-empty list of (query, [texts]) pairs of strings, "
            f"got {value!r}"
        )
    return pairs


def reject_removed(options: Mapping[str, Any], accepted: Sequence[str]) -> None:
    """A clear error for an option that was removed, renamed or never existed."""
    for name in options:
        if name in REMOVED_OPTIONS:
            raise ConfigurationError(REMOVED_OPTIONS[name])
    if options:
        raise ConfigurationError(
            f"unknown option(s) {sorted(options)} for the cross-encoder backend; "
            f"accepted: {sorted(accepted)}"
        )


def demo_fidelity_sample() -> list[tuple[str, Sequence[str]]]:
    """Every demo query against all bundled demo passages: near-misses on purpose."""
    import json
    from importlib import resources

    data = json.loads(
        resources.files("crossrank").joinpath("data/demo_kb.json").read_text(encoding="utf-8")
    )
    passages = [passage["text"] for passage in data["passages"]]
    return [(query["text"], passages) for query in data["queries"]]
