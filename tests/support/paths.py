"""Where the optional shared assets live (absent on a fresh clone without ../shared)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED = (REPO_ROOT / ".." / "shared").resolve()
SHARED_DATA = SHARED / "data"
SCIFACT_CROSS_ENCODER = SHARED / "models" / "minilm-ce-scifact"


def require_shared_data(collection: str | None = None) -> Path:
    """Path of ../shared/data (or one collection in it), skipping the test when it is absent."""
    path = SHARED_DATA / collection if collection else SHARED_DATA
    if not path.is_dir():
        pytest.skip(f"needs the shared IR collections at {path} (not part of a fresh clone)")
    return path


def require_scifact_model() -> Path:
    if not (SCIFACT_CROSS_ENCODER / "config.json").is_file():
        pytest.skip(f"needs the trained cross-encoder at {SCIFACT_CROSS_ENCODER}")
    return SCIFACT_CROSS_ENCODER
