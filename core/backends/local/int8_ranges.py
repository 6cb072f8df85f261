"""Torch int8's smoothing statistics on disk, so a later process quantizes without a sample pass.

Fitting torch int8's smoothing factors runs the fp32 model over the whole fidelity sample
(1024 pairs by default) to record each encoder linear's input ranges: on a shared 2-core
CPU that pass took longer than the compile. The ranges depend only on the model, its
settings and the sample, so they are saved next to the ONNX artifacts (by ``crossrank
optimize`` or any first load) and read back by the next process. Only pinned models (a
local path, or a hub id with a revision) are saved, as for auto's remembered choice; an
unreadable file is ignored and a failed write only costs the next process the pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crossrank.backends.local.options import Execution, ModelSource

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_FOLDER = "int8-ranges"


def _path(source: ModelSource, execution: Execution, sample_digest: str) -> Path | None:
    from crossrank.backends.local.onnx_export import cache_root, model_fingerprint

    if not Path(source.model).expanduser().exists() and source.revision is None:
        return None
    recipe = {
        "format": FORMAT_VERSION,
        "model": model_fingerprint(source.model),
        "revision": source.revision,
        "max_length": source.max_length,
        "sample": sample_digest,
    }
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:24]
    return cache_root(execution.cache_dir) / _FOLDER / f"{key}.pt"


def cached_ranges(
    source: ModelSource,
    execution: Execution,
    sample_digest: str,
    measure: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """The saved ranges for this model and sample, else ``measure()`` (then saved)."""
    import torch

    path = _path(source, execution, sample_digest)
    if path is not None and path.is_file():
        try:
            return torch.load(path, weights_only=True)  # type: ignore[no-any-return]
        except Exception as exc:  # a torn or foreign file: measure again
            logger.warning("ignoring unreadable int8 ranges %s (%s)", path, exc)
    ranges = measure()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", dir=path.parent)
            os.close(handle)
            torch.save(ranges, temporary)
            os.replace(temporary, path)
        except OSError as exc:
            logger.warning("could not save int8 ranges in %s (%s)", path.parent, exc)
    return ranges
