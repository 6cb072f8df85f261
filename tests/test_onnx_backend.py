"""ONNX export cache: built once, reused across backends, safe under concurrency, self-healing."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from crossrank import ModelRegistry
from crossrank.backends.cross_encoder import CrossEncoderBackend
from crossrank.backends.local import onnx_export
from crossrank.backends.local.onnx_export import artifact_key, default_cache_dir, ensure_artifact

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

QUERY = "refunds for digital downloads"
PASSAGES = [
    "refunds for digital downloads are only possible before the file is opened",
    "shipping to europe takes five to seven business days",
    "paris is the capital of france",
]


def builds(cache: Path, key: str) -> int:
    """How many times this process built the artifact ``key`` under the cache root ``cache``."""
    return onnx_export.build_counts.get(str(cache / "onnx" / key), 0)


def onnx_backend(path: Path, cache: Path, registry: ModelRegistry, **options: object):  # type: ignore[no-untyped-def]
    return CrossEncoderBackend(
        str(path), runtime="onnx", cache_dir=cache, registry=registry, **options
    )


def test_export_is_cached_on_disk_and_reused(tiny_cross_encoder_path: Path, tmp_path: Path) -> None:
    first = onnx_backend(tiny_cross_encoder_path, tmp_path, ModelRegistry())
    scores = first.score(QUERY, PASSAGES)
    artifact = first.load().artifact
    assert artifact.path.is_file() and artifact.path.is_relative_to(tmp_path)
    assert (artifact.path.parent / "manifest.json").is_file()
    count = builds(tmp_path, artifact.key)
    assert count == 1
    mtime = artifact.path.stat().st_mtime_ns
    # A second backend on a fresh registry (as a new process would) reuses the file.
    second = onnx_backend(tiny_cross_encoder_path, tmp_path, ModelRegistry())
    assert np.allclose(second.score(QUERY, PASSAGES), scores, atol=1e-6)
    assert builds(tmp_path, artifact.key) == count
    assert second.load().artifact.path.stat().st_mtime_ns == mtime


def test_backends_on_one_registry_share_one_session(
    tiny_cross_encoder_path: Path, tmp_path: Path
) -> None:
    registry = ModelRegistry()
    first = onnx_backend(tiny_cross_encoder_path, tmp_path, registry)
    second = onnx_backend(tiny_cross_encoder_path, tmp_path, registry)
    assert first.load() is second.load()


def test_cache_key_separates_quantization_opset_and_revision(
    tiny_cross_encoder_path: Path,
) -> None:
    base = {"revision": None, "opset": 17, "quantization": None, "max_length": None}
    keys = {
        artifact_key(str(tiny_cross_encoder_path), **base),  # type: ignore[arg-type]
        artifact_key(str(tiny_cross_encoder_path), **{**base, "quantization": "dynamic"}),  # type: ignore[arg-type]
        artifact_key(str(tiny_cross_encoder_path), **{**base, "opset": 18}),  # type: ignore[arg-type]
        artifact_key(str(tiny_cross_encoder_path), **{**base, "revision": "abc"}),  # type: ignore[arg-type]
    }
    assert len(keys) == 4


def test_cache_dir_defaults_under_home_and_honours_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CROSSRANK_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == Path.home() / ".cache" / "crossrank"
    monkeypatch.setenv("CROSSRANK_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"


def test_concurrent_first_use_exports_once(tiny_cross_encoder_path: Path, tmp_path: Path) -> None:
    barrier = threading.Barrier(4)
    results: list[list[float]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            # Separate registries: only the on-disk lock can prevent duplicate exports.
            backend = onnx_backend(tiny_cross_encoder_path, tmp_path, ModelRegistry())
            barrier.wait()
            results.append(backend.score(QUERY, PASSAGES))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 4
    assert all(np.allclose(r, results[0], atol=1e-6) for r in results)
    key = artifact_key(
        str(tiny_cross_encoder_path), revision=None, opset=17, quantization=None, max_length=None
    )
    assert builds(tmp_path, key) == 1
    leftovers = [p.name for p in (tmp_path / "onnx").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_corrupted_cache_file_is_detected_and_rebuilt(
    tiny_cross_encoder_path: Path, tmp_path: Path
) -> None:
    artifact = ensure_artifact(str(tiny_cross_encoder_path), quantization=None, cache_dir=tmp_path)
    expected = onnx_backend(tiny_cross_encoder_path, tmp_path, ModelRegistry()).score(
        QUERY, PASSAGES
    )
    before = builds(tmp_path, artifact.key)
    data = bytearray(artifact.path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte in the middle of the weights
    artifact.path.write_bytes(bytes(data))
    rebuilt = ensure_artifact(str(tiny_cross_encoder_path), quantization=None, cache_dir=tmp_path)
    assert builds(tmp_path, artifact.key) == before + 1
    assert rebuilt.sha256 == artifact.sha256  # the export is deterministic
    fresh = onnx_backend(tiny_cross_encoder_path, tmp_path, ModelRegistry())
    assert np.allclose(fresh.score(QUERY, PASSAGES), expected, atol=1e-6)


def test_truncated_cache_file_and_missing_manifest_are_rebuilt(
    tiny_cross_encoder_path: Path, tmp_path: Path
) -> None:
    artifact = ensure_artifact(str(tiny_cross_encoder_path), quantization=None, cache_dir=tmp_path)
    artifact.path.write_bytes(artifact.path.read_bytes()[:100])
    again = ensure_artifact(str(tiny_cross_encoder_path), quantization=None, cache_dir=tmp_path)
    assert again.path.stat().st_size > 100
    (again.path.parent / "manifest.json").unlink()
    count = builds(tmp_path, again.key)
    ensure_artifact(str(tiny_cross_encoder_path), quantization=None, cache_dir=tmp_path)
    assert builds(tmp_path, again.key) == count + 1


def test_quantized_artifact_reuses_the_fp32_export(
    tiny_cross_encoder_path: Path, tmp_path: Path
) -> None:
    int8 = ensure_artifact(str(tiny_cross_encoder_path), quantization="dynamic", cache_dir=tmp_path)
    fp32_key = artifact_key(
        str(tiny_cross_encoder_path), revision=None, opset=17, quantization=None, max_length=None
    )
    assert (tmp_path / "onnx" / fp32_key / "model.onnx").is_file()
    assert int8.path.stat().st_size < (tmp_path / "onnx" / fp32_key / "model.onnx").stat().st_size
