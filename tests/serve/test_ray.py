"""A real local Ray (2 CPUs): batch on Ray Data equals local, and Ray Serve answers Cohere."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from crossrank.cli import main  # noqa: E402
from crossrank.serve.batch import read_rows, run_batch  # noqa: E402
from tests.serve.conftest import DOCUMENTS, QUERY  # noqa: E402
from tests.serve.rows import KEYWORD, rows_of, write_jsonl  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """Two CPUs, no dashboard; workers import the test backends from the repository."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT), "TOKENIZERS_PARALLELISM": "false"}},
    )
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()


def test_batch_on_ray_equals_local(local_ray: Any, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "rows.jsonl", rows_of(6))
    config = tmp_path / "config.json"
    config.write_text(json.dumps(KEYWORD), encoding="utf-8")
    common = ["--config", str(config), "--shard-size", "2", "--no-progress"]
    assert main(["batch", str(source), "--out", str(tmp_path / "local.jsonl"), *common]) == 0
    ray_args = ["--engine", "ray", "--workers", "2", "--rows-per-batch", "1"]
    assert (
        main(["batch", str(source), "--out", str(tmp_path / "ray.jsonl"), *common, *ray_args]) == 0
    )
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()


@pytest.mark.slow
def test_tiny_cross_encoder_on_ray_equals_local(
    local_ray: Any, tmp_path: Path, tiny_config: dict[str, Any]
) -> None:
    rows = rows_of(4)
    local = run_batch(rows, tiny_config, tmp_path / "local.jsonl", shard_size=2, progress=False)
    remote = run_batch(
        rows,
        tiny_config,
        tmp_path / "ray.jsonl",
        engine="ray",
        shard_size=2,
        workers=2,
        progress=False,
    )
    assert local.statuses == remote.statuses == {"reranked": 4}
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()


@pytest.mark.slow
def test_killed_actor_loses_and_duplicates_nothing(local_ray: Any, tmp_path: Path) -> None:
    rows = rows_of(16)
    pids = tmp_path / "pids"
    pids.mkdir()
    backend = "tests.serve.backends:SlowKeywordBackend"
    slow = {"backend": backend, "backend_options": {"delay_s": 0.4, "pid_dir": str(pids)}}
    errors: list[BaseException] = []

    def work() -> None:
        try:
            run_batch(
                rows,
                slow,
                tmp_path / "ray.jsonl",
                engine="ray",
                shard_size=2,
                workers=2,
                rows_per_batch=1,
                progress=False,
            )
        except BaseException as exc:  # reported below
            errors.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline and worker.is_alive():
        written = list((tmp_path / "ray.jsonl.shards").glob("shard-*.jsonl"))
        actors = sorted(int(path.name) for path in pids.iterdir())
        if written and actors:  # mid-run: some shards done, actors scoring the rest
            os.kill(actors[0], signal.SIGKILL)
            killed = actors[0]
        time.sleep(0.1)
    worker.join(300)
    assert killed is not None, "no actor was running to kill"
    assert not errors, errors
    local = {"backend": backend, "backend_options": {"delay_s": 0.0}}
    run_batch(rows, local, tmp_path / "local.jsonl", shard_size=2, progress=False)
    written_rows = read_rows(tmp_path / "ray.jsonl")
    assert [row["row"] for row in written_rows] == list(range(16))
    assert written_rows == read_rows(tmp_path / "local.jsonl")


@pytest.mark.slow
def test_ray_serve_deployment_answers_the_cohere_sdk(local_ray: Any) -> None:
    cohere = pytest.importorskip("cohere")
    from ray import serve

    from crossrank.serve.engine_options import build_reranker
    from crossrank.serve.ray_serve import APP_NAME, build_deployment
    from crossrank.serve.server import free_port, wait_ready
    from crossrank.serve.settings import ServeSettings

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(
            build_deployment(KEYWORD, ServeSettings(), replicas=1, num_cpus=0.5),
            name=APP_NAME,
            route_prefix="/",
        )
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, timeout_s=120)
        client = cohere.ClientV2(api_key="unused", base_url=url)
        response = client.rerank(model="keyword", query=QUERY, documents=DOCUMENTS)
        expected = build_reranker(KEYWORD).rerank(QUERY, DOCUMENTS)
        assert [item.index for item in response.results] == [item.input_index for item in expected]
        assert [item.relevance_score for item in response.results] == pytest.approx(
            expected.scores, abs=1e-6
        )
    finally:
        serve.shutdown()
