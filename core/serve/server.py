"""Running the app under uvicorn: in the foreground (the CLI) or in a thread (tests, benchmarks).

Uvicorn's graceful shutdown is the drain: on SIGTERM (or ``stop``) it stops accepting,
lets admitted requests finish for up to ``drain_timeout_s``, then runs the app's shutdown,
which closes the backend.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from typing import Any

import uvicorn

from crossrank.serve.settings import ServeSettings


def uvicorn_config(
    app: Any, settings: ServeSettings, *, host: str, port: int, **extra: Any
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),
        # A backlog well past the admission capacity, so overload is answered 429 by the
        # app instead of connection errors from the kernel.
        backlog=max(2048, settings.capacity * 4),
        **extra,
    )


def run(
    app: Any, settings: ServeSettings, *, host: str, port: int, log_level: str = "info"
) -> None:
    """Serve until interrupted (SIGINT / SIGTERM drain first)."""
    uvicorn.Server(uvicorn_config(app, settings, host=host, port=port, log_level=log_level)).run()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class BackgroundServer:
    """A real uvicorn server on a loopback port, in a thread of this process.

    ``start`` returns once the socket listens (not once the model is warm: poll ``/ready``);
    ``stop`` drains and joins.
    """

    def __init__(
        self,
        app: Any,
        settings: ServeSettings | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
    ) -> None:
        self.settings = settings or ServeSettings()
        self.host = host
        self.port = port or free_port(host)
        self._server = uvicorn.Server(
            uvicorn_config(app, self.settings, host=self.host, port=self.port, log_level="warning")
        )
        self._thread = threading.Thread(
            target=self._server.run, name="crossrank-serve", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread exited before it started listening")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not start listening within {timeout_s}s")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout_s)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_ready(url: str, timeout_s: float = 60.0, headers: dict[str, str] | None = None) -> None:
    """Poll ``/ready`` until it answers 200."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/ready", timeout=5.0, headers=headers)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} was not ready within {timeout_s}s (last answer: {last!r})")
