"""``RerankerConfig``: every engine option, declared once, with its default, check and dict form.

The engine, the three framework adapters, ``crossrank serve`` and the CLI all take their
options from here, so a new option is one field below and nothing else. A config is frozen
and validated when built; its ``to_dict`` is JSON-able, holds no credential (secrets are known
by type, see :mod:`crossrank.secrets`) and turns back into an equal config with ``from_dict``.

``RerankerConfig.from_options`` (and so ``Reranker(...)`` and every adapter) takes flat
keywords: engine options by name, the rest for the backend (``model``, ``device``,
``api_key``, ``http``...): ``Reranker("cohere", api_key=..., top_n=3)``. Backend options are
checked against the backend's constructor, so a typo still fails early, naming both lists.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from crossrank.backends import backend_class
from crossrank.backends.base import Backend
from crossrank.blend import Blend, parse_blend
from crossrank.errors import ConfigurationError
from crossrank.normalize import Normalizer, resolve_normalizer
from crossrank.secrets import Secret, as_secret
from crossrank.selective import SelectivePolicy, parse_policy
from crossrank.validation import (
    check_choice,
    check_latency_budget,
    check_threshold,
    check_top_n,
)
from crossrank.windows import AGGREGATIONS


@dataclass(frozen=True, kw_only=True)
class RerankerConfig:
    """How a :class:`~crossrank.Reranker` reranks; build it once, share it, save it.

    Example:
        >>> config = RerankerConfig(backend="embedding", top_n=3, blend="rrf")
        >>> RerankerConfig.from_dict(config.to_dict()) == config
        True
    """

    #: A backend name (``"cross-encoder"``, ``"cohere"``...), an import path
    #: ``"package.module:Class"``, or a ready backend instance (not serializable).
    backend: str | Backend = "cross-encoder"
    #: The backend's own keyword options; credentials among them become :class:`Secret`\ s.
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    #: Keep at most this many candidates (``None``: all).
    top_n: int | None = None
    #: ``"softmax"`` over the candidate set (default), ``"sigmoid"``, ``"minmax"``, ``"none"``,
    #: or a :class:`~crossrank.normalize.Normalizer` such as a fitted calibrator.
    normalization: str | Normalizer = "softmax"
    #: Softmax temperature.
    temperature: float = 1.0
    #: Drop candidates whose normalized score is below this.
    threshold: float | None = None
    #: Skip the reranker when the first stage is confident: a policy spec (``"margin:0.3"``)
    #: or a :class:`~crossrank.selective.SelectivePolicy`.
    selective: str | SelectivePolicy | None = None
    #: Fold the first-stage ranking back in: ``"rrf"``, ``"weighted:W"`` or a Blend.
    blend: str | Blend | None = None
    #: Cut texts longer than the model's input into overlapping windows.
    windowing: bool = True
    #: Tokens shared by neighbouring windows.
    window_stride: int = 32
    #: How window scores make a document score: ``"max"``, ``"mean"``, ``"first"``...
    window_aggregation: str = "max"
    #: Drop repeated candidates (same id, else same text) before scoring.
    deduplicate: bool = True
    #: Raise when the backend fails instead of returning the flagged first-stage order.
    strict: bool = False
    #: Answer within this many milliseconds: rerank the longest first-stage head that fits,
    #: keep the rest in first-stage order below it (see :mod:`crossrank.budget`).
    latency_budget_ms: float | None = None

    def __post_init__(self) -> None:
        backend_options = dict(_mapping("backend_options", self.backend_options))
        if isinstance(self.backend, str):
            cls = backend_class(self.backend)
            _check_backend_options(self.backend, cls, backend_options)
            for name in getattr(cls, "secret_options", ()):
                if name in backend_options:
                    backend_options[name] = as_secret(backend_options[name], option=name)
        elif isinstance(self.backend, Backend):
            if backend_options:
                raise ConfigurationError(
                    f"backend options {sorted(backend_options)} apply only when the backend is "
                    f"given by name; configure the {type(self.backend).__name__} instance instead"
                )
        else:
            raise ConfigurationError(
                "backend must be a backend name, an import path 'module:Class' or an object "
                f"with score/ascore, got {self.backend!r}"
            )
        object.__setattr__(self, "backend_options", MappingProxyType(backend_options))
        _check_number("temperature", self.temperature, positive=True)
        normalizer = resolve_normalizer(self.normalization, temperature=self.temperature)
        check_top_n(self.top_n)
        check_threshold(self.threshold, normalizer.bounds, normalizer.name)
        if isinstance(self.selective, str):
            parse_policy(self.selective)
        elif self.selective is not None and not isinstance(self.selective, SelectivePolicy):
            raise ConfigurationError(
                "selective must be a policy spec (e.g. 'margin:0.3') or a SelectivePolicy, "
                f"got {self.selective!r}"
            )
        parse_blend(self.blend)
        for name in ("windowing", "deduplicate", "strict"):
            if not isinstance(getattr(self, name), bool):
                value = getattr(self, name)
                raise ConfigurationError(f"{name} must be True or False, got {value!r}")
        stride = self.window_stride
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 0:
            raise ConfigurationError(f"window_stride must be an integer >= 0, got {stride!r}")
        check_choice("window_aggregation", self.window_aggregation, AGGREGATIONS)
        check_latency_budget(self.latency_budget_ms)

    # -- building ---------------------------------------------------------------------------

    @classmethod
    def engine_options(cls) -> tuple[str, ...]:
        """The names of the engine's own options (every field but backend and its options)."""
        return tuple(f.name for f in fields(cls) if f.name not in ("backend", "backend_options"))

    @classmethod
    def from_options(cls, backend: str | Backend | None = None, **options: Any) -> RerankerConfig:
        """A config from flat keywords: engine options by name, the rest for the backend."""
        engine = set(cls.engine_options())
        backend_options = dict(_mapping("backend_options", options.pop("backend_options", None)))
        if backend is None:
            backend = options.pop("backend", "cross-encoder")
        elif "backend" in options:
            raise ConfigurationError("backend was given twice")
        for name in [name for name in options if name not in engine]:
            backend_options[name] = options.pop(name)
        return cls(backend=backend, backend_options=backend_options, **options)  # type: ignore[arg-type]

    def replace(self, **options: Any) -> RerankerConfig:
        """A copy with ``options`` changed (flat keywords, as :meth:`from_options` takes)."""
        current: dict[str, Any] = {
            name: getattr(self, name) for name in self.engine_options()
        }
        backend_options = dict(self.backend_options)
        backend_options.update(_mapping("backend_options", options.pop("backend_options", None)))
        current.update(options)
        return RerankerConfig.from_options(
            current.pop("backend", self.backend), backend_options=backend_options, **current
        )

    # -- saving -----------------------------------------------------------------------------

    @property
    def serializable(self) -> bool:
        """Whether :meth:`to_dict` will work (no instance where a name or spec is needed)."""
        try:
            self.to_dict()
        except ConfigurationError:
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form with no credential in it; :meth:`from_dict` reverses it.

        An environment-variable secret is written as the variable names; a token secret is
        left out (the loader gives it again or sets the variable). Any other backend option is
        kept as it is, whatever its name; one with a ``to_dict()`` is written as that.
        """
        if not isinstance(self.backend, str):
            raise ConfigurationError(
                f"this config holds a {type(self.backend).__name__} instance; only backends "
                "given by name or import path ('module:Class') can be saved"
            )
        return {
            "backend": self.backend,
            "backend_options": {
                name: _saved(value)
                for name, value in self.backend_options.items()
                if not (isinstance(value, Secret) and value.is_token)
            },
            **{name: _spec(name, getattr(self, name)) for name in self.engine_options()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **overrides: Any) -> RerankerConfig:
        """Rebuild from :meth:`to_dict`; ``overrides`` (flat keywords, e.g. ``api_key=``) win."""
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"reranker config must be a mapping, got {data!r}")
        options = dict(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown reranker config keys: {unknown}; expected some of {sorted(known)}"
            )
        backend_options = dict(_mapping("backend_options", options.pop("backend_options", None)))
        saved_strings = {name for name, value in backend_options.items() if isinstance(value, str)}
        loading_options = dict(_mapping("backend_options", overrides.pop("backend_options", None)))
        backend_options.update(loading_options)
        options.update(overrides)
        config = cls.from_options(backend_options=backend_options, **options)
        literal = sorted(
            name
            for name in saved_strings - set(loading_options) - set(overrides)
            if isinstance(config.backend_options.get(name), Secret)
        )
        if literal:
            raise ConfigurationError(
                f"a saved config must not hold a literal credential ({literal}); save "
                "Secret.from_env_var(...) instead, or give the key when loading"
            )
        return config

    def __reduce__(self) -> tuple[Any, ...]:
        options = {name: getattr(self, name) for name in self.engine_options()}
        return (_rebuild_config, (self.backend, dict(self.backend_options), options))

    def __repr__(self) -> str:
        shown = {
            name: getattr(self, name)
            for name in self.engine_options()
            if getattr(self, name) != _DEFAULTS[name]
        }
        parts = [f"backend={_short_backend(self.backend)!r}"]
        parts += [f"{name}={value!r}" for name, value in self.backend_options.items()]
        parts += [f"{name}={value!r}" for name, value in shown.items()]
        return f"RerankerConfig({', '.join(parts)})"


def _rebuild_config(
    backend: str | Backend, backend_options: dict[str, Any], options: dict[str, Any]
) -> RerankerConfig:
    return RerankerConfig(backend=backend, backend_options=backend_options, **options)


_DEFAULTS = {
    f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
    for f in fields(RerankerConfig)
}


def _short_backend(backend: str | Backend) -> str:
    return backend if isinstance(backend, str) else type(backend).__name__


def _mapping(name: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise ConfigurationError(
            f"{name} must be a mapping of option names to values, got {value!r}"
        )
    return value


def _check_number(name: str, value: Any, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ConfigurationError(f"{name} must be > 0, got {value!r}")


def _check_backend_options(name: str, cls: type[Any], options: Mapping[str, Any]) -> None:
    accepted = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) {unknown} for backend {name!r}; the backend accepts "
            f"{sorted(p for p in accepted if p != 'self')} and the engine "
            f"{list(RerankerConfig.engine_options())}"
        )


def _saved(value: Any) -> Any:
    """A backend option as JSON: secrets and policy objects by their own ``to_dict``."""
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if isinstance(value, tuple):
        return list(value)
    return value


def _spec(name: str, value: Any) -> Any:
    """An engine option as JSON: objects by their spec string, refused when they have none."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    spec = getattr(value, "spec", None)
    if isinstance(spec, str):
        return spec
    raise ConfigurationError(
        f"{name} is a {type(value).__name__} object without a spec string; give it by name "
        "(or pass the object again when loading) to save this config"
    )


__all__ = ["RerankerConfig"]
