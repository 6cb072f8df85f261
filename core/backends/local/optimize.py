"""``crossrank optimize MODEL``: all of ``precision="auto"``'s work done ahead of time.

A server should not export, quantize, compile and time variants while its first request
waits (18 minutes on a shared AVX2 VM before auto learned to measure). This command does it
once per machine class: it builds the ONNX fp32, int8 and mixed int8 artifacts (with the
tokenizer files the torch-free ``onnx-lite`` backend reads), lets auto measure and choose
on this CPU (converting and compiling the OpenVINO variants too when ``openvino`` is
installed), and records the choice under the CPU's features in the output folder. A
process that then creates ``CrossEncoderBackend(MODEL, precision="auto",
cache_dir=OUTPUT)`` on a CPU with the same features only loads files; on another class of
CPU the record does not apply and it chooses afresh (run ``optimize`` there too).

Choices are remembered only for pinned models: a local path (fingerprinted by its files) or
a hub id with ``--revision``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossrank.backends.local.fidelity import Selection

QUANTIZATIONS = (None, "dynamic", "dynamic-mixed")


@dataclass(frozen=True)
class OptimizeReport:
    """What ``optimize`` built and chose, and what a serving process's start then costs."""

    model: str
    cache_dir: Path
    artifacts: list[Path]
    selection: Selection
    #: The record a serving process reads (``None``: the model is not pinned, see above).
    record: str | None
    #: Seconds a fresh registry in this process took to load the chosen variant from files.
    warm_start_s: float
    #: Why the onnx-lite files could not be written (``None``: every artifact has them).
    lite_error: str | None = None


def optimize(
    model: str,
    *,
    cache_dir: str | Path | None = None,
    fidelity_sample: Sequence[tuple[str, Sequence[str]]] | None = None,
    judged: Sequence[str | Path] = (),
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> OptimizeReport:
    """Build the artifacts and the choice for ``model`` in ``cache_dir``; see the module doc.

    ``judged`` (BEIR folders with relevance judgments) makes the choice meet the fidelity
    rule on them too (:mod:`crossrank.backends.local.rule_gate`). ``options`` are the
    backend's (``revision``, ``max_length``, ``compile`` ...).
    """
    from crossrank.backends.lite_artifact import write_lite_files
    from crossrank.backends.local.backend import CrossEncoderBackend
    from crossrank.backends.local.onnx_export import cache_root, ensure_artifact
    from crossrank.backends.local.openvino_runtime import openvino_available
    from crossrank.errors import ConfigurationError
    from crossrank.registry import ModelRegistry

    root = cache_root(cache_dir)
    common = {"device": "cpu", "cache_dir": root, "fidelity_sample": fidelity_sample, **options}
    loading = {
        name: options[name]
        for name in ("revision", "max_length", "trust_remote_code", "local_files_only")
        if name in options
    }
    artifacts = []
    lite_error = None
    for quantization in QUANTIZATIONS:
        artifact = ensure_artifact(
            model, quantization=quantization, cache_dir=root, opset=options.get("opset", 17),
            **loading,
        )  # fmt: skip
        artifacts.append(artifact.path)
        try:  # tokenizer.json and settings, for the torch-free onnx-lite backend
            write_lite_files(
                artifact.path.parent, model, label_index=options.get("label_index"), **loading
            )
        except ConfigurationError as exc:
            lite_error = str(exc)
    chooser = CrossEncoderBackend(model, precision="auto", registry=ModelRegistry(), **common)
    chooser.load()
    assert chooser.selection is not None
    selection = chooser.selection
    if judged:
        from crossrank.backends.local.rule_gate import choose_within_rule

        selection = choose_within_rule(chooser, judged, progress=progress)
    if openvino_available():  # auto converted and compiled them above, as candidates
        fp32_key = artifacts[0].parent.name
        artifacts.extend(sorted((root / "openvino").glob(f"{fp32_key}-ov-*/model.xml")))
    started = time.perf_counter()
    server = CrossEncoderBackend(model, precision="auto", registry=ModelRegistry(), **common)
    server.load()
    warm_start_s = time.perf_counter() - started
    record = server.selection.remembered_from if server.selection is not None else None
    return OptimizeReport(
        model, root, artifacts, selection, record, warm_start_s, lite_error
    )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="hub id or local path of a cross-encoder")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="cache folder to fill (default: $CROSSRANK_CACHE_DIR or ~/.cache/crossrank); "
        "serve with cache_dir= pointing here",
    )
    parser.add_argument("--revision", default=None, help="pin a hub model (needed to remember)")
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--label-index", type=int, default=None)
    parser.add_argument(
        "--fidelity-sample",
        type=Path,
        default=None,
        help='JSON file [["query", ["text", ...]], ...] whose rankings a variant must keep '
        "(default: the bundled demo)",
    )
    parser.add_argument(
        "--judged",
        nargs="+",
        type=Path,
        default=(),
        metavar="BEIR_DIR",
        help="collections with relevance judgments (BEIR layout): the chosen variant must also "
        "meet the fidelity rule on them (needs crossrank[eval])",
    )
    parser.add_argument("--no-compile", action="store_true", help="never compile torch int8")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--local-files-only", action="store_true")


def run(args: argparse.Namespace) -> int:
    from crossrank.backends.local.cpu import feature_key
    from crossrank.errors import CrossrankError

    sample = None
    if args.fidelity_sample is not None:
        sample = json.loads(Path(args.fidelity_sample).read_text(encoding="utf-8"))
    try:
        report = optimize(
            args.model,
            cache_dir=args.output,
            fidelity_sample=sample,
            judged=args.judged,
            progress=lambda line: print(line, flush=True),
            revision=args.revision,
            max_length=args.max_length,
            label_index=args.label_index,
            compile=not args.no_compile,
            trust_remote_code=args.trust_remote_code,
            local_files_only=args.local_files_only,
        )
    except CrossrankError as exc:
        print(f"crossrank optimize: {exc}")
        return 1
    print(f"CPU: {feature_key()}")
    for path in report.artifacts:
        print(f"artifact: {path}")
    if report.lite_error is not None:
        print(f"no onnx-lite files: {report.lite_error}")
    print(report.selection.describe())
    if report.record is None:
        print(
            "not remembered: a hub id needs --revision (or use a local path), so a serving "
            "process would measure again"
        )
    else:
        print(f"choice recorded: {report.record}")
    print(f"start from these files (this process, fresh registry): {report.warm_start_s:.2f} s")
    print(
        f"serve with: CrossEncoderBackend({args.model!r}, precision='auto', "
        f"cache_dir={str(report.cache_dir)!r})"
    )
    return 0
