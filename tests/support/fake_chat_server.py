"""A local server that speaks OpenAI's chat-completions wire format and ranks like an LLM would.

Real httpx clients talk to it over TCP on 127.0.0.1 (ephemeral port). It reads the listwise
prompt crossrank sends (the ``Query:`` line and the ``[n] passage`` lines), orders the
passages with an oracle and answers ``[2] > [1] > ...`` in ``choices[0].message.content``, with
a ``usage`` block, as OpenAI, vLLM, Ollama and llama.cpp's server do.

The oracle is a deterministic hash of (query, passage) unless a query is *judged*
(:meth:`FakeChatServer.judge`): then the passages are ordered by the judged preference, so a
test knows the one correct permutation. Misbehaviour is queued with :meth:`fail_next` (one per
request) or drawn at a seeded ``garbage_rate``: HTTP errors with ``Retry-After``, slow answers,
dropped connections, bodies that are not JSON, JSON without ``choices``, and answers whose
identifiers are repeated, missing, out of range or not numbers at all.

Request: ``POST {base}/chat/completions`` ``{"model", "messages": [{"role", "content"}], ...}``;
answer: ``{"id", "object": "chat.completion", "created", "model", "choices": [{"index",
"message": {"role": "assistant", "content"}, "finish_reason"}], "usage": {"prompt_tokens",
"completion_tokens", "total_tokens"}}``; errors: ``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal

from tests.support.loopback import RecordingServer, StatefulServer

CHAT_PATH = "/v1/chat/completions"

FaultKind = Literal[
    "status",  # answer `status` with an OpenAI error body and `retry_after`
    "slow",  # wait `delay` seconds, then answer normally
    "disconnect",  # close the connection without answering
    "malformed",  # 200 with a body that is not JSON
    "no_choices",  # 200 JSON without a choices list
    "answer",  # 200 with `content` as the assistant's answer, whatever it is
]

#: What a confused model says; each is repaired differently by the client.
GARBAGE_ANSWERS = (
    "I'm sorry, I cannot rank these passages.",
    "[1] > [1] > [1]",
    "[2] > [99] > [1]",
    "[a] > [b] > [c]",
    "[3]",
    "The most relevant is passage 2.",
    "",
)

_QUERY_LINE = re.compile(r"^Query: (.*)$", re.MULTILINE)
_PASSAGE_LINE = re.compile(r"^\[(\d+)\] (.*)$", re.MULTILINE)


def hashed_relevance(query: str, passage: str) -> float:
    """A preference in [0, 1) that depends only on (query, passage)."""
    digest = hashlib.sha256(f"{query}\x00{passage}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    status: int = 500
    retry_after: str | None = None
    delay: float = 0.0
    content: str = ""
    #: Put the request's Authorization header into the error body (a leaky proxy).
    echo_authorization: bool = False


@dataclass
class RecordedRequest:
    """One request, recorded on arrival; ``answer`` and ``garbage`` are filled in once sent."""

    path: str
    headers: dict[str, str]
    body: Any
    answer: str | None = None
    garbage: bool = False


@dataclass
class _State:
    api_key: str | None
    garbage_rate: float
    random: random.Random
    judged: dict[str, dict[str, float]] = field(default_factory=dict)
    faults: deque[Fault] = field(default_factory=deque)
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    in_flight: int = 0
    max_in_flight: int = 0
    latency: float = 0.0


def parse_prompt(body: Any) -> tuple[str, list[str]]:
    """The query and the numbered passages of a listwise prompt (the last user message)."""
    messages = body.get("messages") if isinstance(body, dict) else None
    users = [m for m in messages or [] if isinstance(m, dict) and m.get("role") == "user"]
    text = str(users[-1].get("content", "")) if users else ""
    query_match = _QUERY_LINE.search(text)
    passages = [match.group(2) for match in _PASSAGE_LINE.finditer(text)]
    return (query_match.group(1) if query_match else ""), passages


def oracle_answer(state: _State, query: str, passages: list[str]) -> str:
    judged = state.judged.get(query)

    def preference(position: int) -> tuple[float, int]:
        passage = passages[position]
        value = judged.get(passage, float("-inf")) if judged else hashed_relevance(query, passage)
        return (-value, position)

    ranked = sorted(range(len(passages)), key=preference)
    return " > ".join(f"[{position + 1}]" for position in ranked)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: StatefulServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _leave(self) -> None:
        """Stop counting this request as in flight: before its answer goes out, so a client
        that sends its next request on reading this answer is never counted twice."""
        if getattr(self, "_counted", False):
            self._counted = False
            with self.server.state.lock:
                self.server.state.in_flight -= 1

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self._leave()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _error(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        kinds = {401: "invalid_request_error", 429: "rate_limit_exceeded"}
        kind = kinds.get(status, "server_error")
        payload = {"error": {"message": message, "type": kind, "code": status}}
        self._send(status, json.dumps(payload).encode(), headers)

    def do_POST(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record = RecordedRequest(self.path, dict(self.headers.items()), body)
        with state.lock:
            state.requests.append(record)
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        self._counted = True
        try:
            record.answer, record.garbage = self._handle(state, body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self._leave()

    def _handle(self, state: _State, body: Any) -> tuple[str | None, bool]:
        if self.path != CHAT_PATH:
            self._error(404, f"no route {self.path}")
            return None, False
        if state.latency:
            time.sleep(state.latency)
        if state.api_key is not None and (
            self.headers.get("Authorization") != f"Bearer {state.api_key}"
        ):
            self._error(401, "Incorrect API key provided")
            return None, False
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self._error(400, "'messages' is a required property")
            return None, False
        if not isinstance(body.get("model"), str):
            self._error(400, "'model' must be a string")
            return None, False
        with state.lock:
            fault = state.faults.popleft() if state.faults else None
            draw_garbage = fault is None and state.random.random() < state.garbage_rate
            garbage_answer = state.random.choice(GARBAGE_ANSWERS) if draw_garbage else None
        if fault is not None and fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            message = f"error {fault.status}"
            if fault.echo_authorization:
                message += f" (request had Authorization: {self.headers.get('Authorization')})"
            self._error(fault.status, message, headers)
            return None, False
        if fault is not None and fault.kind == "disconnect":
            self.close_connection = True
            self.connection.shutdown(2)
            return None, False
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.delay)
        if fault is not None and fault.kind == "malformed":
            self._send(200, b'{"id": "chatcmpl-1", "choices": [{"message": ')
            return None, False
        if fault is not None and fault.kind == "no_choices":
            self._send(200, json.dumps({"id": "chatcmpl-1", "object": "chat.completion"}).encode())
            return None, False
        query, passages = parse_prompt(body)
        if fault is not None and fault.kind == "answer":
            answer, garbage = fault.content, True
        elif garbage_answer is not None:
            answer, garbage = garbage_answer, True
        else:
            answer, garbage = oracle_answer(state, query, passages), False
        prompt_words = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        completion_words = len(answer.split())
        payload = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_words,
                "completion_tokens": completion_words,
                "total_tokens": prompt_words + completion_words,
            },
        }
        self._send(200, json.dumps(payload).encode())
        return answer, garbage


class FakeChatServer(RecordingServer[_State]):
    """OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1, in a background thread."""

    def __init__(
        self, *, api_key: str | None = None, garbage_rate: float = 0.0, seed: int = 0
    ) -> None:
        state = _State(api_key=api_key, garbage_rate=garbage_rate, random=random.Random(seed))
        super().__init__(_Handler, state)

    @property
    def base_url(self) -> str:
        """What to give the LLM backend as ``base_url`` (it appends ``/chat/completions``)."""
        return f"{self.url}/v1"

    def judge(self, query: str, preference: Mapping[str, float]) -> None:
        """Order this query's passages by ``preference`` (higher first; unknown texts last)."""
        with self._state.lock:
            self._state.judged[query] = dict(preference)

    def configure(self, *, garbage_rate: float | None = None, latency: float | None = None) -> None:
        with self._state.lock:
            if garbage_rate is not None:
                self._state.garbage_rate = garbage_rate
            if latency is not None:
                self._state.latency = latency


def oracle_ranker(preference: Callable[[str, str], float]) -> Callable[[str, list[str]], str]:
    """An answer function from a preference (for tests that drive windows without a server)."""

    def answer(query: str, passages: list[str]) -> str:
        ranked = sorted(range(len(passages)), key=lambda i: (-preference(query, passages[i]), i))
        return " > ".join(f"[{position + 1}]" for position in ranked)

    return answer
