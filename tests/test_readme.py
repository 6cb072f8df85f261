"""The README is the front door: every Python block in it runs as pasted, offline.

Each block runs in its own fresh namespace, as a reader would paste it into a new session;
the bundled embedding model makes them all work without a network.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_the_readme_is_a_front_door() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200
    assert len(BLOCKS) >= 4  # the quickstart and one per framework


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{n}" for n in range(len(BLOCKS))])
def test_every_python_block_runs_as_pasted(
    block: str, capsys: pytest.CaptureFixture[str]
) -> None:
    exec(compile(block, str(README), "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    assert "refund" in printed.lower()  # each block shows the refunds passage winning
