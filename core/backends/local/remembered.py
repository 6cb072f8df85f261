"""Remember what ``precision="auto"`` chose, on disk, so the next process only loads files.

Choosing loads fp32 and every candidate, exports and quantizes the ONNX ones the first time,
times each on this CPU and scores the fidelity sample with the fast ones: seconds to minutes
at start-up, every start-up. The answer only changes when something it depends on changes,
so it is written next to the ONNX cache (``crossrank optimize`` writes it ahead of time)
under a key built from all of those things: the model's weights (path plus file sizes and
mtimes, as the ONNX cache keys them), revision, device, maximum length, logit index, the
gate's thresholds, the fidelity sample, the candidate list, the CPU's features (a choice
timed on an AVX-512 VNNI CPU says nothing about an AVX2 one) and the versions of the
libraries that compute the scores.

Only models whose identity is pinned are remembered: a local path (its files are
fingerprinted) or a hub id with an explicit ``revision``. A hub id without one may change
upstream, so it is chosen afresh in each process. A file that cannot be read or does not
match its key is ignored and rewritten; failing to write only costs the next process a new
choice, never the caller an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from crossrank.backends.local.fidelity import Agreement, FidelityGate, Selection

logger = logging.getLogger(__name__)

#: Bump when the meaning of a stored choice changes.
FORMAT_VERSION = 2
_FOLDER = "auto-precision"
_LIBRARIES = ("torch", "onnxruntime", "transformers", "sentence_transformers")


def _library_versions() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def choice_key(
    *,
    model: str,
    revision: str | None,
    device: str,
    settings: Mapping[str, Any],
    gate: FidelityGate,
    sample_digest: str,
    candidates: list[str],
) -> str | None:
    """Hex key for one choice's inputs, or ``None`` when the model is not pinned."""
    from crossrank.backends.local.cpu import feature_key
    from crossrank.backends.local.onnx_export import EXPORT_FORMAT_VERSION, model_fingerprint

    local = Path(model).expanduser().exists()
    if not local and revision is None:
        return None
    recipe = {
        "format": FORMAT_VERSION,
        "export_format": EXPORT_FORMAT_VERSION,
        "model": model_fingerprint(model),
        "revision": revision,
        "device": device,
        "settings": dict(settings),
        "gate": [gate.min_kendall_tau, gate.min_top_k_overlap, gate.top_k],
        "sample": sample_digest,
        "candidates": candidates,
        "cpu": feature_key() if device == "cpu" else None,
        "libraries": _library_versions(),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:24]


def _path(root: Path, key: str) -> Path:
    return root / _FOLDER / f"{key}.json"


def load_choice(root: Path, key: str) -> Selection | None:
    """The stored selection for ``key``, or ``None`` when absent, unreadable or not ours."""
    path = _path(root, key)
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("key") != key:
            return None
        gate = FidelityGate(**stored["gate"])
        agreements = []
        for row in stored["agreements"]:
            diff = row["max_abs_diff"]
            agreements.append(
                Agreement(**{**row, "max_abs_diff": float("inf") if diff is None else diff})
            )
        selection = Selection(
            chosen=str(stored["chosen"]),
            reason=str(stored["reason"]),
            agreements=agreements,
            gate=gate,
            remembered_from=str(path),
            reference_pairs_per_second=stored.get("reference_pairs_per_second"),
            rule_report=stored.get("rule_report"),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("ignoring unreadable precision='auto' record %s (%s)", path, exc)
        return None
    return selection


def save_choice(root: Path, key: str, selection: Selection) -> None:
    """Write atomically (temp file + rename), so a concurrent reader sees all or nothing."""
    folder = root / _FOLDER
    agreements = []
    for agreement in selection.agreements:
        row = asdict(agreement)
        if row["max_abs_diff"] == float("inf"):  # JSON has no infinity: unavailable -> null
            row["max_abs_diff"] = None
        agreements.append(row)
    payload = {
        "key": key,
        "chosen": selection.chosen,
        "reason": selection.reason,
        "gate": asdict(selection.gate),
        "agreements": agreements,
        "reference_pairs_per_second": selection.reference_pairs_per_second,
        "rule_report": selection.rule_report,
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{key}.", dir=folder)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(payload, out, indent=1)
        os.replace(temporary, _path(root, key))
    except OSError as exc:
        logger.warning("could not remember precision='auto' choice in %s (%s)", folder, exc)
