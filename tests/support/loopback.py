"""The one way test servers run: a threaded HTTP server on 127.0.0.1, in a background thread.

Each fake (a rerank API, a chat-completions API) brings its request handler and the state
its handler reads; starting, stopping and addressing are written here once.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar

StateT = TypeVar("StateT")


class StatefulServer(ThreadingHTTPServer):
    """Handler threads die with the test; ``state`` is what the handler reads and records."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 512
    state: Any


class LoopbackServer(Generic[StateT]):
    """Start with ``start()`` or ``with``; ``url`` is ``http://127.0.0.1:PORT``."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], state: StateT) -> None:
        self._handler = handler
        self._state = state
        self._server: StatefulServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Any:
        server = StatefulServer(("127.0.0.1", 0), self._handler)
        server.state = self._state
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("server not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"


class RecordingServer(LoopbackServer[StateT]):
    """A loopback fake whose state records requests and queues faults.

    The state holds ``lock``, ``faults``, ``requests``, ``in_flight`` and ``max_in_flight``.
    """

    def fail_next(self, *faults: Any) -> None:
        """Answer the next requests with these faults, in order."""
        state: Any = self._state
        with state.lock:
            state.faults.extend(faults)

    def reset(self) -> None:
        """Forget recorded requests and queued faults."""
        state: Any = self._state
        with state.lock:
            state.faults.clear()
            state.requests.clear()
            state.max_in_flight = state.in_flight

    @property
    def requests(self) -> list[Any]:
        state: Any = self._state
        with state.lock:
            return list(state.requests)

    @property
    def max_in_flight(self) -> int:
        """The most requests the server was handling at once."""
        state: Any = self._state
        with state.lock:
            return int(state.max_in_flight)
