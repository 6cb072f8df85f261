"""Listwise reranking by an LLM behind any OpenAI-compatible chat-completions endpoint.

OpenAI, vLLM, Ollama, llama.cpp's server, LiteLLM and most gateways accept
``POST {base_url}/chat/completions`` with ``{"model", "messages"}`` and answer
``choices[0].message.content``. The backend asks for the order of one window of passages at
a time (:mod:`crossrank.backends.listwise` plans the windows, writes the prompt and repairs the
answer) and returns a :class:`~crossrank.backends.base.Ranking`, not scores: an LLM's order
says which passage is better, not by how much.

Requests go through the same HTTP machinery as every rerank API
(:class:`~crossrank.backends.http.HttpPolicy`: timeouts, deadline, retries with backoff on
429 / 5xx / transport errors, ``Retry-After``, a bound on requests in flight per event loop),
so a listwise call fails, retries and falls back exactly as a Cohere call does. A 2xx body
that is not a chat completion raises :class:`~crossrank.errors.BackendResponseError` (the engine
falls back); a chat completion whose *text* is not a clean permutation is repaired and the
repair recorded in :attr:`LlmBackend.last_call_stats`.

The key comes from ``api_key`` or ``OPENAI_API_KEY``; neither is required, since local servers
(Ollama, llama.cpp, vLLM without ``--api-key``) take none.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from crossrank.backends.base import Ranking
from crossrank.backends.http import HttpPolicy
from crossrank.backends.listwise import (
    DEFAULT_PASSAGE_TOKENS,
    DEFAULT_PASSES,
    DEFAULT_STEP,
    DEFAULT_WINDOW,
    ListwiseOptions,
    SlidingWindow,
    WindowRepair,
    build_messages,
    parse_order,
)
from crossrank.backends.providers import HttpRerankBackend
from crossrank.backends.wire import ProviderSpec, RerankRequest, approximate_token_spans
from crossrank.errors import BackendResponseError, ConfigurationError
from crossrank.secrets import Secret, as_secret

logger = logging.getLogger("crossrank.backends")

DEFAULT_LLM_MODEL = "gpt-4o-mini"
OPENAI_KEY_ENV = "OPENAI_API_KEY"


def _unused_request(request: RerankRequest) -> dict[str, Any]:  # pragma: no cover
    raise AssertionError("the LLM backend builds chat requests itself")


CHAT_COMPLETIONS = ProviderSpec(
    name="llm",
    label="OpenAI-compatible chat",
    base_url="https://api.openai.com/v1",
    path="/chat/completions",
    key_env=(OPENAI_KEY_ENV,),
    build_request=_unused_request,
    # One window per request; the cap is never reached, a window is far smaller.
    max_documents_per_request=10_000,
    default_model=DEFAULT_LLM_MODEL,
    error_fields=("error", "message", "detail"),
)


@dataclass(frozen=True)
class ChatAnswer:
    """The assistant's text of one chat completion and the tokens the server billed for it."""

    content: Any
    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass(frozen=True)
class ListwiseStats:
    """What one ``score`` / ``ascore`` call cost and what had to be repaired.

    ``calls`` counts answered windows (retried attempts are logged by the HTTP layer, not
    counted here); token counts are the servers' own ``usage`` figures, summed over the
    answers that carried one (``answers_without_usage`` says how many did not).
    """

    candidates: int
    calls: int
    passes: int
    prompt_tokens: int
    completion_tokens: int
    answers_without_usage: int
    repairs: tuple[WindowRepair, ...]
    #: False when a window's request failed: the figures are what was spent before it.
    completed: bool = True

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def repaired(self) -> bool:
        return bool(self.repairs)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for a report or a log line."""
        return {
            "candidates": self.candidates,
            "completed": self.completed,
            "llm_calls": self.calls,
            "passes": self.passes,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "answers_without_usage": self.answers_without_usage,
            "repairs": [
                {
                    "pass": repair.pass_number,
                    "window": [repair.start, repair.end],
                    "repairs": list(repair.repairs),
                }
                for repair in self.repairs
            ],
        }


class _Tally:
    """Token usage summed over one call's answers."""

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.without_usage = 0

    def add(self, answer: ChatAnswer) -> None:
        if answer.prompt_tokens is None or answer.completion_tokens is None:
            self.without_usage += 1
        self.prompt_tokens += answer.prompt_tokens or 0
        self.completion_tokens += answer.completion_tokens or 0


