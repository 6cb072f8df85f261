"""What every rerank backend that calls a remote API needs, written once.

Providers differ in a URL, a key variable, a request body and the names of two fields in the
answer (see :mod:`crossrank.backends.providers`); checking and scrubbing what crosses the
wire is :mod:`crossrank.backends.wire`; everything else is the same problem and lives here:

* **one policy** - :class:`HttpPolicy` holds timeouts, the per-call deadline, retries,
  backoff, the ``Retry-After`` cap, concurrency and connection limits, and travels as the one
  backend option ``http=`` (an :class:`HttpPolicy` or a mapping of its fields);
* **provider limits** - a candidate list longer than the provider accepts in one request is
  split into batches that are scored concurrently (bounded) and merged back in input order;
  an optional per-document token limit is exposed through the engine's ``TokenWindowing``
  capability, so long documents are windowed instead of silently truncated by the provider;
* **resilience** - ``timeout`` bounds each attempt's whole exchange (sync and async alike),
  ``deadline_s`` bounds the whole call across retries and batches, and the error says which
  of the two fired; retries with exponential backoff and jitter on 429 / 5xx / transport
  errors, ``Retry-After`` honoured, no retry on any other 4xx; every retry is logged
  (``crossrank.backends`` logger);
* **trust** - missing, duplicate, out-of-range or non-integer indices and non-finite scores
  raise :class:`~crossrank.errors.BackendResponseError` rather than misorder anything;
* **secrecy** - the key is a :class:`crossrank.secrets.Secret`, read only where it goes onto
  the wire; every message built from what a server sent (error bodies and 2xx bodies alike)
  is scrubbed of the key and of ``Bearer`` tokens, and the loggers of the HTTP stack get a
  redacting filter once a key is in use;
* **lifecycle** - clients are opened on first use; an async client belongs to its event loop
  and is closed when that loop shuts down (``asyncio.run`` and friends), so repeated
  ``asyncio.run`` calls do not pile up sockets; ``close()`` / ``aclose()`` close them early.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import random
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from crossrank.backends.base import BaseBackend
from crossrank.backends.wire import (
    AttemptFailed,
    ProviderSpec,
    RerankRequest,
    approximate_token_spans,
    check_base_url,
    protect_logs,
    public_url,
    redact,
    scores_in_input_order,
)
from crossrank.errors import (
    BackendResponseError,
    BackendUnavailableError,
    ConfigurationError,
    InvalidInputError,
)
from crossrank.secrets import Secret, as_secret

logger = logging.getLogger("crossrank.backends")

ClientT = TypeVar("ClientT")


# -- option checks ----------------------------------------------------------------------------


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    return value


def _non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def _seconds(name: str, value: Any, *, allow_zero: bool) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be a number of seconds {bound}, got {value!r}")
    return float(value)


# -- the policy -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpPolicy:
    """How an API backend talks to its server: one value, saved and loaded as a dict.

    * ``timeout`` - the most one attempt may take, connecting, sending and reading the whole
      answer included (a server that drips its body slowly is cut off at this bound);
    * ``connect_timeout`` - the most connecting may take, within ``timeout``;
    * ``deadline_s`` - the most one ``score`` / ``ascore`` call may take, across every retry
      and batch; ``None`` leaves the call bounded by the retries alone;
    * ``max_retries``, ``backoff_base``, ``backoff_max`` - retry number *n* waits between half
      and all of ``min(backoff_max, backoff_base * 2**(n-1))`` seconds, or the server's
      ``Retry-After`` (plus up to ``backoff_base`` of jitter);
    * ``retry_after_max`` - a ``Retry-After`` longer than this ends the call at once rather
      than stall it;
    * ``max_concurrency`` - batches of one call in flight at once;
    * ``max_connections`` - requests in flight per event loop (and per blocking client).
      httpcore rescans every pooled connection on each request, so a wide pool costs CPU; 20
      already exceeds what the rate limits of hosted rerank APIs let one client use.
    """

    timeout: float = 30.0
    connect_timeout: float = 5.0
    deadline_s: float | None = None
    max_retries: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    retry_after_max: float = 60.0
    max_concurrency: int = 4
    max_connections: int = 20

    def __post_init__(self) -> None:
        checked = {
            "timeout": _seconds("timeout", self.timeout, allow_zero=False),
            "connect_timeout": _seconds("connect_timeout", self.connect_timeout, allow_zero=False),
            "deadline_s": None
            if self.deadline_s is None
            else _seconds("deadline_s", self.deadline_s, allow_zero=False),
            "max_retries": _non_negative_int("max_retries", self.max_retries),
            "backoff_base": _seconds("backoff_base", self.backoff_base, allow_zero=True),
            "backoff_max": _seconds("backoff_max", self.backoff_max, allow_zero=True),
            "retry_after_max": _seconds("retry_after_max", self.retry_after_max, allow_zero=True),
            "max_concurrency": _positive_int("max_concurrency", self.max_concurrency),
            "max_connections": _positive_int("max_connections", self.max_connections),
        }
        for name, value in checked.items():  # ints given for seconds are stored as floats
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready; :meth:`from_dict` reads it back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HttpPolicy:
        """A policy from a mapping of some of its fields; unknown names are refused by name."""
        if not isinstance(data, Mapping):
            raise ConfigurationError(
                f"http must be an HttpPolicy or a mapping of its fields, got {type(data).__name__}"
            )
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(str(name) for name in data if name not in known)
        if unknown:
            raise ConfigurationError(
                f"unknown http option(s) {unknown}; HttpPolicy fields are {sorted(known)}"
            )
        return cls(**dict(data))

    @classmethod
    def coerce(cls, value: HttpPolicy | Mapping[str, Any] | None) -> HttpPolicy:
        """What a caller gave for ``http=``: a policy, a mapping of its fields, or nothing."""
        if value is None:
            return cls()
        if isinstance(value, HttpPolicy):
            return value
        return cls.from_dict(value)


# -- async clients that close with their loop ---------------------------------------------------


class _LoopSlot(Generic[ClientT]):
    """A loop's client, the gate bounding its requests, and the guard that closes it."""

    __slots__ = ("client", "gate", "guard", "ready")

    def __init__(self, client: ClientT, gate: asyncio.Semaphore) -> None:
        self.client = client
        self.gate = gate
        self.guard: AsyncIterator[None] | None = None
        self.ready = False


