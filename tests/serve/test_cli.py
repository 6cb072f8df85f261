"""``crossrank serve`` as a user starts it: a subprocess on a loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from crossrank.cli import main
from crossrank.serve.engine_options import build_reranker
from crossrank.serve.server import free_port, wait_ready
from tests.serve.conftest import DOCUMENTS, QUERY


def test_serve_refuses_a_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--config", str(tmp_path / "nope.json")]) == 2
    assert "nope.json" in capsys.readouterr().out


def test_serve_refuses_a_bad_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--backend", "keyword", "--option", "novalue"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_server_answers_the_cohere_sdk_and_drains_on_sigterm(
    tiny_config_file: Path, tiny_config: dict[str, Any], tmp_path: Path
) -> None:
    cohere = pytest.importorskip("cohere")
    key = "sk-cli-test-1234"
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# serving keys\n{key}\n", encoding="utf-8")
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "crossrank.cli",
        "serve",
        "--config",
        str(tiny_config_file),
        "--port",
        str(port),
        "--option",
        "micro_batch=true",
        "--api-key-file",
        str(keys),
        "--log-level",
        "warning",
    ]
    env = dict(os.environ, CROSSRANK_API_KEYS="", TOKENIZERS_PARALLELISM="false")
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, timeout_s=120, headers={"Authorization": f"Bearer {key}"})
        client = cohere.ClientV2(api_key=key, base_url=url)
        response = client.rerank(model="tiny", query=QUERY, documents=DOCUMENTS)
        expected = build_reranker(tiny_config).rerank(QUERY, DOCUMENTS)
        assert [item.index for item in response.results] == [item.input_index for item in expected]
        for item, want in zip(response.results, expected, strict=True):
            assert item.relevance_score == pytest.approx(want.score, abs=1e-6)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output.decode(errors="replace")
        assert key not in output.decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.mark.slow
def test_cli_ray_serve_answers_the_cohere_sdk(tmp_path: Path) -> None:
    """``crossrank serve --ray``: a local Ray cluster, one replica, stopped by Ctrl-C."""
    cohere = pytest.importorskip("cohere")
    pytest.importorskip("ray.serve")
    config = tmp_path / "keyword.json"
    config.write_text('{"backend": "tests.support.backends:KeywordBackend"}', encoding="utf-8")
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "crossrank.cli",
        "serve",
        "--config",
        str(config),
        "--ray",
        "--replicas",
        "1",
        "--num-cpus",
        "0.5",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    repo = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=repo, RAY_ACCEPT_LOCAL_CLUSTER="1")
    process = subprocess.Popen(
        command, env=env, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, timeout_s=180)
        client = cohere.ClientV2(api_key="unused", base_url=url)
        response = client.rerank(model="keyword", query=QUERY, documents=DOCUMENTS)
        expected = build_reranker({"backend": "tests.support.backends:KeywordBackend"}).rerank(
            QUERY, DOCUMENTS
        )
        assert [item.index for item in response.results] == [item.input_index for item in expected]
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=120)
        assert process.returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
