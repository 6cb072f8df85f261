"""BM25 on the real collections is never far below the README's plain-BM25 reference."""

from __future__ import annotations

import pytest

from crossrank.eval.beir import load_beir
from crossrank.eval.first_stage import FirstStage
from crossrank.eval.metrics import mean_metrics, per_query_metrics
from tests.support.paths import require_shared_data

# nDCG@10 of a plain BM25 (k1=0.9, b=0.4) from ../shared/data/README.md
REFERENCE = {"adi": 0.433, "medline": 0.676, "cranfield": 0.331}


@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_bm25_is_not_below_the_reference(name: str) -> None:
    collection = load_beir(require_shared_data(name))
    first_stage = FirstStage(collection, "bm25")
    rankings = {
        query_id: [str(c.id) for c in first_stage.retrieve(collection.queries[query_id], k=100)]
        for query_id in collection.judged_query_ids
    }
    ndcg = mean_metrics(per_query_metrics(collection.qrels, rankings, ["ndcg@10"]))["ndcg@10"]
    assert ndcg >= REFERENCE[name] - 0.01
