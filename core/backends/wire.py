"""What crosses the wire to a rerank API and what comes back, checked and scrubbed.

The pieces every API backend shares that are not about when or how often to send: a
provider described as data (:class:`ProviderSpec`), turning a failed exchange into a
retry decision (:class:`AttemptFailed`), refusing an answer that could misorder anything
(:func:`scores_in_input_order`), and keeping keys out of every message and log record
(:func:`redact`, :func:`protect_logs`). :mod:`crossrank.backends.http` does the sending.
"""

from __future__ import annotations

import email.utils
import functools
import importlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from crossrank.errors import BackendResponseError, ConfigurationError, missing_dependency

# How much of a server's error body is quoted in an exception: enough to read the reason.
_BODY_EXCERPT = 300
# How much of one odd value from a 2xx body is quoted.
_VALUE_EXCERPT = 60


# -- secrets in text ----------------------------------------------------------------------------

_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\",;)}\]]+")


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret and every ``Bearer`` token replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _BEARER.sub(r"\1***", text)


# Keys in use in this process, scrubbed from the HTTP stack's own log records. Values are only
# added (a key stays in the process's memory anyway); the filter costs nothing unless those
# loggers are enabled at DEBUG.
_KEYS_IN_USE: set[str] = set()
_KEYS_LOCK = threading.Lock()
# The loggers of the HTTP stack crossrank drives. A filter on a logger sees only records
# logged on that very logger, so each child httpcore logs on is named.
_HTTP_STACK_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.connection_pool",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