def _token_count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def chat_answer(payload: Any, provider: str) -> ChatAnswer:
    """The answer inside a chat-completions body; anything else is an untrustworthy body."""
    choices = payload.get("choices") if isinstance(payload, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BackendResponseError(f"{provider} answered without a 'choices' list")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise BackendResponseError(f"{provider} answer has no 'message' in choices[0]")
    content = message.get("content")
    if isinstance(content, list):  # content parts, as some gateways send them
        content = "".join(
            str(part.get("text", "")) for part in content if isinstance(part, dict)
        )
    usage = payload.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return ChatAnswer(
        content=content,
        prompt_tokens=_token_count(usage.get("prompt_tokens")),
        completion_tokens=_token_count(usage.get("completion_tokens")),
    )


class LlmBackend(HttpRerankBackend):
    """Ranks candidates with an LLM, window by window (RankGPT's sliding window).

    ``window`` passages per request, moving ``step`` places towards the top, ``passes`` times
    at most (one pass makes the top ``window - step`` exact; more sort the rest, and a pass
    that changes nothing ends them); each passage cut to ``passage_tokens`` approximate
    tokens. ``llm_temperature`` goes out as the request's ``temperature`` when not ``None`` (0
    by default, for a repeatable order; ``None`` for models that accept only their default).
    (``temperature`` is the engine's softmax option.) ``extra_body`` adds fields to every
    request (``max_tokens``, ``seed``, a vLLM ``guided_regex``...).

    Windows of one call run one after the other (each starts from the order the previous left);
    concurrent calls share the policy's ``max_connections`` bound. ``stats_callback`` gets
    each call's :class:`ListwiseStats`; :attr:`last_call_stats` holds the latest one of the
    current thread or task.
    """

    provider = CHAT_COMPLETIONS
    #: One query's windows must be ranked in one call: the engine never splits them.
    returns_ranks: ClassVar[bool] = True

    def __init__(
        self,
        model: str | None = None,
        *,
        api_key: str | Secret | Mapping[str, Any] | None = None,
        base_url: str | None = None,
        http: HttpPolicy | Mapping[str, Any] | None = None,
        window: int = DEFAULT_WINDOW,
        step: int = DEFAULT_STEP,
        passes: int = DEFAULT_PASSES,
        passage_tokens: int = DEFAULT_PASSAGE_TOKENS,
        llm_temperature: float | None = 0.0,
        max_tokens_per_doc: int | None = None,
        extra_body: Mapping[str, Any] | None = None,
        stats_callback: Callable[[ListwiseStats], None] | None = None,
    ) -> None:
        super().__init__(
            model,
            api_key=api_key,
            base_url=base_url,
            http=http,
            max_tokens_per_doc=max_tokens_per_doc,
            extra_body=extra_body,
        )
        self.options = ListwiseOptions(
            window=window, step=step, passes=passes, passage_tokens=passage_tokens
        )
        if llm_temperature is not None and (
            isinstance(llm_temperature, bool)
            or not isinstance(llm_temperature, (int, float))
            or not 0.0 <= float(llm_temperature) <= 2.0
        ):
            raise ConfigurationError(
                f"llm_temperature must be a number in [0, 2] or None, got {llm_temperature!r}"
            )
        self.llm_temperature = None if llm_temperature is None else float(llm_temperature)
        if stats_callback is not None and not callable(stats_callback):
            raise ConfigurationError(
                f"stats_callback must be callable, got {type(stats_callback).__name__}"
            )
        self.stats_callback = stats_callback
        self._last_stats: contextvars.ContextVar[ListwiseStats | None] = contextvars.ContextVar(
            f"crossrank-llm-stats-{id(self)}", default=None
        )

    def _secret(self, api_key: Any) -> Secret | None:
        # OPENAI_API_KEY when set, else no key: local servers need none, so never an error.
        try:
            secret = as_secret(api_key, option=f"{self.name} api_key")
        except ConfigurationError as exc:
            raise ConfigurationError(f"{self.name} api_key: {exc}") from None
        return secret if secret is not None else Secret.from_env_var(OPENAI_KEY_ENV, strict=False)

    def to_config(self) -> dict[str, Any]:
        config = super().to_config()
        config.pop("max_documents_per_request", None)
        config.update(
            window=self.options.window,
            step=self.options.step,
            passes=self.options.passes,
            passage_tokens=self.options.passage_tokens,
            llm_temperature=self.llm_temperature,
        )
        return config

    @property
    def last_call_stats(self) -> ListwiseStats | None:
        """The stats of the latest call made in this thread or asyncio task."""
        return self._last_stats.get()

    def call_stats(self) -> dict[str, Any] | None:
        """:attr:`last_call_stats` as a JSON-ready dict, for a caller (the engine) that reads
        it right after ``score`` / ``ascore`` in the same thread or task."""
        stats = self._last_stats.get()
        return None if stats is None else stats.as_dict()

    # -- one request --------------------------------------------------------------------------

    def _body(self, query: str, documents: list[str]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": build_messages(
                query,
                documents,
                passage_tokens=self.options.passage_tokens,
                token_spans=approximate_token_spans,
            ),
        }
        if self.llm_temperature is not None:
            body["temperature"] = self.llm_temperature
        return {**body, **self.extra_body}

    def _parsed(self, payload: Any, count: int) -> Any:
        # The shared retry path hands the decoded body here; a window's answer is text.
        return chat_answer(payload, self.name)

    # -- scoring ------------------------------------------------------------------------------

    def score(self, query: str, texts: Sequence[str]) -> Ranking:  # type: ignore[override]
        documents = self._checked(query, texts)
        state, tally = SlidingWindow(len(documents), self.options), _Tally()
        deadline = self._deadline()
        completed = False
        try:
            while (span := state.next_window()) is not None:
                passages = [documents[index] for index in state.window_indices(span)]
                answer: ChatAnswer = self._score_batch(query, passages, deadline)  # type: ignore[assignment]
                self._apply(state, tally, span, answer)
            completed = True
        finally:
            # A failed call still spent tokens: its stats say so (completed=False).
            self._record(state, tally, completed)
        return Ranking(state.ranks())

    async def ascore(self, query: str, texts: Sequence[str]) -> Ranking:  # type: ignore[override]
        documents = self._checked(query, texts)
        state, tally = SlidingWindow(len(documents), self.options), _Tally()
        deadline = self._deadline()
        completed = False
        try:
            while (span := state.next_window()) is not None:
                passages = [documents[index] for index in state.window_indices(span)]
                answer: ChatAnswer = await self._ascore_batch(query, passages, deadline)  # type: ignore[assignment]
                self._apply(state, tally, span, answer)
            completed = True
        finally:
            self._record(state, tally, completed)
        return Ranking(state.ranks())

    def _apply(
        self, state: SlidingWindow, tally: _Tally, span: tuple[int, int], answer: ChatAnswer
    ) -> None:
        tally.add(answer)
        state.apply(span, parse_order(answer.content, span[1] - span[0]))

    def _record(self, state: SlidingWindow, tally: _Tally, completed: bool) -> None:
        stats = ListwiseStats(
            candidates=state.count,
            calls=state.calls,
            passes=state.passes_run,
            prompt_tokens=tally.prompt_tokens,
            completion_tokens=tally.completion_tokens,
            answers_without_usage=tally.without_usage,
            repairs=tuple(state.repairs),
            completed=completed,
        )
        self._last_stats.set(stats)
        if stats.repairs:
            logger.warning(
                "crossrank: %s repaired %d of %d window answers (%s)",
                self.name,
                len(stats.repairs),
                stats.calls,
                "; ".join(line for repair in stats.repairs for line in repair.repairs)[:300],
            )
        if self.stats_callback is not None:
            self.stats_callback(stats)


__all__ = ["CHAT_COMPLETIONS", "ChatAnswer", "ListwiseStats", "LlmBackend", "chat_answer"]
