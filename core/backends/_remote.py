"""What every rerank backend that calls a remote API needs, written once.

Cohere and Jina differ only in how one request is sent and what its body looks like; the
rest is the same problem and lives here:

* **provider limits** - a candidate list longer than the provider accepts in one request is
  split into batches that are scored concurrently (bounded) and merged back in input order;
  an optional per-document token limit is exposed through the engine's ``TokenWindowing``
  capability, so long documents are windowed instead of silently truncated by the provider;
* **resilience** - connect and total timeouts, retries with exponential backoff and jitter on
  429 / 5xx / transport errors, ``Retry-After`` honoured, no retry on any other 4xx; every
  retry is logged (``crossrank.backends`` logger) so it can be observed;
* **trust** - a provider answers with results sorted by score and an ``index`` into the
  request; missing, duplicate or out-of-range indices and non-finite scores raise
  :class:`~crossrank.errors.BackendResponseError` rather than misorder anything;
* **secrecy** - the API key lives in a :class:`SecretKey`, never in a repr, a message, a log
  line or :meth:`RemoteRerankBackend.to_config`; text that comes back from a server is
  scrubbed of the key and of ``Bearer`` tokens before it is put into an error.

Final failures raise :class:`~crossrank.errors.BackendUnavailableError` (after retries) or
:class:`~crossrank.errors.BackendResponseError` (untrustworthy 2xx body); the engine turns
either into a flagged first-stage fallback, or re-raises it when ``strict=True``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import logging
import math
import os
import random
import re
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

from crossrank.backends.base import BaseBackend
from crossrank.errors import (
    BackendResponseError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidInputError,
)

logger = logging.getLogger("crossrank.backends")

# The one place where the defaults of every API backend live.
DEFAULT_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_MAX_RETRIES = 4
DEFAULT_BACKOFF_BASE = 0.5
DEFAULT_BACKOFF_MAX = 8.0
DEFAULT_RETRY_AFTER_MAX = 60.0
DEFAULT_MAX_CONCURRENCY = 4
# httpcore rescans every pooled connection on each request, so a wide pool costs CPU; 20
# connections already exceed what rate limits of hosted rerank APIs let one client use.
DEFAULT_MAX_CONNECTIONS = 20

# How much of a server's error body is quoted in an exception: enough to read the reason.
_BODY_EXCERPT = 300

ClientT = TypeVar("ClientT")


# -- secrets --------------------------------------------------------------------------------


class SecretKey:
    """An API key that refuses to show itself: repr, str and format all print ``'***'``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The key itself; call only where it goes onto the wire."""
        return self._value

    def __repr__(self) -> str:
        return "SecretKey('***')"

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        return repr(self)

    def __reduce__(self) -> Any:
        raise TypeError("an API key is not serializable; pass it again (or via the env) on load")


def resolve_api_key(explicit: str | None, env_names: Sequence[str], provider: str) -> SecretKey:
    """The key from the argument, else from the first environment variable that is set."""
    if explicit is not None:
        if not isinstance(explicit, str) or not explicit.strip():
            raise ConfigurationError(f"{provider} api_key must be a non-empty string")
        return SecretKey(explicit.strip())
    for env_name in env_names:
        value = os.environ.get(env_name, "").strip()
        if value:
            return SecretKey(value)
    raise ConfigurationError(
        f"no {provider} API key: pass api_key= or set one of {', '.join(env_names)}"
    )


_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\",;)}\]]+")


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret and every ``Bearer`` token replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _BEARER.sub(r"\1***", text)


def public_url(url: str) -> str:
    """``url`` without user:password, so it can be shown in reprs, logs and configs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def check_base_url(url: str, provider: str) -> str:
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


