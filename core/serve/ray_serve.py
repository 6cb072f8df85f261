"""The serving app as a Ray Serve deployment: one replica, one engine, one model copy.

Each replica builds its own ``Reranker`` from the config mapping when it starts (the
builder below runs on the replica), so a model is loaded once per replica and never
pickled. Replicas accept more than the app admits (``max_ongoing_requests``), so overload
is still answered 429 by the app instead of piling up in Ray's queues.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

from crossrank.errors import missing_dependency
from crossrank.serve.settings import ServeSettings

logger = logging.getLogger("crossrank.serve")

APP_NAME = "crossrank"


def _import_serve() -> Any:
    try:
        from ray import serve
    except ImportError as exc:
        raise missing_dependency("ray[serve]", "ray") from exc
    return serve


def build_deployment(
    config: Mapping[str, Any],
    settings: ServeSettings | None = None,
    *,
    replicas: int = 1,
    autoscaling: Mapping[str, Any] | None = None,
    num_cpus: float = 1.0,
    api_key_file: str | None = None,
) -> Any:
    """A bound Ray Serve application serving ``config``; pass it to ``serve.run``.

    ``autoscaling`` is Ray Serve's ``autoscaling_config`` as is (it replaces ``replicas``).
    Bearer tokens are read on each replica (``CROSSRANK_API_KEYS`` or ``api_key_file``), so
    no key is ever pickled into the deployment.
    """
    serve = _import_serve()
    settings = settings or ServeSettings()
    if settings.api_keys:
        raise ValueError(
            "pass API keys to a Ray deployment by api_key_file or CROSSRANK_API_KEYS, "
            "so they are read on each replica and never pickled"
        )
    engine_config = dict(config)

    def build_app() -> Any:
        from crossrank.serve.app import create_app
        from crossrank.serve.engine_options import build_reranker
        from crossrank.serve.settings import load_api_keys

        replica_settings = dataclasses.replace(settings, api_keys=load_api_keys(api_key_file))
        # Ray routes to a replica once its startup is done, so startup waits for the warm-up.
        return create_app(build_reranker(engine_config), replica_settings, block_until_warm=True)

    options: dict[str, Any] = {
        "name": APP_NAME,
        "ray_actor_options": {"num_cpus": num_cpus},
        # Twice the app's capacity reaches each replica, so the app itself answers the excess
        # 429 with Retry-After; Ray's own queue in front is bounded too (it answers 503).
        "max_ongoing_requests": 2 * settings.capacity,
        "max_queued_requests": settings.capacity,
        "graceful_shutdown_timeout_s": settings.drain_timeout_s,
    }
    if autoscaling:
        options["autoscaling_config"] = dict(autoscaling)
    else:
        options["num_replicas"] = replicas
    deployment = serve.deployment(**options)(serve.ingress(build_app)())
    return deployment.bind()


def run_ray_serve(
    config: Mapping[str, Any],
    settings: ServeSettings,
    *,
    host: str,
    port: int,
    replicas: int = 1,
    autoscaling: Mapping[str, Any] | None = None,
    num_cpus: float = 1.0,
    api_key_file: str | None = None,
    address: str | None = None,
) -> None:
    """``crossrank serve --ray``: deploy, then serve until interrupted."""
    import ray

    serve = _import_serve()
    ray.init(address=address)
    serve.start(http_options={"host": host, "port": port})
    try:  # Ctrl-C may come while deploying too: shut Serve down either way
        serve.run(
            build_deployment(
                config,
                settings,
                replicas=replicas,
                autoscaling=autoscaling,
                num_cpus=num_cpus,
                api_key_file=api_key_file,
            ),
            name=APP_NAME,
            route_prefix="/",
        )
        logger.info("crossrank serve: Ray Serve deployment on http://%s:%d", host, port)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
