"""Export a cross-encoder to ONNX once, optimize and optionally quantize it, and cache it on disk.

Exporting costs seconds to a minute, so each artifact is built once per machine and reused
by every later process. An artifact lives in its own directory under the cache root, named
by a hash of everything that changes its bytes: the model (id or resolved path, plus the
weight files' size and mtime for local paths, so a retrained model is never served stale),
revision, opset, quantization and the exporter's format version. The directory holds
``model.onnx`` and ``manifest.json`` carrying the file's SHA-256; a file that no longer
matches (a torn copy, a disk error, an edit) is detected on load and rebuilt.

Concurrency: builders take an exclusive file lock per artifact (threads and processes
alike), re-check under the lock, build into a temporary directory and publish it with one
atomic ``os.replace``, so a reader never sees half an artifact and N concurrent first uses
export once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from crossrank.backends.local.artifact_cache import cached_build, file_sha256
from crossrank.backends.local.onnx_build import export_fp32, quantize
from crossrank.errors import ModelLoadError

logger = logging.getLogger(__name__)

#: Bump when the export recipe changes, so old artifacts are not reused.
EXPORT_FORMAT_VERSION = 2
DEFAULT_OPSET = 17
_MODEL_FILE = "model.onnx"
_MANIFEST_FILE = "manifest.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")

#: Counts real exports/quantizations per artifact directory in this process (tests read it).
build_counts: dict[str, int] = {}
_count_guard = threading.Lock()


def default_cache_dir() -> Path:
    """``$CROSSRANK_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/crossrank`` (``~/.cache``)."""
    explicit = os.environ.get("CROSSRANK_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "crossrank"


def cache_root(cache_dir: str | Path | None) -> Path:
    """``cache_dir`` if given, else :func:`default_cache_dir`: where every crossrank cache lives."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


@dataclass(frozen=True)
class OnnxArtifact:
    """A verified ONNX model on disk, with the digest that identifies its bytes."""

    path: Path
    sha256: str
    key: str


def model_fingerprint(model: str) -> str:
    """Identity of the model's weights: the id for hub models, path + file stats for local."""
    path = Path(model).expanduser()
    if not path.exists():
        return model
    resolved = path.resolve()
    stats = []
    for file in sorted(resolved.rglob("*")) if resolved.is_dir() else [resolved]:
        if file.is_file() and (file.suffix in _WEIGHT_SUFFIXES or file.name == "config.json"):
            info = file.stat()
            stats.append(f"{file.relative_to(resolved)}:{info.st_size}:{info.st_mtime_ns}")
    return f"{resolved}|{';'.join(stats)}"


def artifact_key(
    model: str,
    *,
    revision: str | None,
    opset: int,
    quantization: str | None,
    max_length: int | None,
) -> str:
    """Directory name of an artifact: a readable model stem plus a content hash of the recipe."""
    recipe = json.dumps(
        {
            "model": model_fingerprint(model),
            "revision": revision,
            "opset": opset,
            "quantization": quantization,
            "max_length": max_length,
            "format": EXPORT_FORMAT_VERSION,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(model).name)[-48:]
    return f"{stem}-{quantization or 'fp32'}-{digest}"


def _verified(directory: Path, key: str) -> OnnxArtifact | None:
    """The artifact in ``directory`` if its manifest and bytes agree, else ``None``."""
    model_file = directory / _MODEL_FILE
    manifest_file = directory / _MANIFEST_FILE
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        expected = manifest["sha256"]
        actual = file_sha256(model_file)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if actual != expected:
        logger.warning("ONNX cache entry %s is corrupted (checksum mismatch); rebuilding", key)
        return None
    return OnnxArtifact(path=model_file, sha256=actual, key=key)


def ensure_artifact(
    model: str,
    *,
    quantization: str | None,
    cache_dir: str | Path | None = None,
    revision: str | None = None,
    opset: int = DEFAULT_OPSET,
    max_length: int | None = None,
    trust_remote_code: bool = False,
    local_files_only: bool = False,
) -> OnnxArtifact:
    """Return the cached artifact for the recipe, building (once, under a lock) if needed."""
    root = cache_root(cache_dir) / "onnx"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(
            f"ONNX cache folder {str(root)!r} is unusable ({type(exc).__name__}: {exc}); "
            "pass cache_dir= or set CROSSRANK_CACHE_DIR to a writable folder"
        ) from exc
    key = artifact_key(
        model, revision=revision, opset=opset, quantization=quantization, max_length=max_length
    )

    def build(staging: Path) -> None:
        target = staging / _MODEL_FILE
        if quantization is None:
            export_fp32(
                model,
                target,
                opset=opset,
                revision=revision,
                max_length=max_length,
                trust_remote_code=trust_remote_code,
                local_files_only=local_files_only,
            )
        else:
            source = ensure_artifact(
                model,
                quantization=None,
                cache_dir=cache_dir,
                revision=revision,
                opset=opset,
                max_length=max_length,
                trust_remote_code=trust_remote_code,
                local_files_only=local_files_only,
            )
            quantize(source.path, target, quantization=quantization)
        manifest = {
            "sha256": file_sha256(target),
            "model": model,
            "revision": revision,
            "opset": opset,
            "quantization": quantization,
            "format": EXPORT_FORMAT_VERSION,
        }
        (staging / _MANIFEST_FILE).write_text(json.dumps(manifest, indent=1), "utf-8")

    artifact, built = cached_build(
        root, key, verified=lambda directory: _verified(directory, key), build=build
    )
    if built:
        with _count_guard:
            build_counts[str(root / key)] = build_counts.get(str(root / key), 0) + 1
    return artifact