def scores_in_input_order(payload: Any, expected: int, provider: str) -> list[float]:
    """Turn a ``{"results": [{"index", "relevance_score"}, ...]}`` body into input-order scores.

    Anything that could silently misorder candidates is an error: a missing result, an index
    that is out of range, repeated or not an integer, a score that is not a finite number.
    """
    if not isinstance(payload, dict):
        raise BackendResponseError(
            f"{provider} response is not a JSON object (got {type(payload).__name__})"
        )
    results = payload.get("results")
    if not isinstance(results, list):
        raise BackendResponseError(f"{provider} response has no 'results' list")
    scores: list[float | None] = [None] * expected
    for position, item in enumerate(results):
        if not isinstance(item, dict):
            raise BackendResponseError(f"{provider} result #{position} is not an object")
        index = item.get("index")
        if isinstance(index, bool) or not isinstance(index, int):
            raise BackendResponseError(
                f"{provider} result #{position} has a non-integer index {index!r}"
            )
        if not 0 <= index < expected:
            raise BackendResponseError(
                f"{provider} result #{position} has index {index}, outside 0..{expected - 1}"
            )
        if scores[index] is not None:
            raise BackendResponseError(f"{provider} returned index {index} more than once")
        value = item.get("relevance_score")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BackendResponseError(
                f"{provider} result for index {index} has a non-numeric relevance_score {value!r}"
            )
        if not math.isfinite(value):
            raise BackendResponseError(
                f"{provider} result for index {index} has a non-finite relevance_score {value!r}"
            )
        scores[index] = float(value)
    missing = [index for index, score in enumerate(scores) if score is None]
    if missing:
        shown = ", ".join(str(index) for index in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise BackendResponseError(
            f"{provider} returned {expected - len(missing)} results for {expected} documents; "
            f"missing indices {shown}{more}"
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


# -- option checks ----------------------------------------------------------------------------


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    return value


def _non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def _positive_float(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _non_negative_float(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigurationError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return float(value)


# -- the shared backend -----------------------------------------------------------------------


class RemoteRerankBackend(BaseBackend, Generic[ClientT]):
    """Batching, retries, validation and secrecy for a rerank API; subclasses send one request.

    A subclass implements :meth:`_new_sync_client`, :meth:`_new_async_client`, :meth:`_send`
    and :meth:`_asend`. ``_send``/``_asend`` make exactly one request for at most
    ``max_documents_per_request`` documents and return the decoded JSON body; they raise
    :class:`AttemptFailed` for a failed request and
    :class:`~crossrank.errors.BackendResponseError` for a 2xx body that is not JSON.

    Clients are created on first use, never in the constructor (no I/O at construction). The
    async client is kept per event loop: an HTTP connection pool belongs to the loop that
    opened it, and tests or apps that run several loops must not share one.

    Options shared by every API backend (defaults are the ``DEFAULT_*`` constants above):

    * ``max_documents_per_request`` - longer lists are split; ``max_concurrency`` batches of
      one call are in flight at once (threads for ``score``, tasks for ``ascore``);
    * ``max_tokens_per_doc`` - enables windowing at that many approximate tokens;
    * ``timeout`` / ``connect_timeout`` - ``ascore`` bounds each request's whole exchange by
      ``timeout``; the blocking client bounds each phase (read, write, pool wait) by
      ``timeout`` and connecting by ``connect_timeout``;
    * ``max_retries``, ``backoff_base``, ``backoff_max`` - retry number *n* waits between half
      and all of ``min(backoff_max, backoff_base * 2**(n-1))`` seconds, or the server's
      ``Retry-After`` (plus up to ``backoff_base`` of jitter); a ``Retry-After`` above
      ``retry_after_max`` ends the call at once rather than stall it;
    * ``max_connections`` - requests in flight per event loop (and per blocking client).
    """

    name = "remote"
    #: Documents the provider accepts in one request, when the user does not say otherwise.
    default_max_documents_per_request = 1000

    def __init__(
        self,
        *,
        model: str,
        api_key: SecretKey,
        base_url: str,
        max_tokens_per_doc: int | None,
        max_documents_per_request: int | None,
        max_concurrency: int,
        timeout: float,
        connect_timeout: float,
        max_retries: int,
        backoff_base: float,
        backoff_max: float,
        retry_after_max: float,
        max_connections: int,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise ConfigurationError(f"{self.name} model must be a non-empty string, got {model!r}")
        self.model = model.strip()
        self._api_key = api_key
        self.base_url = check_base_url(base_url, self.name)
        self.max_tokens_per_doc = (
            None
            if max_tokens_per_doc is None
            else _positive_int("max_tokens_per_doc", max_tokens_per_doc)
        )
        self.max_documents_per_request = _positive_int(
            "max_documents_per_request",
            self.default_max_documents_per_request
            if max_documents_per_request is None
            else max_documents_per_request,
        )
        self.max_concurrency = _positive_int("max_concurrency", max_concurrency)
        self.timeout = _positive_float("timeout", timeout)
        self.connect_timeout = _positive_float("connect_timeout", connect_timeout)
        self.max_retries = _non_negative_int("max_retries", max_retries)
        self.backoff_base = _non_negative_float("backoff_base", backoff_base)
        self.backoff_max = _non_negative_float("backoff_max", backoff_max)
        self.retry_after_max = _non_negative_float("retry_after_max", retry_after_max)
        self.max_connections = _positive_int("max_connections", max_connections)
        self._random = random.Random()
        self._lock = threading.Lock()
        self._sync_client: ClientT | None = None
        self._async_clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[ClientT, asyncio.Semaphore]
        ] = weakref.WeakKeyDictionary()

    # -- identity and configuration ----------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.model

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={self.model!r}, base_url={public_url(self.base_url)!r}, "
            f"api_key='***')"
        )

    def to_config(self) -> dict[str, Any]:
        """Every non-secret option, as keyword arguments that rebuild an equivalent backend.

        The API key is deliberately absent: a config is meant to be written to disk or logs;
        the rebuilt backend reads its key from the argument or the environment again.
        """
        return {
            "model": self.model,
            "base_url": public_url(self.base_url),
            "max_tokens_per_doc": self.max_tokens_per_doc,
            "max_documents_per_request": self.max_documents_per_request,
            "max_concurrency": self.max_concurrency,
            "timeout": self.timeout,
            "connect_timeout": self.connect_timeout,
            "max_retries": self.max_retries,
            "backoff_base": self.backoff_base,
            "backoff_max": self.backoff_max,
            "retry_after_max": self.retry_after_max,
            "max_connections": self.max_connections,
        }

    def __getstate__(self) -> Any:
        raise TypeError(
            f"{type(self).__name__} is not picklable (it holds an API key and live HTTP "
            "clients); rebuild it from to_config() instead"
        )

    @property
    def _secrets(self) -> tuple[str, ...]:
        return (self._api_key.reveal(),)

    # -- windowing capability (engine's TokenWindowing protocol) -----------------------------

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Approximate token spans; see :func:`approximate_token_spans` for the rule."""
        return approximate_token_spans(text)

    def window_token_budget(self, query: str) -> int | None:
        """``max_tokens_per_doc`` when set: longer documents are windowed, not truncated."""
        return self.max_tokens_per_doc

    # -- clients -----------------------------------------------------------------------------

    def _new_sync_client(self) -> ClientT:
        raise NotImplementedError

    def _new_async_client(self) -> ClientT:
        raise NotImplementedError

    def _client(self) -> ClientT:
        with self._lock:
            if self._sync_client is None:
                self._sync_client = self._new_sync_client()
            return self._sync_client

    def _aclient(self) -> ClientT:
        return self._async_slot()[0]

    def _async_slot(self) -> tuple[ClientT, asyncio.Semaphore]:
        """The running loop's client, and the gate that bounds its requests in flight.

        Requests wait at the gate rather than in httpcore's pool: the pool rescans every
        queued request against every connection each time one frees up, which turns a few
        hundred concurrent calls into seconds of CPU.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            slot = self._async_clients.get(loop)
            if slot is None:
                slot = (self._new_async_client(), asyncio.Semaphore(self.max_connections))
                self._async_clients[loop] = slot
            return slot

    def _close_client(self, client: ClientT) -> None:
        """Close a sync client; subclasses override."""

    async def _aclose_client(self, client: ClientT) -> None:
        """Close an async client; subclasses override."""

    def close(self) -> None:
        """Close the blocking client's connections (a later call opens new ones)."""
        with self._lock:
            client, self._sync_client = self._sync_client, None
        if client is not None:
            self._close_client(client)

    async def aclose(self) -> None:
        """Close the async client of the running loop and the blocking client."""
        loop = asyncio.get_running_loop()
        with self._lock:
            slot = self._async_clients.pop(loop, None)
        if slot is not None:
            await self._aclose_client(slot[0])
        self.close()

    # -- one request, provider specific -------------------------------------------------------

    def _send(self, query: str, documents: list[str]) -> Any:
        raise NotImplementedError

    async def _asend(self, query: str, documents: list[str]) -> Any:
        raise NotImplementedError

    # -- scoring ------------------------------------------------------------------------------

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        documents = self._checked(query, texts)
        if not documents:
            return []
        batches = self._batches(documents)
        if len(batches) == 1:
            return self._score_batch(query, batches[0])
        pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(self.max_concurrency, len(batches)),
            thread_name_prefix=f"crossrank-{self.name}",
        )
        try:
            futures = [pool.submit(self._score_batch, query, batch) for batch in batches]
            concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
            for future in futures:
                if future.done() and future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
            return [score for future in futures for score in future.result()]
        finally:
            # On failure, batches not yet started are dropped; running ones finish unobserved.
            pool.shutdown(wait=False, cancel_futures=True)

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        documents = self._checked(query, texts)
        if not documents:
            return []
        batches = self._batches(documents)
        if len(batches) == 1:
            return await self._ascore_batch(query, batches[0])
        gate = asyncio.Semaphore(self.max_concurrency)

        async def bounded(batch: list[str]) -> list[float]:
            async with gate:
                return await self._ascore_batch(query, batch)

        tasks = [asyncio.ensure_future(bounded(batch)) for batch in batches]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            return [score for task in tasks for score in task.result()]
        finally:
            # A failed batch, or a cancelled caller, must not leave sibling requests running.
            pending = [task for task in tasks if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    def _checked(self, query: str, texts: Sequence[str]) -> list[str]:
        if not isinstance(query, str):
            raise InvalidInputError(f"query must be a string, got {type(query).__name__}")
        documents = list(texts)
        for position, text in enumerate(documents):
            if not isinstance(text, str):
                raise InvalidInputError(
                    f"text #{position} must be a string, got {type(text).__name__}"
                )
        return documents

    def _batches(self, documents: list[str]) -> list[list[str]]:
        size = self.max_documents_per_request
        return [documents[start : start + size] for start in range(0, len(documents), size)]

    def _score_batch(self, query: str, documents: list[str]) -> list[float]:
        payload = self._with_retries(lambda: self._send(query, documents))
        return scores_in_input_order(payload, len(documents), self.name)

    async def _ascore_batch(self, query: str, documents: list[str]) -> list[float]:
        gate = self._async_slot()[1]

        async def attempt() -> Any:
            try:
                async with gate:
                    # The total timeout of one request, enforced on the whole exchange.
                    return await asyncio.wait_for(self._asend(query, documents), self.timeout)
            except asyncio.TimeoutError:
                raise AttemptFailed(
                    f"no complete answer within timeout={self.timeout:g}s", retryable=True
                ) from None

        payload = await self._awith_retries(attempt)
        return scores_in_input_order(payload, len(documents), self.name)

    # -- retries ------------------------------------------------------------------------------

    def _with_retries(self, attempt: Callable[[], Any]) -> Any:
        for attempt_number in range(1, self.max_retries + 2):
            try:
                return attempt()
            except AttemptFailed as failure:
                delay = self._next_delay(failure, attempt_number)
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _awith_retries(self, attempt: Callable[[], Awaitable[Any]]) -> Any:
        for attempt_number in range(1, self.max_retries + 2):
            try:
                return await attempt()
            except AttemptFailed as failure:
                delay = self._next_delay(failure, attempt_number)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _next_delay(self, failure: AttemptFailed, attempt_number: int) -> float:
        """Seconds to wait before the next attempt, or raise the final error."""
        attempts = self.max_retries + 1
        if not failure.retryable:
            raise self._final_error(failure, attempt_number, "not retryable") from None
        if attempt_number >= attempts:
            raise self._final_error(failure, attempt_number, "retries exhausted") from None
        if failure.retry_after is not None:
            if failure.retry_after > self.retry_after_max:
                raise self._final_error(
                    failure,
                    attempt_number,
                    f"server asked to retry after {failure.retry_after:g}s, more than "
                    f"retry_after_max={self.retry_after_max:g}s",
                ) from None
            # Honour the server's wait, plus a little jitter so clients do not stampede.
            delay = failure.retry_after + self._random.uniform(0.0, self.backoff_base)
        else:
            # Exponential backoff with "equal jitter": at least half the step, at most all of it.
            step = min(self.backoff_max, self.backoff_base * 2 ** (attempt_number - 1))
            delay = step / 2 + self._random.uniform(0.0, step / 2)
        logger.info(
            "crossrank: %s attempt %d/%d failed (%s); retrying in %.3fs",
            self.name,
            attempt_number,
            attempts,
            failure.detail,
            delay,
        )
        return delay

    def _final_error(
        self, failure: AttemptFailed, attempts: int, why: str
    ) -> BackendUnavailableError:
        noun = "attempt" if attempts == 1 else "attempts"
        message = redact(
            f"{self.name} rerank request to {public_url(self.base_url)} failed after "
            f"{attempts} {noun} ({why}): {failure.detail}",
            self._secrets,
        )
        return BackendUnavailableError(message, status_code=failure.status_code)
