"""Where the ONNX export cache used to live; it is now :mod:`crossrank.backends.local.onnx_export`.

Kept for code that imports the cache helpers (``model_fingerprint``, ``ensure_artifact``)
by the old path.
"""

from crossrank.backends.local.onnx_export import (
    EXPORT_FORMAT_VERSION,
    OnnxArtifact,
    artifact_key,
    build_counts,
    cache_root,
    default_cache_dir,
    ensure_artifact,
    model_fingerprint,
)

__all__ = [
    "EXPORT_FORMAT_VERSION",
    "OnnxArtifact",
    "artifact_key",
    "build_counts",
    "cache_root",
    "default_cache_dir",
    "ensure_artifact",
    "model_fingerprint",
]