class _RedactingFilter(logging.Filter):
    """Rewrites a record's message with the keys in use (and Bearer tokens) scrubbed."""

    def filter(self, record: logging.LogRecord) -> bool:
        with _KEYS_LOCK:
            secrets = tuple(_KEYS_IN_USE)
        try:
            message = record.getMessage()
        except Exception:  # a broken record is the logging module's problem, not ours
            return True
        cleaned = redact(message, secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_REDACTING_FILTER = _RedactingFilter()


def protect_logs(secret_value: str | None) -> None:
    """Scrub ``secret_value`` from httpx's and httpcore's log records from now on.

    Those libraries log request and response headers at DEBUG as they are, so a server that
    echoes ``Authorization`` in a header would otherwise put the key into the application's
    log. Installed when a key is first put on the wire; harmless to call repeatedly.
    """
    if not secret_value or secret_value in _KEYS_IN_USE:
        return
    with _KEYS_LOCK:
        _KEYS_IN_USE.add(secret_value)
    names = set(_HTTP_STACK_LOGGERS)
    names.update(
        name
        for name in list(logging.Logger.manager.loggerDict)
        if name.startswith(("httpx.", "httpcore."))
    )
    for name in names:
        target = logging.getLogger(name)
        if _REDACTING_FILTER not in target.filters:
            target.addFilter(_REDACTING_FILTER)


def require(module: str, *, package: str, extra: str) -> Any:
    """Import an optional dependency, or raise the error that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing_dependency(package, extra) from exc


@functools.lru_cache(maxsize=1)
def shared_ssl_context() -> Any:
    """One TLS context for every client this process opens.

    Building one loads the CA bundle (about 45 ms); a client per event loop would pay that
    on every ``asyncio.run``. The context only verifies, so sharing it is safe.
    """
    import httpx

    return httpx.create_ssl_context()


def public_url(url: str) -> str:
    """``url`` without user:password, so it can be shown in reprs, logs and configs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def check_base_url(url: Any, provider: str) -> str:
    """A usable http(s) base URL without a trailing slash."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"{provider} base_url must be a non-empty URL, got {url!r}")
    cleaned = url.strip().rstrip("/")
    parts = urlsplit(cleaned)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"{provider} base_url must be an http(s) URL with a host, got {public_url(cleaned)!r}"
        )
    return cleaned


# -- one attempt's failure --------------------------------------------------------------------


class AttemptFailed(Exception):
    """One request failed; says whether to try again. The detail is already sanitized."""

    def __init__(
        self,
        detail: str,
        *,
        retryable: bool,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retryable = retryable
        self.status_code = status_code
        self.retry_after = retry_after


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date), else None.

    Fractional seconds are accepted too: some gateways send them, and they cost nothing.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def failure_from_status(
    status_code: int,
    headers: Mapping[str, str] | None,
    body_text: str,
    secrets: Sequence[str],
) -> AttemptFailed:
    """An HTTP error answer: 429 and 5xx are worth retrying, every other status is final."""
    retry_after = None
    if headers:
        lowered = {str(key).lower(): str(value) for key, value in headers.items()}
        retry_after = parse_retry_after(lowered.get("retry-after"))
    # Redact before cutting: a cut could leave half a key that no longer matches.
    excerpt = redact(" ".join(body_text.split()), secrets)[:_BODY_EXCERPT]
    detail = f"HTTP {status_code}" + (f": {excerpt}" if excerpt else "")
    return AttemptFailed(
        detail,
        retryable=status_code == 429 or status_code >= 500,
        status_code=status_code,
        retry_after=retry_after,
    )


def failure_from_transport(exc: BaseException, secrets: Sequence[str]) -> AttemptFailed:
    """A connection, protocol or timeout error: the request may be repeated (rerank is pure)."""
    message = redact(str(exc), secrets)[:_BODY_EXCERPT]
    detail = type(exc).__name__ + (f": {message}" if message else "")
    return AttemptFailed(detail, retryable=True)


# -- validating what came back ----------------------------------------------------------------


@dataclass(frozen=True)
class AnswerShape:
    """Where a provider puts its results: the list's field (``None``: the body is the list),
    and the names of the index and score fields in each result."""

    results_field: str | None = "results"
    index_field: str = "index"
    score_field: str = "relevance_score"


COHERE_SHAPE = AnswerShape()


def scores_in_input_order(
    payload: Any,
    expected: int,
    provider: str,
    *,
    shape: AnswerShape = COHERE_SHAPE,
    secrets: Sequence[str] = (),
) -> list[float]:
    """Turn a rerank answer into input-order scores, or refuse it.

    Anything that could silently misorder candidates is an error: a missing result, an index
    that is out of range, repeated or not a JSON integer (``6.0`` and ``"5"`` included), a
    score that is not a finite number. Values quoted in the error are scrubbed of
    ``secrets``: a server may echo anything, the key included, in any field.
    """

    def refuse(message: str) -> BackendResponseError:
        return BackendResponseError(redact(message, secrets))

    def shown(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= _VALUE_EXCERPT else text[:_VALUE_EXCERPT] + "..."

    if shape.results_field is None:
        results = payload
        if not isinstance(results, list):
            raise refuse(f"{provider} response is not a JSON list (got {type(payload).__name__})")
    else:
        if not isinstance(payload, dict):
            raise refuse(
                f"{provider} response is not a JSON object (got {type(payload).__name__})"
            )
        results = payload.get(shape.results_field)
        if not isinstance(results, list):
            raise refuse(f"{provider} response has no {shape.results_field!r} list")
    scores: list[float | None] = [None] * expected
    score_name = shape.score_field
    for position, item in enumerate(results):
        if not isinstance(item, dict):
            raise refuse(f"{provider} result #{position} is not an object")
        index = item.get(shape.index_field)
        if isinstance(index, bool) or not isinstance(index, int):
            raise refuse(f"{provider} result #{position} has a non-integer index {shown(index)}")
        if not 0 <= index < expected:
            raise refuse(
                f"{provider} result #{position} has index {index}, outside 0..{expected - 1}"
            )
        if scores[index] is not None:
            raise refuse(f"{provider} returned index {index} more than once")
        value = item.get(score_name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise refuse(
                f"{provider} result for index {index} has a non-numeric {score_name} {shown(value)}"
            )
        if not math.isfinite(value):
            raise refuse(
                f"{provider} result for index {index} has a non-finite {score_name} {value!r}"
            )
        scores[index] = float(value)
    missing = [index for index, score in enumerate(scores) if score is None]
    if missing:
        listed = ", ".join(str(index) for index in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise refuse(
            f"{provider} returned {expected - len(missing)} results for {expected} documents; "
            f"missing indices {listed}{more}"
        )
    return [float(score) for score in scores]  # type: ignore[arg-type]


# -- approximate tokens for windowing ---------------------------------------------------------

# CJK ideographs, kana and hangul: real tokenizers spend about one token per character.
_CJK = "\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff"
# A token is one CJK character, a run of at most four other word characters, or one symbol.
_APPROX_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]{{1,4}}|[^\w\s]")


def approximate_token_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of approximate tokens; over-counts real subword tokens on purpose.

    Provider tokenizers are not available offline, so windows are planned on a stand-in that
    cuts words into pieces of at most four characters (English subword tokenizers average
    about four characters per token, and whole common words are a single token), counts each
    CJK character and each punctuation mark as one token. It errs on the side of more tokens,
    so a window planned to fit ``max_tokens_per_doc`` is not truncated by the provider.
    """
    return [match.span() for match in _APPROX_TOKEN.finditer(text)]


# -- what a provider is -----------------------------------------------------------------------


@dataclass(frozen=True)
class RerankRequest:
    """What a provider's request builder gets: the parts of one request."""

    model: str | None
    query: str
    documents: list[str]
    max_tokens_per_doc: int | None


@dataclass(frozen=True)
class ProviderSpec:
    """A rerank API as data: adding a provider is writing one of these.

    ``key_env`` lists the environment variables read for the key when none is given, in
    order; empty means the server needs no key unless one is passed. ``base_url`` is the
    default (``None``: the caller must give one, as for self-hosted servers); requests go to
    ``base_url + path``. ``max_documents_per_request`` is the provider's documented cap (or
    a prudent one where none is documented); longer lists are split into batches.
    """

    name: str
    label: str
    base_url: str | None
    path: str
    key_env: tuple[str, ...]
    build_request: Callable[[RerankRequest], dict[str, Any]]
    answer: AnswerShape = COHERE_SHAPE
    max_documents_per_request: int = 1000
    default_model: str | None = None
    auth_header: str = "Authorization"
    auth_prefix: str = "Bearer "
    #: Fields of an error body that hold the human-readable reason, tried in order.
    error_fields: tuple[str, ...] = ("message", "detail", "error")


def error_text(body: Any, fields: Sequence[str]) -> str:
    """The reason in a decoded error body, else the whole body as text."""
    if isinstance(body, dict):
        for name in fields:
            if body.get(name) is not None:
                return str(body[name])
    return "" if body is None else str(body)


__all__ = [
    "AnswerShape",
    "AttemptFailed",
    "ProviderSpec",
    "RerankRequest",
    "approximate_token_spans",
    "check_base_url",
    "error_text",
    "failure_from_status",
    "failure_from_transport",
    "parse_retry_after",
    "protect_logs",
    "public_url",
    "redact",
    "require",
    "scores_in_input_order",
    "shared_ssl_context",
]
