"""What a server admits and how it behaves under load, apart from how it reranks.

The reranking itself is the engine's configuration; these are the service's own limits, so
one saved engine config can be served small on a laptop and wide behind a load balancer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from crossrank.errors import ConfigurationError
from crossrank.secrets import Secret

#: Environment variable holding the accepted bearer tokens, comma-separated.
API_KEYS_ENV = "CROSSRANK_API_KEYS"


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    """Limits and behaviour of one serving process (or one Ray Serve replica).

    ``max_in_flight`` requests rerank at once (they share forward passes when the backend
    micro-batches); up to ``max_queue`` more wait for a slot; past that a request is answered
    429 at once with ``Retry-After: retry_after_s`` instead of queueing without bound.
    """

    #: Reported in responses and accepted in requests' ``model`` field (any value is accepted).
    model_name: str | None = None
    #: A request with more documents is answered 413.
    max_documents: int = 1000
    #: A request body larger than this many bytes is answered 413 before it is parsed.
    max_body_bytes: int = 4 * 1024 * 1024
    max_in_flight: int = 8
    max_queue: int = 64
    retry_after_s: int = 1
    #: How long shutdown waits for admitted requests to finish.
    drain_timeout_s: float = 30.0
    #: Bearer tokens a request must present; empty: no authentication.
    api_keys: tuple[Secret, ...] = field(default=(), repr=False)
    #: Seconds between warm-up attempts while the backend cannot score yet.
    warmup_retry_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("max_documents", "max_body_bytes", "max_in_flight", "retry_after_s"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("max_queue", self.max_queue, minimum=0)
        for name in ("drain_timeout_s", "warmup_retry_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigurationError(f"{name} must be a number >= 0, got {value!r}")
        if not all(isinstance(key, Secret) for key in self.api_keys):
            raise ConfigurationError("api_keys must be crossrank.Secret values")

    @property
    def capacity(self) -> int:
        """Requests admitted at once: reranking plus waiting."""
        return self.max_in_flight + self.max_queue


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}")


def load_api_keys(key_file: str | Path | None = None) -> tuple[Secret, ...]:
    """Bearer tokens from ``CROSSRANK_API_KEYS`` (comma-separated) and a file (one per line).

    The file is read once here; lines starting with ``#`` and blank lines are ignored. The
    values become :class:`Secret` tokens at once, so no repr or log line can show them.
    """
    values = [part for part in os.environ.get(API_KEYS_ENV, "").split(",") if part.strip()]
    if key_file is not None:
        path = Path(key_file)
        if not path.is_file():
            raise ConfigurationError(f"API key file {str(path)!r} does not exist")
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                values.append(line)
    return tuple(Secret.from_token(value.strip()) for value in values)
