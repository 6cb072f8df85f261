"""The ``crossrank`` console script: one thin dispatcher over sub-command modules.

Each sub-command lives in its own module exposing ``configure(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so ``crossrank
demo`` never pays for evaluation or training imports.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("crossrank.demo", "rerank a bundled knowledge base offline and show before/after"),
    "eval": ("crossrank.eval.command", "evaluate first stage vs reranked runs on a BEIR folder"),
    "tune-selective": (
        "crossrank.eval.tune",
        "choose a selective-reranking / blending configuration from labelled data",
    ),
    "finetune": ("crossrank.finetune", "fine-tune a cross-encoder on BEIR relevance judgments"),
    "optimize": (
        "crossrank.backends.local.optimize",
        "build a local model's ONNX / int8 files and precision='auto''s choice ahead of time",
    ),
    "serve": (
        "crossrank.serve.command",
        "serve the reranker over HTTP (Cohere v2 and TEI formats), optionally on Ray Serve",
    ),
    "batch": (
        "crossrank.serve.batch_command",
        "rerank a JSONL / Parquet file or a BEIR folder into an output file, locally or on Ray",
    ),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crossrank", description="Second-stage reranking.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    requested = next((arg for arg in argv if not arg.startswith("-")), None)
    for command, (module_name, help_text) in COMMANDS.items():
        subparser = subparsers.add_parser(command, help=help_text, description=help_text)
        if command == requested:
            importlib.import_module(module_name).configure(subparser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(arguments)
    args = parser.parse_args(arguments)
    if args.command is None:
        parser.print_help()
        return 2
    module_name, _ = COMMANDS[args.command]
    return int(importlib.import_module(module_name).run(args))


if __name__ == "__main__":
    raise SystemExit(main())