async def _close_with_loop(
    owner: weakref.ReferenceType[RemoteRerankBackend[Any]],
    loop: asyncio.AbstractEventLoop,
    slot: _LoopSlot[Any],
) -> AsyncIterator[None]:
    """An async generator parked on ``yield`` for the life of ``loop``.

    The loop registers every async generator it starts and finalizes them all when it shuts
    down (``asyncio.run``, ``asyncio.Runner`` and pytest-asyncio call ``shutdown_asyncgens``);
    finalizing this one closes the loop's HTTP client while the loop can still run the close.
    Unlike a background task it never shows up in ``asyncio.all_tasks()``.
    """
    try:
        yield
    finally:
        backend = owner()
        if backend is not None:
            backend._forget_slot(loop, slot)
            await backend._aclose_client(slot.client)


# -- the shared backend -----------------------------------------------------------------------


class RemoteRerankBackend(BaseBackend, Generic[ClientT]):
    """Batching, retries, bounds, validation, secrecy and client lifecycle for a rerank API.

    A subclass names its :class:`ProviderSpec` in ``provider`` and implements
    :meth:`_new_sync_client`, :meth:`_new_async_client`, :meth:`_send` and :meth:`_asend`
    (exactly one request for at most ``max_documents_per_request`` documents, returning the
    decoded JSON body; :class:`AttemptFailed` for a failed request,
    :class:`~crossrank.errors.BackendResponseError` for a 2xx body that is not JSON).

    Options: ``model`` (the provider's default when omitted); ``api_key`` (``None``: the
    provider's key variables, a string: a token, or a :class:`crossrank.secrets.Secret` /
    its serialized env-var form); ``base_url``; ``http`` (:class:`HttpPolicy` or a mapping of
    its fields); ``max_tokens_per_doc`` (enables windowing at that many approximate tokens);
    ``max_documents_per_request`` (the provider's cap when omitted); ``extra_body`` (fields
    added to every request body, for provider options crossrank does not name).

    The key is checked once at construction, so a missing variable is a clear error there
    and not a fallback at the first call; its value is read again when a client is opened
    (on first use), which is where it goes onto the wire.
    """

    name = "remote"
    provider: ClassVar[ProviderSpec]
    secret_options: ClassVar[tuple[str, ...]] = ("api_key",)

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key: str | Secret | Mapping[str, Any] | None = None,
        base_url: str | None = None,
        http: HttpPolicy | Mapping[str, Any] | None = None,
        max_tokens_per_doc: int | None = None,
        max_documents_per_request: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        self._require_dependencies()  # fail here, naming the extra, not at the first call
        spec = self.provider
        model = spec.default_model if model is None else model
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise ConfigurationError(f"{self.name} model must be a non-empty string, got {model!r}")
        self.model = None if model is None else model.strip()
        self.policy = HttpPolicy.coerce(http)
        self._api_key = self._secret(api_key)
        self.base_url = check_base_url(self._default_base_url(base_url), self.name)
        self.max_tokens_per_doc = (
            None
            if max_tokens_per_doc is None
            else _positive_int("max_tokens_per_doc", max_tokens_per_doc)
        )
        self.max_documents_per_request = _positive_int(
            "max_documents_per_request",
            spec.max_documents_per_request
            if max_documents_per_request is None
            else max_documents_per_request,
        )
        if extra_body is not None and not isinstance(extra_body, Mapping):
            raise ConfigurationError(
                f"extra_body must be a mapping of request fields, got {type(extra_body).__name__}"
            )
        self.extra_body = dict(extra_body or {})
        self._random = random.Random()
        self._lock = threading.Lock()
        self._sync_client: ClientT | None = None
        self._async_clients: dict[asyncio.AbstractEventLoop, _LoopSlot[ClientT]] = {}

    # -- construction helpers -------------------------------------------------------------------

    def _require_dependencies(self) -> None:
        """Import what the subclass needs; raise MissingDependencyError naming the extra."""

    def _default_base_url(self, given: str | None) -> Any:
        if given is not None:
            return given
        if self.provider.base_url is None:
            raise ConfigurationError(
                f"{self.name} needs base_url= (the address of your {self.provider.label} server)"
            )
        return self.provider.base_url

    def _secret(self, api_key: Any) -> Secret | None:
        spec = self.provider
        try:
            secret = as_secret(api_key, option="api_key")
        except ConfigurationError as exc:
            raise ConfigurationError(f"{self.name} api_key is unusable: {exc}") from None
        if secret is None and spec.key_env:
            secret = Secret.from_env_var(*spec.key_env, strict=True)
        if secret is not None:
            try:
                secret.resolve_value()  # fail here, naming the variables, not at first call
            except ConfigurationError:
                names = ", ".join(secret.env_vars)
                raise ConfigurationError(
                    f"no {spec.label} API key: pass api_key= or set one of {names}"
                ) from None
        return secret

    # -- identity and configuration ----------------------------------------------------------

    @property
    def model_name(self) -> str | None:
        return self.model

    def __repr__(self) -> str:
        key = "None" if self._api_key is None else repr(self._api_key)
        return (
            f"{type(self).__name__}(model={self.model!r}, base_url={public_url(self.base_url)!r}, "
            f"api_key={key})"
        )

    def to_config(self) -> dict[str, Any]:
        """Keyword arguments that rebuild an equivalent backend, safe to write anywhere.

        An environment-variable key is saved as where it comes from (its ``to_dict()``); a
        token key is left out: the rebuilt backend gets it again from the caller.
        """
        config: dict[str, Any] = {
            "model": self.model,
            "base_url": public_url(self.base_url),
            "http": self.policy.to_dict(),
            "max_tokens_per_doc": self.max_tokens_per_doc,
            "max_documents_per_request": self.max_documents_per_request,
            "extra_body": dict(self.extra_body),
        }
        if self._api_key is not None and not self._api_key.is_token:
            config["api_key"] = self._api_key.to_dict()
        return config

    def __reduce__(self) -> Any:
        if self._api_key is not None and self._api_key.is_token:
            raise TypeError(
                f"{type(self).__name__} is not picklable while it holds a literal API key; "
                "pass api_key=Secret.from_env_var(...) so the key is read where it is loaded"
            )
        return (_rebuild, (type(self), self.to_config()))

    @property
    def _secrets(self) -> tuple[str, ...]:
        value = self._key_value()
        return (value,) if value else ()

    def _key_value(self) -> str | None:
        """The key as it goes onto the wire (``None``: no key); also scrubbed from logs."""
        if self._api_key is None:
            return None
        value = self._api_key.resolve_value()
        protect_logs(value)
        return value

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

    def _close_client(self, client: ClientT) -> None:
        """Close a sync client; subclasses override."""

    async def _aclose_client(self, client: ClientT) -> None:
        """Close an async client; subclasses override."""

    def _client(self) -> ClientT:
        with self._lock:
            if self._sync_client is None:
                self._sync_client = self._new_sync_client()
            return self._sync_client

    async def _async_slot(self) -> _LoopSlot[ClientT]:
        """The running loop's client and the gate that bounds its requests in flight.

        Requests wait at the gate rather than in httpcore's pool: the pool rescans every
        queued request against every connection each time one frees up, which turns a few
        hundred concurrent calls into seconds of CPU. Clients of loops that have closed
        without shutting down their async generators are dropped here.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            for other in [other for other in self._async_clients if other.is_closed()]:
                del self._async_clients[other]
            slot = self._async_clients.get(loop)
            created = slot is None
            if slot is None:
                slot = _LoopSlot(
                    self._new_async_client(), asyncio.Semaphore(self.policy.max_connections)
                )
                slot.guard = _close_with_loop(weakref.ref(self), loop, slot)
                self._async_clients[loop] = slot
        if created:
            assert slot.guard is not None
            await slot.guard.__anext__()  # started inside the loop: the loop now finalizes it
            slot.ready = True
        return slot

    def _forget_slot(self, loop: asyncio.AbstractEventLoop, slot: _LoopSlot[Any]) -> None:
        with self._lock:
            if self._async_clients.get(loop) is slot:
                del self._async_clients[loop]

    def close(self) -> None:
        """Close the blocking client, and drop async clients (closed with their loops).

        An async client whose loop is still running is closed on that loop; one whose loop
        has closed is only dropped (its connections went with the loop).
        """
        with self._lock:
            client, self._sync_client = self._sync_client, None
            slots = list(self._async_clients.items())
            self._async_clients.clear()
        if client is not None:
            self._close_client(client)
        for loop, slot in slots:
            if slot.guard is not None and slot.ready and not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # closed in the meantime
                    loop.call_soon_threadsafe(_finalize_guard, loop, slot.guard)

    async def aclose(self) -> None:
        """Close the running loop's async client and the blocking client now."""
        loop = asyncio.get_running_loop()
        with self._lock:
            slot = self._async_clients.pop(loop, None)
        if slot is not None:
            if slot.guard is not None and slot.ready:
                await slot.guard.aclose()  # type: ignore[attr-defined]
            else:
                await self._aclose_client(slot.client)
        self.close()

    async def __aenter__(self) -> RemoteRerankBackend[ClientT]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __enter__(self) -> RemoteRerankBackend[ClientT]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- one request, provider specific -------------------------------------------------------

    def _send(self, query: str, documents: list[str], budget: float) -> Any:
        raise NotImplementedError

    async def _asend(self, query: str, documents: list[str], slot: _LoopSlot[ClientT]) -> Any:
        raise NotImplementedError

    def _request_parts(self, query: str, documents: list[str]) -> RerankRequest:
        return RerankRequest(self.model, query, documents, self.max_tokens_per_doc)

    # -- scoring ------------------------------------------------------------------------------

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        deadline, batches = self._plan(query, texts)
        if len(batches) <= 1:
            return self._score_batch(query, batches[0], deadline) if batches else []
        pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=min(self.policy.max_concurrency, len(batches)),
            thread_name_prefix=f"crossrank-{self.name}",
        )
        try:
            futures = [
                pool.submit(self._score_batch, query, batch, deadline) for batch in batches
            ]
            concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
            for future in futures:
                if future.done() and future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
            return [score for future in futures for score in future.result()]
        finally:
            # On failure, batches not yet started are dropped; running ones finish unobserved.
            pool.shutdown(wait=False, cancel_futures=True)

    async def ascore(self, query: str, texts: Sequence[str]) -> list[float]:
        deadline, batches = self._plan(query, texts)
        if not batches:
            return []
        if len(batches) == 1:
            return await self._ascore_batch(query, batches[0], deadline)
        gate = asyncio.Semaphore(self.policy.max_concurrency)

        async def bounded(batch: list[str]) -> list[float]:
            async with gate:
                return await self._ascore_batch(query, batch, deadline)

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
        """The texts as a list, refusing what cannot be sent as UTF-8 JSON, by position.

        A lone surrogate (``"\\ud800"``, e.g. from text decoded with ``surrogateescape``) is
        not Unicode text: it is refused with the text's position rather than replaced, so a
        request never scores something other than what the caller passed.
        """
        if not isinstance(query, str):
            raise InvalidInputError(f"query must be a string, got {type(query).__name__}")
        _refuse_unencodable(query, f"{self.name} cannot send the query")
        documents = list(texts)
        for position, text in enumerate(documents):
            if not isinstance(text, str):
                raise InvalidInputError(
                    f"text #{position} must be a string, got {type(text).__name__}"
                )
            _refuse_unencodable(text, f"{self.name} cannot send text #{position}")
        return documents

    def _plan(self, query: str, texts: Sequence[str]) -> tuple[float | None, list[list[str]]]:
        """When this call must end (``None``: no deadline), and its batches in input order."""
        documents = self._checked(query, texts)
        size = self.max_documents_per_request
        batches = [documents[start : start + size] for start in range(0, len(documents), size)]
        return self._deadline(), batches

    def _deadline(self) -> float | None:
        seconds = self.policy.deadline_s
        return None if seconds is None else time.monotonic() + seconds

    def _budget(self, deadline: float | None) -> tuple[float, str]:
        """Seconds this attempt may take, and which bound sets them ("timeout"/"deadline")."""
        timeout = self.policy.timeout
        if deadline is None:
            return timeout, "timeout"
        left = deadline - time.monotonic()
        return (timeout, "timeout") if left >= timeout else (max(left, 0.0), "deadline")

    def _timed_out(self, bound: str) -> AttemptFailed:
        if bound == "deadline":
            return AttemptFailed(
                f"no complete answer before deadline_s={self.policy.deadline_s:g}s ran out",
                retryable=False,
            )
        return AttemptFailed(
            f"no complete answer within timeout={self.policy.timeout:g}s", retryable=True
        )

    def _parsed(self, payload: Any, count: int) -> list[float]:
        try:
            return scores_in_input_order(payload, count, self.name, shape=self.provider.answer)
        except BackendResponseError as exc:  # the key is looked up only when it may be quoted
            raise BackendResponseError(redact(str(exc), self._secrets)) from None

    def _score_batch(
        self, query: str, documents: list[str], deadline: float | None
    ) -> list[float]:
        def attempt() -> Any:
            budget, bound = self._budget(deadline)
            if budget <= 0:
                raise self._timed_out(bound)
            try:
                return _run_within(lambda: self._send(query, documents, budget), budget)
            except _OutOfTime:
                raise self._timed_out(bound) from None

        payload = self._with_retries(attempt, deadline)
        return self._parsed(payload, len(documents))

    async def _ascore_batch(
        self, query: str, documents: list[str], deadline: float | None
    ) -> list[float]:
        slot = await self._async_slot()

        async def attempt() -> Any:
            async with slot.gate:
                # Measured after the wait at the gate, so queueing counts against the
                # deadline but not against the exchange's own timeout.
                budget, bound = self._budget(deadline)
                if budget <= 0:
                    raise self._timed_out(bound)
                try:
                    return await asyncio.wait_for(self._asend(query, documents, slot), budget)
                except asyncio.TimeoutError:
                    raise self._timed_out(bound) from None

        payload = await self._awith_retries(attempt, deadline)
        return self._parsed(payload, len(documents))

    # -- retries ------------------------------------------------------------------------------

    def _with_retries(self, attempt: Callable[[], Any], deadline: float | None) -> Any:
        for attempt_number in range(1, self.policy.max_retries + 2):
            try:
                return attempt()
            except AttemptFailed as failure:
                delay = self._next_delay(failure, attempt_number, deadline)
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _awith_retries(
        self, attempt: Callable[[], Awaitable[Any]], deadline: float | None
    ) -> Any:
        for attempt_number in range(1, self.policy.max_retries + 2):
            try:
                return await attempt()
            except AttemptFailed as failure:
                delay = self._next_delay(failure, attempt_number, deadline)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _next_delay(
        self, failure: AttemptFailed, attempt_number: int, deadline: float | None
    ) -> float:
        """Seconds to wait before the next attempt, or raise the final error."""
        policy = self.policy
        attempts = policy.max_retries + 1
        if not failure.retryable:
            why = "deadline_s reached" if "deadline_s=" in failure.detail else "not retryable"
            raise self._final_error(failure, attempt_number, why) from None
        if attempt_number >= attempts:
            raise self._final_error(failure, attempt_number, "retries exhausted") from None
        if failure.retry_after is not None:
            if failure.retry_after > policy.retry_after_max:
                raise self._final_error(
                    failure,
                    attempt_number,
                    f"server asked to retry after {failure.retry_after:g}s, more than "
                    f"retry_after_max={policy.retry_after_max:g}s",
                ) from None
            # Honour the server's wait, plus a little jitter so clients do not stampede.
            delay = failure.retry_after + self._random.uniform(0.0, policy.backoff_base)
        else:
            # Exponential backoff with "equal jitter": at least half the step, at most all of it.
            step = min(policy.backoff_max, policy.backoff_base * 2 ** (attempt_number - 1))
            delay = step / 2 + self._random.uniform(0.0, step / 2)
        if deadline is not None and time.monotonic() + delay >= deadline:
            raise self._final_error(
                failure,
                attempt_number,
                f"deadline_s={policy.deadline_s:g}s would pass before the next attempt",
            ) from None
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


