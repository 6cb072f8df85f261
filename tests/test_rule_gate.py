"""``crossrank optimize --judged``: auto's choice must also meet the fidelity rule on judged data.

A tiny model and a tiny BEIR folder, judged for real (BM25, every variant scoring); where the
test is about the decision, the rule's threshold is made unmeetable so every variant fails it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from crossrank.backends.local import auto
from crossrank.backends.local.rule_gate import choose_within_rule
from crossrank.cli import main
from crossrank.eval import fidelity_rule
from crossrank.eval.fidelity_check import judge_scorers, rerank_ndcg
from tests.eval.test_command import write_beir
from tests.test_optimize import LENIENT, SAMPLE, auto_backend, stand_in_clock

pytest.importorskip("onnxruntime")
pytest.importorskip("bm25s")


@pytest.fixture
def model(tiny_cross_encoder_path: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"  # a path of its own: choices are remembered per model files
    shutil.copytree(tiny_cross_encoder_path, copy)
    return copy


def test_rerank_ndcg_scores_every_judged_query_for_every_scorer(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "tiny")

    def by_overlap(query: str, texts: list[str]) -> list[float]:
        words = set(query.split())
        return [float(len(words & set(text.split()))) for text in texts]

    table = rerank_ndcg([folder], {"overlap": by_overlap, "reversed": lambda q, t: [
        -s for s in by_overlap(q, t)
    ]})  # fmt: skip
    rows = table["tiny"]
    assert set(rows) == {"bm25", "overlap", "reversed"}
    assert set(rows["overlap"]) == {"cats", "dogs", "fish", "birds", "trees"}, "judged only"
    same = judge_scorers([folder], reference=by_overlap, variant=by_overlap)
    assert same.passed and same.mean_abs_delta == 0.0


def test_a_chosen_variant_is_judged_and_the_verdict_is_remembered(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in_clock(monkeypatch, {"onnx-int8": 300.0, "onnx-fp32": 200.0})
    folder = write_beir(tmp_path / "tiny")
    chooser = auto_backend(model, tmp_path / "cache", fidelity_gate=LENIENT)
    assert chooser.selection is not None and chooser.selection.chosen == "onnx-int8"
    selection = choose_within_rule(chooser, [folder])
    assert selection.rule_report is not None and "onnx-int8:" in selection.rule_report
    judged = selection.rule_report.split("\n")
    verdicts = [line for line in judged if line.startswith("mean |delta|")]
    # Whatever the tiny model's int8 error does to nDCG, the record follows the verdict.
    if verdicts[0].endswith("passes"):
        assert selection.chosen == "onnx-int8"
    else:
        assert "failed the fidelity rule" in selection.reason
    server = auto_backend(model, tmp_path / "cache", fidelity_gate=LENIENT)
    assert server.selection is not None and server.selection.remembered_from is not None
    assert server.selection.chosen == selection.chosen
    assert server.selection.rule_report == selection.rule_report
    assert "the fidelity rule on judged collections" in server.selection.describe()


def test_variants_that_fail_the_rule_are_struck_until_fp32_remains(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in_clock(monkeypatch, {"onnx-int8": 300.0, "onnx-fp32": 200.0})
    monkeypatch.setattr(fidelity_rule, "MAX_MEAN_ABS_DELTA", -1.0)  # nothing can meet it
    measured: list[list[str]] = []
    original = auto.measure_and_choose

    def recording(backend: Any, sample: Any, candidates: Any) -> Any:
        measured.append([candidate.label for candidate in candidates])
        return original(backend, sample, candidates)

    monkeypatch.setattr(auto, "measure_and_choose", recording)
    folder = write_beir(tmp_path / "tiny")
    chooser = auto_backend(model, tmp_path / "cache", fidelity_gate=LENIENT)
    selection = choose_within_rule(chooser, [folder])
    assert selection.chosen == "torch-fp32"
    assert "failed the fidelity rule on judged data: onnx-int8, onnx-fp32" in selection.reason
    assert measured[1:] == [["onnx-fp32", "torch-fp32"], ["torch-fp32"]]
    assert selection.rule_report is not None
    assert selection.rule_report.count("significant at p < 0.05: fails") == 2


def test_optimize_judged_prints_the_rule_and_records_it(
    model: Path, tmp_path: Path, capsys: Any
) -> None:
    import json

    folder = write_beir(tmp_path / "tiny")
    sample = tmp_path / "sample.json"
    sample.write_text(json.dumps(SAMPLE), encoding="utf-8")
    output = tmp_path / "optimized"
    arguments = ["optimize", str(model), "--output", str(output), "--fidelity-sample",
                 str(sample), "--judged", str(folder), "--no-compile"]  # fmt: skip
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert "the fidelity rule on judged collections" in printed
    (record,) = (output / "auto-precision").glob("*.json")
    assert json.loads(record.read_text())["rule_report"]


def test_fp32_scores_each_candidate_list_once_however_many_variants_are_judged() -> None:
    from crossrank.backends.local.rule_gate import _remembering

    calls: list[str] = []

    def score(query: str, texts: list[str]) -> list[float]:
        calls.append(query)
        return [float(len(text)) for text in texts]

    remembered = _remembering(score)
    assert remembered("q", ["a", "bb"]) == [1.0, 2.0]
    assert remembered("q", ["a", "bb"]) == [1.0, 2.0]
    assert remembered("q", ["bb", "a"]) == [2.0, 1.0], "another order is another list"
    assert calls == ["q", "q"]
