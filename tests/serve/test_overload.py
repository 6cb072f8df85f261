"""Overload: more concurrent requests than the server admits.

Each request either succeeds with the right answer or is refused 429 with Retry-After; none
is lost, none gets another request's answer.
"""

from __future__ import annotations

import asyncio

import httpx

from crossrank import Reranker
from crossrank.serve.settings import ServeSettings
from tests.serve.backends import SlowKeywordBackend
from tests.serve.conftest import DOCUMENTS, serving
from tests.support.backends import KeywordBackend


def test_overload_answers_429_and_loses_nothing() -> None:
    settings = ServeSettings(max_in_flight=2, max_queue=3, retry_after_s=3)
    requests = 24
    with serving(Reranker(SlowKeywordBackend(delay_s=0.1)), settings, warm_up=False) as server:

        async def fire() -> list[httpx.Response]:
            limits = httpx.Limits(max_connections=requests)
            async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
                return await asyncio.gather(
                    *(
                        client.post(
                            "/v2/rerank",
                            json={"query": f"capital {i} france", "documents": DOCUMENTS},
                        )
                        for i in range(requests)
                    )
                )

        answers = asyncio.run(fire())
        metrics = httpx.get(f"{server.url}/metrics").text

    assert len(answers) == requests
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) >= settings.capacity
    assert statuses.count(429) >= 1
    reference = Reranker(KeywordBackend())
    for i, answer in enumerate(answers):
        if answer.status_code == 429:
            assert answer.headers["retry-after"] == "3"
            continue
        expected = reference.rerank(f"capital {i} france", DOCUMENTS)
        got = answer.json()["results"]
        assert [r["index"] for r in got] == [item.input_index for item in expected]
        assert [r["relevance_score"] for r in got] == expected.scores
    assert 'crossrank_rejections_total{reason="queue_full"}' in metrics
