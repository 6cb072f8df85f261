"""``crossrank serve``: the reranker as an HTTP service, in this process or on Ray Serve."""

from __future__ import annotations

import argparse
import json
import logging
import signal

from crossrank.errors import CrossrankError
from crossrank.serve.engine_options import add_engine_arguments, build_reranker, engine_config
from crossrank.serve.settings import ServeSettings, load_api_keys


def configure(parser: argparse.ArgumentParser) -> None:
    add_engine_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=8080)
    limits = parser.add_argument_group("limits")
    limits.add_argument("--max-documents", type=int, default=1000, help="413 past this")
    limits.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024, help="413 past this")
    limits.add_argument("--max-in-flight", type=int, default=8, help="requests reranking at once")
    limits.add_argument("--max-queue", type=int, default=64, help="requests waiting; 429 past it")
    limits.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds on 429")
    limits.add_argument("--drain-timeout", type=float, default=30.0, help="shutdown drain seconds")
    parser.add_argument(
        "--api-key-file",
        default=None,
        help="bearer tokens, one per line (also read: CROSSRANK_API_KEYS, comma-separated)",
    )
    parser.add_argument("--model-name", default=None, help="model name reported to clients")
    parser.add_argument("--log-level", default="info")
    ray = parser.add_argument_group("Ray Serve")
    ray.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment")
    ray.add_argument("--replicas", type=int, default=1, help="replicas (one model copy each)")
    ray.add_argument(
        "--autoscaling",
        default=None,
        help='Ray Serve autoscaling_config as JSON, e.g. {"min_replicas":1,"max_replicas":4}',
    )
    ray.add_argument("--num-cpus", type=float, default=1.0, help="CPUs reserved per replica")
    ray.add_argument("--ray-address", default=None, help="cluster address (default: start one)")


def settings_from_args(args: argparse.Namespace, *, with_keys: bool = True) -> ServeSettings:
    return ServeSettings(
        model_name=args.model_name,
        max_documents=args.max_documents,
        max_body_bytes=args.max_body_bytes,
        max_in_flight=args.max_in_flight,
        max_queue=args.max_queue,
        retry_after_s=args.retry_after,
        drain_timeout_s=args.drain_timeout,
        api_keys=load_api_keys(args.api_key_file) if with_keys else (),
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        config = engine_config(args)
        if args.ray:
            from crossrank.serve.ray_serve import run_ray_serve

            autoscaling = json.loads(args.autoscaling) if args.autoscaling else None
            run_ray_serve(
                config,
                settings_from_args(args, with_keys=False),
                host=args.host,
                port=args.port,
                replicas=args.replicas,
                autoscaling=autoscaling,
                num_cpus=args.num_cpus,
                api_key_file=args.api_key_file,
                address=args.ray_address,
            )
            return 0
        settings = settings_from_args(args)
        reranker = build_reranker(config)
    except (CrossrankError, json.JSONDecodeError) as exc:
        print(f"crossrank serve: {exc}")
        return 2
    from crossrank.serve.app import create_app
    from crossrank.serve.server import run as run_server

    # Uvicorn drains on SIGTERM / SIGINT, then raises the signal again for the handler it
    # found: a quiet one makes a drained shutdown exit 0 instead of dying by the signal.
    for received in (signal.SIGTERM, signal.SIGINT):
        signal.signal(received, lambda *_: None)
    run_server(
        create_app(reranker, settings),
        settings,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
    )
    return 0
