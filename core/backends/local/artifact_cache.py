"""Build a cached artifact folder once, even when processes race for it.

ONNX exports, quantized copies and OpenVINO conversions take seconds to minutes, and a server
often starts several workers at once. Each build runs under a file lock, into a staging
folder beside its final place, and is published with one ``os.replace``: a reader sees the
whole folder or none of it. A folder that fails its check (a crash mid-copy, a corrupted
file) is moved aside and rebuilt rather than trusted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from crossrank.errors import missing_dependency

Artifact = TypeVar("Artifact")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_lock(path: Path) -> Any:
    """An inter-process lock file (``filelock`` comes with the ``onnx`` extra)."""
    try:
        from filelock import FileLock
    except ImportError as exc:
        raise missing_dependency("filelock", "onnx") from exc
    return FileLock(str(path), thread_local=False)


def cached_build(
    root: Path,
    key: str,
    *,
    verified: Callable[[Path], Artifact | None],
    build: Callable[[Path], None],
) -> tuple[Artifact, bool]:
    """The artifact in ``root / key``: ``verified(folder)`` when it passes, else built by
    ``build(staging)`` under a lock and published atomically. The flag says it was built now.
    """
    directory = root / key
    artifact = verified(directory)
    if artifact is not None:
        return artifact, False
    with file_lock(root / f"{key}.lock"):
        artifact = verified(directory)  # another process may have built it meanwhile
        if artifact is not None:
            return artifact, False
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
        try:
            build(staging)
            if directory.exists():  # a corrupted earlier entry: move it aside, then drop it
                stale = root / f".{key}.stale-{os.getpid()}-{threading.get_ident()}"
                os.replace(directory, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.replace(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        built = verified(directory)
        if built is None:
            raise RuntimeError(f"the artifact built in {directory} does not pass its own check")
        return built, True


__all__ = ["cached_build", "file_lock", "file_sha256"]
