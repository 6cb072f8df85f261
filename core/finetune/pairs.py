"""Training data from relevance judgments: query splits, mined hard negatives, pairs and lists.

Everything here is plain Python over a loaded BEIR collection (no torch), so the parts of
fine-tuning that decide *what* the model learns can be tested exactly and quickly:

- queries are split per collection into a training side and a held-out side, and queries
  with the same text always land on the same side, so a held-out score never measures a
  query the model was trained on under another id;
- negatives are the documents a first stage ranks high for the query but nobody judged
  relevant; every judged positive of that query is excluded, whatever its grade;
- sampling is seeded from (seed, collection, query) so the same arguments always build the
  same pairs, independent of the order collections or queries are given in.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from crossrank.errors import ConfigurationError, InvalidInputError
from crossrank.eval.beir import BeirCollection


@dataclass(frozen=True)
class QuerySplit:
    """Which judged queries of one collection train the model and which evaluate it."""

    collection: str
    train_query_ids: tuple[str, ...]
    heldout_query_ids: tuple[str, ...]


@dataclass(frozen=True)
class TrainingPair:
    """One (query, document) example with a binary label: 1.0 judged relevant, 0.0 mined."""

    collection: str
    query_id: str
    doc_id: str
    query: str
    text: str
    label: float


@dataclass(frozen=True)
class TrainingList:
    """One query with a list of documents and graded labels, for listwise/pairwise losses."""

    collection: str
    query_id: str
    query: str
    doc_ids: tuple[str, ...]
    texts: tuple[str, ...]
    labels: tuple[float, ...]


@dataclass
class PairStats:
    """Counts a user needs to judge whether the judgments were enough (printed by the CLI)."""

    queries: int = 0
    positives: int = 0
    negatives: int = 0
    missing_documents: int = 0
    queries_without_negatives: int = 0
    per_collection: dict[str, dict[str, int]] = field(default_factory=dict)


class CandidateMiner(Protocol):
    """A first stage over one collection: document ids for a query, best first."""

    def candidates(self, query: str, *, k: int) -> list[str]: ...


def _rng(seed: int, *parts: str) -> random.Random:
    # random.Random seeded with a str hashes it with SHA-512: stable across processes,
    # unlike hash(), which PYTHONHASHSEED randomizes.
    return random.Random("\x1f".join([str(seed), *parts]))


def _normalized(text: str) -> str:
    return " ".join(text.lower().split())


def split_queries(collection: BeirCollection, *, heldout_fraction: float, seed: int) -> QuerySplit:
    """Split the judged queries of ``collection``; identical query texts stay together.

    With a fraction above 0 at least one query is held out and at least one trains; 0 holds
    out nothing (train on everything, evaluate elsewhere).
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ConfigurationError(f"heldout_fraction must be in [0, 1), got {heldout_fraction!r}")
    groups: dict[str, list[str]] = {}
    for query_id in collection.judged_query_ids:
        groups.setdefault(_normalized(collection.queries[query_id]), []).append(query_id)
    keys = sorted(groups)
    _rng(seed, "split", collection.name).shuffle(keys)
    if heldout_fraction > 0 and len(keys) < 2:
        raise InvalidInputError(
            f"collection {collection.name!r} has {len(keys)} distinct judged queries; "
            "need at least 2 to hold some out"
        )
    heldout_groups = 0
    if heldout_fraction > 0:
        heldout_groups = min(len(keys) - 1, max(1, round(len(keys) * heldout_fraction)))
    heldout = [query_id for key in keys[:heldout_groups] for query_id in groups[key]]
    train = [query_id for key in keys[heldout_groups:] for query_id in groups[key]]
    order = {query_id: position for position, query_id in enumerate(collection.judged_query_ids)}
    return QuerySplit(
        collection=collection.name,
        train_query_ids=tuple(sorted(train, key=order.__getitem__)),
        heldout_query_ids=tuple(sorted(heldout, key=order.__getitem__)),
    )


def merge_candidate_lists(lists: Sequence[Sequence[str]]) -> list[str]:
    """Interleave several rankings (first of each, then second of each...) without repeats."""
    merged: list[str] = []
    seen: set[str] = set()
    for rank in range(max((len(ranking) for ranking in lists), default=0)):
        for ranking in lists:
            if rank < len(ranking) and ranking[rank] not in seen:
                seen.add(ranking[rank])
                merged.append(ranking[rank])
    return merged


def mine_negatives(
    collection: BeirCollection,
    query_ids: Iterable[str],
    miners: Sequence[CandidateMiner],
    *,
    depth: int,
) -> dict[str, list[str]]:
    """For each query, the top-``depth`` candidates of every miner minus its judged positives.

    Documents judged relevant to the query at any grade are never returned as negatives.
    """
    if depth < 1:
        raise ConfigurationError(f"negative depth must be a positive integer, got {depth!r}")
    if not miners:
        raise ConfigurationError("at least one negative miner is needed")
    negatives: dict[str, list[str]] = {}
    for query_id in query_ids:
        judged = collection.qrels.get(query_id, {})
        query = collection.queries[query_id]
        rankings = [miner.candidates(query, k=depth + len(judged)) for miner in miners]
        pool = [doc_id for doc_id in merge_candidate_lists(rankings) if doc_id not in judged]
        negatives[query_id] = pool[: depth * len(miners)]
    return negatives


