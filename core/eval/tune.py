"""``crossrank tune-selective``: choose a reranking configuration from labelled queries.

Candidates are: first stage only (``selective="never"``), the reranker, the reranker blended
with the first stage (RRF or weighted, several weights), each optionally behind a selective
policy (margin, entropy, agreement) at any threshold seen in the data. All are scored from
one pass of backend scoring: a skipped query's ranking is the first stage's, so a selective
configuration's per-query nDCG is picked from the two runs it switches between.

Modes:
- ``best`` — the highest tuning-half nDCG@10; anything but first stage only must beat it by
  ``--min-gain`` *and* pass a randomization test at ``--max-p`` (default 0.05; across many
  collections and rerankers a 10% level lets about one in ten no-gain tunings through,
  which is what happened on lisa) on the tuning half that
  accounts for the winner being the best of every option tried (on a few dozen queries,
  one of hundreds of thresholds and blends beats the first stage by luck; a reranker that
  does not clearly help is not worth its latency or risk). Once something passes, the
  option kept is the one with the best gain minus two standard errors, which prefers
  steady gains (usually a blend) over large but erratic ones;
- ``skip`` — the best threshold that skips at least ``--target-skip`` of queries;
- ``max-loss`` — the highest skip rate losing at most ``--max-loss`` nDCG@10 to always
  reranking.
The choice is saved as a :meth:`crossrank.Reranker.to_config` JSON file; the numbers on the
held-out half are printed so the choice is judged on queries it was not picked on.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossrank.eval.metrics import per_query_metrics
from crossrank.eval.runner import Evaluation, RunSpec
from crossrank.selective import (
    AgreementPolicy,
    EntropyPolicy,
    MarginPolicy,
    ThresholdPolicy,
)

BLEND_CHOICES = (
    "rrf:60:0.3",
    "rrf:60:0.5",
    "rrf:60:0.7",
    "weighted:0.3",
    "weighted:0.5",
    "weighted:0.7",
)
POLICY_KINDS = ("margin", "entropy", "agreement")
FIRST_STAGE_RUN = "first-stage"
RERANKED_RUN = "reranked"


def tuning_specs(blends: Sequence[str] = BLEND_CHOICES) -> list[RunSpec]:
    """The runs a tuning pass needs: first stage, always-rerank, and every blend."""
    specs = [RunSpec(FIRST_STAGE_RUN, rerank=False), RunSpec(RERANKED_RUN)]
    specs += [RunSpec(f"blend:{blend}", blend=blend) for blend in blends]
    return specs


def _policy(kind: str, threshold: float) -> ThresholdPolicy:
    if kind == "margin":
        return MarginPolicy(threshold=threshold)
    if kind == "entropy":
        return EntropyPolicy(threshold=threshold)
    if kind == "agreement":
        return AgreementPolicy(threshold=threshold)
    raise ValueError(f"unknown policy kind {kind!r}")


@dataclass
class Option:
    """One candidate configuration, with its per-query nDCG@10 and skip decisions."""

    selective: str
    blend: str | None
    ndcg: dict[str, float]
    skipped: dict[str, bool]

    def mean(self, query_ids: Sequence[str]) -> float:
        return float(np.mean([self.ndcg[q] for q in query_ids]))

    def skip_rate(self, query_ids: Sequence[str]) -> float:
        return float(np.mean([self.skipped[q] for q in query_ids]))

    @property
    def label(self) -> str:
        if self.selective == "never":
            return "first stage only"
        return f"rerank[{self.blend or 'no blend'}] selective={self.selective}"


@dataclass
class Choice:
    option: Option
    tune_ids: list[str]
    held_ids: list[str]
    baseline: Option
    always: Option
    scores: dict[str, Any] = field(default_factory=dict)


def ndcg_per_run(evaluation: Evaluation) -> dict[str, dict[str, float]]:
    qrels = evaluation.collection.qrels
    return {
        name: per_query_metrics(qrels, run.rankings, ["ndcg@10"])["ndcg@10"]
        for name, run in evaluation.runs.items()
    }


def enumerate_options(
    evaluation: Evaluation,
    *,
    threshold_ids: Sequence[str],
    policies: Sequence[str] = POLICY_KINDS,
    with_blends: bool = True,
) -> list[Option]:
    """Every configuration; thresholds are taken from signals seen on ``threshold_ids``."""
    ndcg = ndcg_per_run(evaluation)
    ids = evaluation.query_ids
    first = ndcg[FIRST_STAGE_RUN]
    options = [Option("never", None, dict(first), dict.fromkeys(ids, True))]
    branches = {None: ndcg[RERANKED_RUN]}
    if with_blends:
        for name, values in ndcg.items():
            if name.startswith("blend:"):
                branches[name.removeprefix("blend:")] = values  # type: ignore[index]
    for blend, values in branches.items():
        options.append(Option("always", blend, dict(values), dict.fromkeys(ids, False)))
    for kind in policies:
        probe = _policy(kind, 0.0)
        signals = {
            q: probe.signal(evaluation.collection.queries[q], evaluation.heads[q]) for q in ids
        }
        seen = sorted({s for q, s in signals.items() if s is not None and q in set(threshold_ids)})
        if not seen:
            continue
        for threshold in seen:
            policy = _policy(kind, float(threshold))
            skipped = {
                q: s is not None and policy.skips_at(s, threshold) for q, s in signals.items()
            }
            for blend, values in branches.items():
                options.append(
                    Option(
                        policy.spec,
                        blend,
                        {q: first[q] if skipped[q] else values[q] for q in ids},
                        skipped,
                    )
                )
    return options


#: Family-wise level of the randomization test in ``best`` mode.
DEFAULT_MAX_P = 0.05


def choose(
    options: Sequence[Option],
    tune_ids: Sequence[str],
    *,
    mode: str = "best",
    min_gain: float = 0.01,
    max_p: float = DEFAULT_MAX_P,
    target_skip: float = 0.3,
    max_loss: float = 0.005,
) -> Option:
    """Pick one option using only ``tune_ids`` (see the module docstring for the modes)."""
    baseline = next(o for o in options if o.selective == "never")
    always = next(o for o in options if o.selective == "always" and o.blend is None)
    if mode == "best":
        best = max(options, key=lambda o: (o.mean(tune_ids), o.skip_rate(tune_ids)))
        if best is baseline or best.mean(tune_ids) < baseline.mean(tune_ids) + min_gain:
            return baseline
        if family_p_value(options, baseline, tune_ids) > max_p:
            return baseline
        return max(
            options,
            key=lambda o: (lower_gain_bound(o, baseline, tune_ids), o.skip_rate(tune_ids)),
        )
    plain = [o for o in options if o.blend is None and o.selective not in ("always", "never")]
    if mode == "skip":
        eligible = [o for o in plain if o.skip_rate(tune_ids) >= target_skip]
        if not eligible:
            return baseline
        return max(eligible, key=lambda o: (o.mean(tune_ids), o.skip_rate(tune_ids)))
    if mode == "max-loss":
        reference = always.mean(tune_ids)
        eligible = [o for o in plain if reference - o.mean(tune_ids) <= max_loss]
        if not eligible:
            return always
        return max(eligible, key=lambda o: (o.skip_rate(tune_ids), o.mean(tune_ids)))
    raise ValueError(f"unknown tuning mode {mode!r}")


#: How many standard errors below its mean gain an option is judged at (about a one-sided
#: 97.5% bound under normality).
STANDARD_ERRORS = 2.0


def lower_gain_bound(option: Option, baseline: Option, query_ids: Sequence[str]) -> float:
    """Mean per-query gain over the baseline minus :data:`STANDARD_ERRORS` standard errors.

    Among options that beat the first stage, the one with the highest *pessimistic* gain is
    kept: a blend that gains a little on every query generalizes to new queries better than
    a full rerank that gains a lot on average from a few big wins and some big losses.
    """
    gains = np.asarray([option.ndcg[q] - baseline.ndcg[q] for q in query_ids])
    if gains.size < 2:
        return float(gains.mean())
    return float(gains.mean() - STANDARD_ERRORS * gains.std(ddof=1) / np.sqrt(gains.size))


def family_p_value(options: Sequence[Option], baseline: Option, tune_ids: Sequence[str]) -> float:
    """How likely the best option's gain is under "no option beats the baseline".

    The best option was picked as the maximum over every option, so it is tested against the
    maximum's null distribution (:func:`crossrank.eval.metrics.max_gain_test`), not alone.
    """
    from crossrank.eval.metrics import max_gain_test

    others = [option for option in options if option is not baseline]
    gains = np.asarray([[option.ndcg[q] - baseline.ndcg[q] for q in tune_ids] for option in others])
    return max_gain_test(gains, permutations=5000)


def summarize(
    option: Option, baseline: Option, always: Option, ids: Sequence[str]
) -> dict[str, float]:
    return {
        "ndcg@10": option.mean(ids),
        "skip_rate": option.skip_rate(ids),
        "delta_vs_first_stage": option.mean(ids) - baseline.mean(ids),
        "delta_vs_always": option.mean(ids) - always.mean(ids),
        "first_stage_ndcg@10": baseline.mean(ids),
        "always_ndcg@10": always.mean(ids),
    }


def tune_evaluation(
    evaluation: Evaluation,
    *,
    mode: str = "best",
    seed: int = 0,
    policies: Sequence[str] = POLICY_KINDS,
    min_gain: float = 0.01,
    max_p: float = DEFAULT_MAX_P,
    target_skip: float = 0.3,
    max_loss: float = 0.005,
) -> Choice:
    from crossrank.eval.runner import split_queries

    tune_ids, held_ids = split_queries(evaluation.query_ids, seed=seed)
    if evaluation.first_stage != "hybrid":
        policies = [p for p in policies if p != "agreement"]
    options = enumerate_options(
        evaluation, threshold_ids=tune_ids, policies=policies, with_blends=mode == "best"
    )
    option = choose(
        options,
        tune_ids,
        mode=mode,
        min_gain=min_gain,
        max_p=max_p,
        target_skip=target_skip,
        max_loss=max_loss,
    )
    baseline = next(o for o in options if o.selective == "never")
    always = next(o for o in options if o.selective == "always" and o.blend is None)
    return Choice(
        option=option,
        tune_ids=list(tune_ids),
        held_ids=list(held_ids),
        baseline=baseline,
        always=always,
        scores={
            "tune": summarize(option, baseline, always, tune_ids),
            "held_out": summarize(option, baseline, always, held_ids),
        },
    )


def reranker_config(choice: Choice, *, backend: str, model: str | None) -> dict[str, Any]:
    from crossrank.engine import Reranker
    from crossrank.selective import parse_policy

    reranker = Reranker(
        backend,
        model=model,
        selective=parse_policy(choice.option.selective),
        blend=choice.option.blend,
    )
    return reranker.to_config()


# -- command line -------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    from crossrank.eval.command import add_common_arguments

    add_common_arguments(parser)
    parser.add_argument("--mode", choices=("best", "skip", "max-loss"), default="best")
    parser.add_argument("--policy", action="append", choices=POLICY_KINDS, help="repeatable")
    parser.add_argument("--target-skip", type=float, default=0.3)
    parser.add_argument(
        "--max-loss", type=float, default=0.005, help="in nDCG@10 (0.005 = 0.5 points)"
    )
    parser.add_argument("--min-gain", type=float, default=0.01)
    parser.add_argument(
        "--max-p", type=float, default=DEFAULT_MAX_P, help="family randomization-test p for best"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the tuning/held-out split")
    parser.add_argument("--out", required=True, help="where to write the Reranker config JSON")


def run(args: argparse.Namespace) -> int:
    from crossrank.eval.command import build_backend, load_first_stage

    if args.backend is None:
        raise SystemExit("tune-selective needs --backend (and --model for a cross-encoder)")
    collection, first_stage = load_first_stage(args)
    backend = build_backend(args)
    from crossrank.eval.runner import evaluate_runs

    evaluation = evaluate_runs(
        collection,
        first_stage,
        tuning_specs() if args.mode == "best" else tuning_specs(()),
        depth=args.depth,
        backend=backend,
        progress=not args.quiet,
    )
    choice = tune_evaluation(
        evaluation,
        mode=args.mode,
        seed=args.seed,
        policies=args.policy or POLICY_KINDS,
        min_gain=args.min_gain,
        max_p=args.max_p,
        target_skip=args.target_skip,
        max_loss=args.max_loss,
    )
    config = reranker_config(choice, backend=args.backend, model=args.model)
    Path(args.out).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    print(f"chose: {choice.option.label}")
    for split in ("tune", "held_out"):
        numbers = choice.scores[split]
        print(
            f"  {split:8s} nDCG@10 {numbers['ndcg@10']:.4f}  skip {numbers['skip_rate']:.0%}  "
            f"vs first stage {numbers['delta_vs_first_stage']:+.4f}  "
            f"vs always {numbers['delta_vs_always']:+.4f}"
        )
    print(f"wrote {args.out}")
    return 0


def describe(choice: Choice) -> Mapping[str, Any]:
    return {
        "selective": choice.option.selective,
        "blend": choice.option.blend,
        "label": choice.option.label,
        **choice.scores,
    }
