"""Packaging promises: the import name, light imports, and the console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/"
    ).stdout
    return set(output.split())


def test_import_crossrank_pulls_no_framework_and_no_torch() -> None:
    modules = _imported_after("import crossrank")
    heavy = {
        "torch",
        "sentence_transformers",
        "transformers",
        "langchain_core",
        "llama_index",
        "haystack",
        "cohere",
        "httpx",
        "bm25s",
        "ranx",
    }
    assert not heavy & {name.split(".")[0] for name in modules}


def test_core_never_imports_integrations() -> None:
    for path in (REPO_ROOT / "core").rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        assert "crossrank.integrations" not in source, path
        assert "import core" not in source and "from core" not in source, path


def test_no_bare_core_imports_anywhere() -> None:
    for folder in ("core", "integrations", "tests", "benchmarks"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            for line in path.read_text(encoding="utf-8").splitlines():
                stripped = line.strip()
                assert not stripped.startswith(("import core", "from core")), f"{path}: {line}"


def test_console_script_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "crossrank.cli", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for command in ("demo", "eval", "finetune", "tune-selective"):
        assert command in result.stdout


def test_cli_without_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    from crossrank.cli import main

    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
