"""How much score error the "nDCG@10 within 0.005 of fp32 on every collection" floor tolerates.

``local_backend.py`` reports each reduced-precision variant's nDCG@10 difference from fp32;
this script asks whether a miss comes from the variant's error size or from the test's
sensitivity. It scores BM25's top 30 for every judged query of every shared collection with
the reference cross-encoder in fp32 and in each variant, then:

1. measures each variant's score error: its scores minus fp32's, centred per query (a shift
   common to a query's candidates changes no ranking);
2. prints the real nDCG@10 difference per collection;
3. replays the error at smaller sizes: fp32 scores plus the variant's own centred errors,
   resampled independently per pair and multiplied by a factor, many draws per factor. For
   each factor it prints the share of draws with every collection within 0.005 and the
   median worst collection. A factor of 1 is the variant as measured; the smallest factor
   that passes most draws is the error size the floor asks for.
4. counts near-ties: the share of queries whose fp32 top 11 holds two adjacent candidates,
   one relevant and one not, closer than the variant's typical error.

Scores are kept in ``--out`` (``scores.json``) so the analysis reruns without the model.
nDCG here is computed in numpy for speed (thousands of replays); it is checked against
ranx (the evaluator ``crossrank eval`` uses) on the unperturbed fp32 run before use.

Run::

    python benchmarks/precision_noise.py                    # score (~15 min) and analyse
    python benchmarks/precision_noise.py --draws 400        # reuse scores, more replays
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _local_workload as workload
from local_backend import build_backends, reference_model

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / ".cache" / "precision-noise"
FACTORS = (1.0, 0.5, 0.25, 0.1, 0.05)
CUTOFF = 10
#: The old floor this script questions: every collection's |delta nDCG@10| within it.
NDCG_TOLERANCE = 0.005

# {collection: {"queries": {query id: {"docs": [...], "scores": {variant: [...]}}}}}
Scores = dict[str, dict[str, dict[str, dict]]]


def score_collections(variants: list[str]) -> Scores:
    """BM25 top-30 candidates per judged query, scored by fp32 and every variant."""
    from crossrank.eval.beir import load_beir
    from crossrank.eval.fidelity_check import bm25_candidates

    model = reference_model()
    if model is None:
        raise SystemExit("needs a trained cross-encoder: ../shared/models or reference_reranker.py")
    backends, _ = build_backends(
        model,
        ["torch-fp32", *variants],
        cache_dir=str(DEFAULT_OUT / "onnx"),
        token_budget=None,
        threads=None,
    )
    scored: Scores = {}
    for directory in sorted(p for p in workload.SHARED_DATA.iterdir() if p.is_dir()):
        collection = load_beir(directory)
        queries: dict[str, dict] = {}
        judged = list(collection.judged_query_ids)
        for query_id, docs in bm25_candidates(collection, judged).items():
            query = collection.queries[query_id]
            texts = [collection.corpus[d].full_text for d in docs]
            queries[query_id] = {
                "docs": docs,
                "scores": {
                    name: [float(s) for s in backend.score(query, texts)] if texts else []
                    for name, backend in backends.items()
                },
            }
        scored[collection.name] = {"queries": queries}
        print(f"  scored {collection.name} ({len(queries)} queries)", flush=True)
    return scored


DISCOUNTS = 1 / np.log2(np.arange(2, CUTOFF + 2))


def _ideal_dcg(grades: list[int]) -> float:
    """DCG@10 of the judged documents in their best order (exponential gain, as ranx's)."""
    best = np.sort(grades)[::-1][:CUTOFF]
    return float(np.sum((2.0**best - 1) * DISCOUNTS[: best.size]))


class Judged:
    """One collection's candidates as arrays, for fast nDCG@10 under perturbed scores."""

    def __init__(self, name: str, queries: dict[str, dict], qrels: dict[str, dict[str, int]]):
        self.name = name
        self.query_ids = [q for q in queries if queries[q]["docs"]]
        self.empty = len(queries) - len(self.query_ids)  # no candidates: nDCG 0 under any scores
        self.gains = [
            np.asarray([2.0 ** qrels[q].get(d, 0) - 1 for d in queries[q]["docs"]])
            for q in self.query_ids
        ]
        self.ideal = [_ideal_dcg(list(qrels[q].values())) for q in self.query_ids]
        self.scores = {
            variant: [np.asarray(queries[q]["scores"][variant]) for q in self.query_ids]
            for variant in queries[self.query_ids[0]]["scores"]
        }

    def ndcg(self, scores: list[np.ndarray]) -> float:
        total = 0.0
        for gains, ideal, values in zip(self.gains, self.ideal, scores, strict=True):
            top = np.argsort(-values, kind="stable")[:CUTOFF]
            total += float(np.sum(gains[top] * DISCOUNTS[: len(top)])) / ideal
        return total / (len(self.query_ids) + self.empty)

    def per_query_ndcg(self, scores: list[np.ndarray]) -> dict[str, float]:
        """nDCG@10 per judged query (queries without candidates count as 0)."""
        values = {f"empty{index}": 0.0 for index in range(self.empty)}
        for query_id, gains, ideal, row in zip(
            self.query_ids, self.gains, self.ideal, scores, strict=True
        ):
            top = np.argsort(-row, kind="stable")[:CUTOFF]
            values[query_id] = float(np.sum(gains[top] * DISCOUNTS[: len(top)])) / ideal
        return values

    def residuals(self, variant: str) -> np.ndarray:
        """The variant's errors against fp32, centred per query."""
        parts = []
        for fp32, other in zip(self.scores["torch-fp32"], self.scores[variant], strict=True):
            error = other - fp32
            parts.append(error - error.mean())
        return np.concatenate(parts)

    def near_tie_share(self, width: float) -> float:
        """Queries whose fp32 top 11 has adjacent relevant/non-relevant candidates < width apart."""
        hits = 0
        for gains, values in zip(self.gains, self.scores["torch-fp32"], strict=True):
            order = np.argsort(-values, kind="stable")[: CUTOFF + 1]
            gaps = -np.diff(values[order])
            mixed = (gains[order][:-1] > 0) != (gains[order][1:] > 0)
            hits += bool(np.any(mixed & (gaps < width)))
        return hits / len(self.query_ids)


def check_against_ranx(judged: Judged, queries: dict[str, dict], qrels: dict) -> None:
    from crossrank.eval.metrics import mean_metrics, per_query_metrics

    rankings = {}
    for query_id, entry in queries.items():
        values = np.asarray(entry["scores"]["torch-fp32"])
        rankings[query_id] = [entry["docs"][i] for i in np.argsort(-values, kind="stable")]
    expected = mean_metrics(per_query_metrics(qrels, rankings, ["ndcg@10"]))["ndcg@10"]
    mine = judged.ndcg(judged.scores["torch-fp32"])
    if abs(mine - expected) > 1e-9:
        raise SystemExit(f"{judged.name}: numpy nDCG@10 {mine:.6f} != ranx {expected:.6f}")


def _perturbed(
    scores: list[np.ndarray], errors: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """Each query's scores plus errors drawn independently, with replacement, from ``errors``."""
    return [values + rng.choice(errors, size=values.size) for values in scores]


def analyse(scored: Scores, variants: list[str], *, draws: int, seed: int) -> None:
    from crossrank.eval.beir import load_beir
    from crossrank.eval.fidelity_rule import judge_fidelity

    collections = []
    for name, entry in scored.items():
        qrels = {q: dict(v) for q, v in load_beir(workload.SHARED_DATA / name).qrels.items()}
        judged = Judged(name, entry["queries"], qrels)
        check_against_ranx(judged, entry["queries"], qrels)
        collections.append(judged)
    baseline = {c.name: c.ndcg(c.scores["torch-fp32"]) for c in collections}
    rng = np.random.default_rng(seed)
    for variant in variants:
        errors = np.concatenate([c.residuals(variant) for c in collections])
        spread = float(np.std(errors))
        print(
            f"\n## {variant}: score error vs fp32 (centred per query, {errors.size} pairs): "
            f"std {spread:.4f}, p99 |e| {np.quantile(np.abs(errors), 0.99):.4f}, "
            f"max |e| {np.abs(errors).max():.4f}"
        )
        print("\n| collection | queries | real delta | near-tie queries (gap < error std) |")
        print("|---|---:|---:|---:|")
        for c in collections:
            delta = c.ndcg(c.scores[variant]) - baseline[c.name]
            print(
                f"| {c.name} | {len(c.query_ids) + c.empty} | {delta:+.4f} | "
                f"{c.near_tie_share(spread):.0%} |"
            )
        verdict = judge_fidelity(
            {c.name: c.per_query_ndcg(c.scores["torch-fp32"]) for c in collections},
            {c.name: c.per_query_ndcg(c.scores[variant]) for c in collections},
        )
        print(f"\nThe fidelity rule (crossrank.eval.fidelity_rule):\n{verdict.table()}")
        print(
            f"\nReplayed error ({draws} draws per factor): share of draws with every "
            f"collection within {NDCG_TOLERANCE}, and the worst collection's |delta|"
        )
        print("\n| error factor | error std | all within | median worst | p90 worst |")
        print("|---:|---:|---:|---:|---:|")
        for factor in FACTORS:
            worst = np.empty(draws)
            for draw in range(draws):
                worst[draw] = max(
                    abs(
                        c.ndcg(_perturbed(c.scores["torch-fp32"], factor * errors, rng))
                        - baseline[c.name]
                    )
                    for c in collections
                )
            print(
                f"| {factor:g} | {factor * spread:.4f} | {np.mean(worst <= NDCG_TOLERANCE):.0%} | "
                f"{np.median(worst):.4f} | {np.quantile(worst, 0.9):.4f} |",
                flush=True,
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["torch-bf16", "torch-int8"])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"CPU: {workload.cpu_line()}", flush=True)
    if not workload.SHARED_DATA.is_dir():
        print(f"needs the shared collections at {workload.SHARED_DATA}", file=sys.stderr)
        return 1
    path = args.out / "scores.json"
    scored: Scores | None = None
    if path.is_file():
        scored = json.loads(path.read_text())
        first = next(iter(next(iter(scored.values()))["queries"].values()))["scores"]
        if not set(args.variants) <= set(first):
            scored = None
    if scored is None:
        print("scoring every judged query's BM25 top 30 (fp32 and variants) ...", flush=True)
        scored = score_collections(args.variants)
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(scored))
    analyse(scored, args.variants, draws=args.draws, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