def _rebuild(cls: type[RemoteRerankBackend[Any]], config: dict[str, Any]) -> Any:
    return cls(**config)


def _finalize_guard(loop: asyncio.AbstractEventLoop, guard: AsyncIterator[None]) -> None:
    loop.create_task(guard.aclose())  # type: ignore[attr-defined]


def _refuse_unencodable(text: str, what: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise InvalidInputError(
            f"{what}: it holds a lone surrogate U+{ord(bad):04X} at character {exc.start}, "
            "which is not Unicode text and cannot be encoded; remove it, or decode the source "
            "with errors='replace'"
        ) from None


class _OutOfTime(Exception):
    """The bounded call did not finish in time."""


def _run_within(work: Callable[[], Any], seconds: float) -> Any:
    """``work()``, or :class:`_OutOfTime` once ``seconds`` have passed, whatever it is doing.

    The blocking client's own timeouts bound each read, not the exchange: a server that
    drips its body slowly keeps every read short. So the exchange runs on a worker thread
    and the caller stops waiting at the bound; the worker stops at its next read (the
    request's own per-read timeouts and deadline checks end it soon after).
    """
    outcome: dict[str, Any] = {}
    finished = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the caller as is
            outcome["error"] = exc
        finally:
            finished.set()

    threading.Thread(target=run, name="crossrank-http-attempt", daemon=True).start()
    if not finished.wait(seconds):
        raise _OutOfTime
    if "error" in outcome:
        error = outcome.pop("error")
        raise error
    return outcome["value"]


# ProviderSpec, RerankRequest and approximate_token_spans stay importable from here: every
# backend built on RemoteRerankBackend needs them.
__all__ = [
    "HttpPolicy",
    "ProviderSpec",
    "RemoteRerankBackend",
    "RerankRequest",
    "approximate_token_spans",
]