def _checked_counts(max_positives_per_query: int, negatives_per_positive: int) -> None:
    if max_positives_per_query < 1:
        raise ConfigurationError(
            f"max_positives_per_query must be a positive integer, got {max_positives_per_query!r}"
        )
    if negatives_per_positive < 1:
        raise ConfigurationError(
            f"negatives_per_positive must be a positive integer, got {negatives_per_positive!r}"
        )


def _sampled_positives(
    collection: BeirCollection, query_id: str, *, limit: int, seed: int, stats: PairStats
) -> list[tuple[str, int]]:
    judged = collection.qrels.get(query_id, {})
    present = sorted(
        (doc_id, grade) for doc_id, grade in judged.items() if doc_id in collection.corpus
    )
    stats.missing_documents += len(judged) - len(present)
    if len(present) > limit:
        present = _rng(seed, "positives", collection.name, query_id).sample(present, limit)
    return present


def build_pairs(
    collection: BeirCollection,
    query_ids: Sequence[str],
    negatives: Mapping[str, Sequence[str]],
    *,
    max_positives_per_query: int,
    negatives_per_positive: int,
    seed: int,
    stats: PairStats | None = None,
) -> list[TrainingPair]:
    """Binary-labelled pairs: sampled judged positives and as many times more mined negatives.

    Negatives are drawn uniformly from the mined pool rather than strictly from its top:
    on collections with incomplete judgments the very top unjudged documents are often
    relevant, and always training on them as negatives teaches the model to demote them.
    """
    _checked_counts(max_positives_per_query, negatives_per_positive)
    stats = stats if stats is not None else PairStats()
    per_collection = stats.per_collection.setdefault(
        collection.name, {"queries": 0, "positives": 0, "negatives": 0}
    )
    pairs: list[TrainingPair] = []
    for query_id in query_ids:
        query = collection.queries[query_id]
        positives = _sampled_positives(
            collection, query_id, limit=max_positives_per_query, seed=seed, stats=stats
        )
        if not positives:
            continue
        pool = [doc_id for doc_id in negatives.get(query_id, ()) if doc_id in collection.corpus]
        wanted = min(len(pool), negatives_per_positive * len(positives))
        chosen = _rng(seed, "negatives", collection.name, query_id).sample(pool, wanted)
        if not chosen:
            stats.queries_without_negatives += 1
        labelled = [(doc_id, 1.0) for doc_id, _grade in positives]
        labelled += [(doc_id, 0.0) for doc_id in chosen]
        pairs.extend(
            TrainingPair(
                collection.name, query_id, doc_id, query, collection.corpus[doc_id].full_text, label
            )
            for doc_id, label in labelled
        )
        stats.queries += 1
        stats.positives += len(positives)
        stats.negatives += len(chosen)
        per_collection["queries"] += 1
        per_collection["positives"] += len(positives)
        per_collection["negatives"] += len(chosen)
    return pairs


def build_lists(
    collection: BeirCollection,
    query_ids: Sequence[str],
    negatives: Mapping[str, Sequence[str]],
    *,
    max_positives_per_query: int,
    negatives_per_positive: int,
    seed: int,
    stats: PairStats | None = None,
) -> list[TrainingList]:
    """One list per sampled positive: the positive (labelled with its grade) and mined negatives.

    Graded judgments (Cranfield 1-4, Cystic Fibrosis 1-8) reach listwise losses as they are,
    so a loss like LambdaLoss can use the grades that binary pairs throw away.
    """
    _checked_counts(max_positives_per_query, negatives_per_positive)
    stats = stats if stats is not None else PairStats()
    per_collection = stats.per_collection.setdefault(
        collection.name, {"queries": 0, "positives": 0, "negatives": 0}
    )
    lists: list[TrainingList] = []
    for query_id in query_ids:
        query = collection.queries[query_id]
        positives = _sampled_positives(
            collection, query_id, limit=max_positives_per_query, seed=seed, stats=stats
        )
        pool = [doc_id for doc_id in negatives.get(query_id, ()) if doc_id in collection.corpus]
        if not positives:
            continue
        if not pool:
            stats.queries_without_negatives += 1
            continue
        rng = _rng(seed, "lists", collection.name, query_id)
        for doc_id, grade in positives:
            chosen = rng.sample(pool, min(len(pool), negatives_per_positive))
            doc_ids = (doc_id, *chosen)
            lists.append(
                TrainingList(
                    collection=collection.name,
                    query_id=query_id,
                    query=query,
                    doc_ids=doc_ids,
                    texts=tuple(collection.corpus[item].full_text for item in doc_ids),
                    labels=(float(grade), *([0.0] * len(chosen))),
                )
            )
            stats.negatives += len(chosen)
            per_collection["negatives"] += len(chosen)
        stats.queries += 1
        stats.positives += len(positives)
        per_collection["queries"] += 1
        per_collection["positives"] += len(positives)
    return lists
