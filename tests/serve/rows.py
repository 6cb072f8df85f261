"""Batch rows shared by the local and the Ray batch tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KEYWORD = {"backend": "tests.support.backends:KeywordBackend"}


def rows_of(count: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"q{i}",
            "query": f"capital of france {i}",
            "candidates": [
                "berlin is the capital of germany",
                {"text": "paris is the capital of france", "id": "paris", "first_stage_score": 2},
                {"text": f"row {i} about shipping", "id": "ship"},
            ],
        }
        for i in range(count)
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path
