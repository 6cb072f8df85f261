"""IR metrics through ranx, plus paired significance tests over per-query values.

nDCG uses the exponential gain 2^rel - 1 (ranx's ``ndcg_burges``), as the reference values
of the shared collections do; for binary judgments it equals the linear-gain nDCG.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from crossrank.errors import InvalidInputError, missing_dependency

#: our metric name -> ranx metric name; the fixed set every report carries
METRICS: dict[str, str] = {
    "ndcg@10": "ndcg_burges@10",
    "mrr@10": "mrr@10",
    "recall@10": "recall@10",
    "recall@100": "recall@100",
}
#: metric families that take any cut-off (``ndcg@5``, ``recall@20``...)
_FAMILIES = {"ndcg": "ndcg_burges", "mrr": "mrr", "recall": "recall"}


def ranx_name(metric: str) -> str:
    """The ranx name of ``family@k`` for a family in :data:`_FAMILIES` and a positive k."""
    family, _, cutoff = metric.partition("@")
    if family not in _FAMILIES or not cutoff.isdigit() or int(cutoff) < 1:
        raise InvalidInputError(
            f"unknown metric {metric!r}; expected one of {sorted(_FAMILIES)} followed by "
            "@ and a positive cut-off, e.g. 'ndcg@10'"
        )
    return f"{_FAMILIES[family]}@{int(cutoff)}"


def cutoff_metrics(top_k: int) -> list[str]:
    """nDCG, MRR and Recall at ``top_k``: the metrics a ``--top-k`` run adds to the fixed set."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InvalidInputError(f"top_k must be a positive integer, got {top_k!r}")
    return [f"{family}@{top_k}" for family in _FAMILIES]


Ranking = Sequence[str]


def _run_dict(rankings: Mapping[str, Ranking]) -> dict[str, dict[str, float]]:
    # Scores derived from positions: ranx sorts by score, so ranks are preserved exactly.
    run: dict[str, dict[str, float]] = {}
    for query_id, ranking in rankings.items():
        scores: dict[str, float] = {}
        for position, doc_id in enumerate(ranking):
            scores.setdefault(doc_id, float(len(ranking) - position))
        # ranx rejects empty result lists; an id that matches no judgment scores zero.
        run[query_id] = scores or {"__no_result__": 0.0}
    return run


def per_query_metrics(
    qrels: Mapping[str, Mapping[str, int]],
    rankings: Mapping[str, Ranking],
    metrics: Sequence[str] = tuple(METRICS),
) -> dict[str, dict[str, float]]:
    """``{metric: {query id: value}}`` over the queries of ``rankings`` (all must be judged)."""
    try:
        from ranx import Qrels, Run, evaluate
    except ImportError as exc:
        raise missing_dependency("ranx", "eval") from exc
    names = [ranx_name(metric) for metric in metrics]
    query_ids = list(rankings)
    if not query_ids:
        raise InvalidInputError("no queries to evaluate")
    missing = [query_id for query_id in query_ids if not qrels.get(query_id)]
    if missing:
        raise InvalidInputError(f"queries without relevance judgments: {missing[:5]}")
    ranx_qrels = Qrels({query_id: dict(qrels[query_id]) for query_id in query_ids})
    ranx_run = Run(_run_dict({query_id: rankings[query_id] for query_id in query_ids}))
    unique = list(dict.fromkeys(names))
    values = evaluate(ranx_qrels, ranx_run, unique, return_mean=False, make_comparable=True)
    if len(unique) == 1:
        values = {unique[0]: values}
    # ranx orders per-query arrays by sorted query id.
    ordered_ids = sorted(query_ids)
    return {
        metric: {
            query_id: float(value)
            for query_id, value in zip(ordered_ids, np.asarray(values[name]), strict=True)
        }
        for metric, name in zip(metrics, names, strict=True)
    }


def mean_metrics(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    return {metric: float(np.mean(list(values.values()))) for metric, values in per_query.items()}


def max_gain_test(
    gains: np.ndarray, *, permutations: int = 5000, seed: int = 0, chunk: int = 500
) -> float:
    """p-value of the best of many configurations' gains over a baseline.

    ``gains`` is (configurations x queries) of per-query gain over the baseline. Testing only
    the winner with a plain paired test ignores that it was picked as the best of many: with
    hundreds of thresholds and blends, some configuration beats the baseline on a few dozen
    queries by chance. Here every permutation flips each query's sign for all configurations
    at once and records the *largest* paired t statistic, so the null distribution is that
    of the maximum (Westfall and Young's max-T) and the p-value holds for the whole family.
    Studentizing keeps one erratic configuration with a big mean from drowning out a steady
    one with a smaller mean.
    """
    matrix = np.atleast_2d(np.asarray(gains, dtype=np.float64))
    if matrix.size == 0:
        raise InvalidInputError("max_gain_test needs at least one configuration and one query")
    queries = matrix.shape[1]
    if queries < 2:
        raise InvalidInputError(f"max_gain_test needs at least two queries, got {queries}")
    squares = np.sum(matrix**2, axis=1, keepdims=True)

    def t_statistics(means: np.ndarray) -> np.ndarray:
        variance = np.maximum(squares - queries * means**2, 0.0) / (queries - 1)
        # A floor relative to the gains' size: identical gains on every query give a variance
        # that is rounding noise, which must not decide between two near-infinite t values.
        floor = 1e-6 * np.sqrt(squares / queries) / np.sqrt(queries) + 1e-300
        return means / np.maximum(np.sqrt(variance / queries), floor)

    observed = float(t_statistics(matrix.mean(axis=1, keepdims=True)).max())
    rng = np.random.default_rng(seed)
    exceed = 0
    done = 0
    while done < permutations:
        size = min(chunk, permutations - done)
        signs = rng.choice((-1.0, 1.0), size=(queries, size))
        maxima = t_statistics(matrix @ signs / queries).max(axis=0)
        exceed += int(np.sum(maxima >= observed * (1 - 1e-9)))
        done += size
    return (exceed + 1) / (permutations + 1)


def paired_tests(
    baseline: Mapping[str, float],
    candidate: Mapping[str, float],
    *,
    permutations: int = 10000,
    seed: int = 0,
) -> dict[str, float]:
    """Mean difference (candidate - baseline) with a paired t-test and a sign-flip test.

    The randomization test flips the sign of each query's difference at random and asks how
    often the mean difference is at least as large in magnitude: no normality assumption.
    """
    query_ids = sorted(set(baseline) & set(candidate))
    if not query_ids:
        raise InvalidInputError("paired test needs queries common to both runs")
    differences = np.asarray([candidate[q] - baseline[q] for q in query_ids], dtype=np.float64)
    observed = float(differences.mean())
    rng = np.random.default_rng(seed)
    signs = rng.choice((-1.0, 1.0), size=(permutations, differences.size))
    permuted = np.abs((signs * differences).mean(axis=1))
    randomization_p = float((np.sum(permuted >= abs(observed) - 1e-12) + 1) / (permutations + 1))
    if np.allclose(differences, differences[0]):
        t_test_p = 1.0 if abs(observed) < 1e-12 else 0.0
    else:
        try:
            from scipy.stats import ttest_rel
        except ImportError as exc:
            raise missing_dependency("scipy", "eval") from exc
        t_test_p = float(
            ttest_rel([candidate[q] for q in query_ids], [baseline[q] for q in query_ids]).pvalue
        )
    return {
        "mean_difference": observed,
        "p_randomization": randomization_p,
        "p_ttest": t_test_p,
        "queries": float(len(query_ids)),
    }
