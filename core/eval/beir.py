"""Reading BEIR-layout collections: corpus.jsonl, queries.jsonl and qrels/<split>.tsv."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossrank.errors import InvalidInputError


@dataclass(frozen=True)
class BeirDocument:
    doc_id: str
    title: str
    text: str

    @property
    def full_text(self) -> str:
        """Title and body joined, the text both the first stage and the reranker read."""
        return f"{self.title}\n{self.text}" if self.title else self.text


@dataclass(frozen=True)
class BeirCollection:
    """A loaded collection; ``qrels`` maps query id -> {doc id: graded relevance > 0}."""

    name: str
    corpus: Mapping[str, BeirDocument]
    queries: Mapping[str, str]
    qrels: Mapping[str, Mapping[str, int]]

    @property
    def judged_query_ids(self) -> list[str]:
        """Queries that have at least one relevant document, in file order."""
        return [query_id for query_id in self.queries if self.qrels.get(query_id)]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a bad line is named by its number."""
    if not path.is_file():
        raise InvalidInputError(f"missing BEIR file {path}")
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{path}:{line_number}: not valid JSON ({exc})") from exc
    return rows


def load_beir(directory: str | Path, *, split: str = "test") -> BeirCollection:
    """Load a BEIR-layout folder; relevance 0 rows in the qrels are ignored."""
    root = Path(directory)
    if not root.is_dir():
        raise InvalidInputError(f"BEIR folder {str(root)!r} does not exist")
    corpus = {
        str(row["_id"]): BeirDocument(
            doc_id=str(row["_id"]),
            title=str(row.get("title") or ""),
            text=str(row.get("text") or ""),
        )
        for row in read_jsonl(root / "corpus.jsonl")
    }
    queries = {
        str(row["_id"]): str(row.get("text") or "") for row in read_jsonl(root / "queries.jsonl")
    }
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise InvalidInputError(f"missing qrels file {qrels_path}")
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        for row_number, row in enumerate(reader, start=1):
            if not row or (row_number == 1 and row[0] == "query-id"):
                continue
            if len(row) < 3:
                raise InvalidInputError(
                    f"{qrels_path}:{row_number}: expected 3 columns, got {row!r}"
                )
            query_id, doc_id, relevance = row[0], row[1], int(float(row[2]))
            if relevance > 0:
                qrels.setdefault(query_id, {})[doc_id] = relevance
    return BeirCollection(name=root.name, corpus=corpus, queries=queries, qrels=qrels)
