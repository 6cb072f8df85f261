"""What a torch-free process needs beside an ONNX artifact, and reading it back with json alone.

``crossrank optimize`` leaves ``model.onnx`` and ``manifest.json`` in each artifact folder.
Scoring without transformers also needs the tokenizer as ``tokenizer.json`` and the few
settings transformers would otherwise work out from the model folder: how many tokens a pair
may have, the padding id, which logit means "relevant". :func:`write_lite_files` writes them
into the folder once, at build time, where transformers is installed anyway;
:func:`read_lite_files` reads them in the serving process with nothing but ``json``.

An artifact folder without them still loads when its manifest names a local model folder
that holds ``tokenizer.json`` (the settings then come from that folder's json files, read
the way transformers reads them); otherwise the error names the missing file and how to
write it.

Reading imports no torch, no transformers and nothing from :mod:`crossrank.backends.local`,
so a lite process starts in a fraction of a second; writing imports them on demand.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from crossrank.errors import ConfigurationError

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
SETTINGS_FILE = "crossrank-lite.json"
#: Bump when the settings file changes meaning; older files are then derived again.
SETTINGS_FORMAT = 1
#: transformers' "no limit" sentinel is a huge number; such a tokenizer reads 512 tokens.
_FALLBACK_LIMIT = 512
_LIMIT_SENTINEL = 100_000


@dataclass(frozen=True)
class LiteSettings:
    """Everything about the model that the tokenizer file and the ONNX graph do not say."""

    #: Tokens per (query, passage) pair, special tokens included; longer pairs are truncated
    #: longest-first, as the torch path does.
    max_length: int
    pad_id: int
    #: Output labels of the model's head; 1 for the usual relevance cross-encoder.
    num_labels: int
    #: Which logit means "relevant" when there are several (``None``: there must be one).
    label_index: int | None
    #: The model the artifact was built from (for reports), as the manifest names it.
    source_model: str | None


@dataclass(frozen=True)
class LiteFiles:
    """The files a lite backend loads from one artifact folder, resolved and checked."""

    directory: Path
    model_file: Path
    tokenizer_file: Path
    settings: LiteSettings


def artifact_folder(path: str | Path) -> Path:
    """The artifact folder a user pointed at: the folder itself or its ``model.onnx``."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise ConfigurationError(
            f"an onnx-lite model must be the path of an artifact folder built by "
            f"`crossrank optimize`, got {path!r}"
        )
    folder = Path(path).expanduser()
    if folder.is_file() and folder.suffix == ".onnx":
        folder = folder.parent
    return folder


def read_lite_files(path: str | Path) -> LiteFiles:
    """Resolve and check an artifact folder's files; every problem names the file at fault."""
    folder = artifact_folder(path)
    if not folder.is_dir():
        raise ConfigurationError(
            f"onnx-lite artifact folder {str(folder)!r} does not exist; build one with "
            "`crossrank optimize MODEL --output DIR` (it prints each artifact's path)"
        )
    model_file = folder / MODEL_FILE
    if not model_file.is_file():
        raise ConfigurationError(
            f"onnx-lite artifact folder {str(folder)!r} has no {MODEL_FILE} "
            f"(missing file: {str(model_file)!r}); point at a folder `crossrank optimize` built"
        )
    manifest = _read_json(folder / MANIFEST_FILE, required=False)
    source_model = manifest.get("model") if isinstance(manifest.get("model"), str) else None
    tokenizer_file = folder / TOKENIZER_FILE
    settings_file = folder / SETTINGS_FILE
    if tokenizer_file.is_file() and settings_file.is_file():
        return LiteFiles(folder, model_file, tokenizer_file, _saved_settings(settings_file))
    source = _local_source(source_model)
    if source is None or not (source / TOKENIZER_FILE).is_file():
        missing = tokenizer_file if not tokenizer_file.is_file() else settings_file
        raise ConfigurationError(
            f"onnx-lite artifact folder {str(folder)!r} lacks {missing.name} "
            f"(missing file: {str(missing)!r}), and its manifest names no local model folder "
            f"holding {TOKENIZER_FILE} to read it from; write both with "
            "crossrank.backends.lite_artifact.write_lite_files(folder, model)"
        )
    if settings_file.is_file():
        settings = _saved_settings(settings_file)
    else:
        settings = derive_settings(source, source_model=source_model)
    if not tokenizer_file.is_file():
        tokenizer_file = source / TOKENIZER_FILE
    return LiteFiles(folder, model_file, tokenizer_file, settings)


def derive_settings(source: Path, *, source_model: str | None = None) -> LiteSettings:
    """Settings read from a model folder's json files, the way transformers reads them."""
    tokenizer_config = _read_json(source / "tokenizer_config.json", required=False)
    model_config = _read_json(source / "config.json", required=False)
    limit = tokenizer_config.get("model_max_length")
    max_length = limit if isinstance(limit, int) and 0 < limit <= _LIMIT_SENTINEL else None
    pad_id = _pad_id(source / TOKENIZER_FILE, tokenizer_config.get("pad_token"))
    labels = model_config.get("id2label")
    num_labels = len(labels) if isinstance(labels, dict) and labels else 1
    if isinstance(model_config.get("num_labels"), int):
        num_labels = model_config["num_labels"]
    return LiteSettings(
        max_length=max_length or _FALLBACK_LIMIT,
        pad_id=pad_id,
        num_labels=num_labels,
        label_index=None,
        source_model=source_model,
    )


def write_lite_files(
    folder: str | Path,
    model: str,
    *,
    revision: str | None = None,
    max_length: int | None = None,
    label_index: int | None = None,
    trust_remote_code: bool = False,
    local_files_only: bool = False,
) -> LiteFiles:
    """Write ``tokenizer.json`` and the settings beside ``folder``'s ``model.onnx``.

    Build time only: the tokenizer is loaded exactly as crossrank's ONNX variants load it
    (transformers' fast tokenizer), so the lite path tokenizes as they do. Files are
    published atomically, so a reader never sees half of one.
    """
    from crossrank.backends.local.loading import input_limit, load_tokenizer
    from crossrank.backends.local.options import ModelSource

    target = artifact_folder(folder)
    if not (target / MODEL_FILE).is_file():
        raise ConfigurationError(
            f"{str(target)!r} holds no {MODEL_FILE}; build the artifact first "
            "(`crossrank optimize MODEL --output DIR`)"
        )
    source = ModelSource(
        model, revision, max_length, label_index, trust_remote_code, local_files_only
    )
    tokenizer = load_tokenizer(source)
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigurationError(
            f"model {model!r} has no fast tokenizer, so it has no tokenizer.json to serve without "
            "transformers; use the cross-encoder backend"
        )
    settings = LiteSettings(
        max_length=input_limit(tokenizer, max_length),
        pad_id=int(tokenizer.pad_token_id or 0),
        num_labels=_num_labels(source),
        label_index=label_index,
        source_model=model,
    )
    _publish(target / TOKENIZER_FILE, tokenizer.backend_tokenizer.to_str())
    _publish(
        target / SETTINGS_FILE,
        json.dumps({"format": SETTINGS_FORMAT, **asdict(settings)}, indent=1),
    )
    return read_lite_files(target)


def build_lite_artifact(
    model: str,
    *,
    quantization: str | None = "dynamic",
    cache_dir: str | Path | None = None,
    revision: str | None = None,
    max_length: int | None = None,
    label_index: int | None = None,
    trust_remote_code: bool = False,
    local_files_only: bool = False,
) -> Path:
    """Build (or reuse) ``model``'s ONNX artifact as ``crossrank optimize`` does, add the lite
    files, and return the folder to give ``OnnxLiteBackend``.

    ``quantization``: ``None`` for fp32, ``"dynamic"`` for int8, ``"dynamic-mixed"``.
    """
    from crossrank.backends.local.onnx_export import ensure_artifact

    artifact = ensure_artifact(
        model,
        quantization=quantization,
        cache_dir=cache_dir,
        revision=revision,
        max_length=max_length,
        trust_remote_code=trust_remote_code,
        local_files_only=local_files_only,
    )
    write_lite_files(
        artifact.path.parent,
        model,
        revision=revision,
        max_length=max_length,
        label_index=label_index,
        trust_remote_code=trust_remote_code,
        local_files_only=local_files_only,
    )
    return artifact.path.parent


def _num_labels(source: Any) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(
        source.model,
        revision=source.revision,
        trust_remote_code=source.trust_remote_code,
        local_files_only=source.local_files_only,
    )
    return int(getattr(config, "num_labels", 1) or 1)


def _saved_settings(path: Path) -> LiteSettings:
    saved = _read_json(path, required=True)
    try:
        if saved.get("format") != SETTINGS_FORMAT:
            raise ValueError(f"format {saved.get('format')!r}, expected {SETTINGS_FORMAT}")
        settings = LiteSettings(
            max_length=int(saved["max_length"]),
            pad_id=int(saved["pad_id"]),
            num_labels=int(saved["num_labels"]),
            label_index=None if saved.get("label_index") is None else int(saved["label_index"]),
            source_model=saved.get("source_model"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"onnx-lite settings file {str(path)!r} is not usable ({exc}); write it again with "
            "crossrank.backends.lite_artifact.write_lite_files"
        ) from exc
    if settings.max_length < 2:
        raise ConfigurationError(f"max_length {settings.max_length} in {str(path)!r} is too small")
    return settings


def _local_source(source_model: str | None) -> Path | None:
    if not source_model:
        return None
    path = Path(source_model).expanduser()
    return path if path.is_dir() else None


def _pad_id(tokenizer_file: Path, pad_token: Any) -> int:
    """The id of the configured pad token in the tokenizer's vocabulary (0 when unnamed)."""
    content = pad_token.get("content") if isinstance(pad_token, dict) else pad_token
    if not isinstance(content, str):
        return 0
    tokenizer = _read_json(tokenizer_file, required=True)
    for added in tokenizer.get("added_tokens") or []:
        if isinstance(added, dict) and added.get("content") == content:
            return int(added["id"])
    vocab = (tokenizer.get("model") or {}).get("vocab")
    if isinstance(vocab, dict) and isinstance(vocab.get(content), int):
        return int(vocab[content])
    return 0


def _read_json(path: Path, *, required: bool) -> dict[str, Any]:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise ConfigurationError(f"missing file: {str(path)!r}") from None
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read {str(path)!r}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigurationError(f"{str(path)!r} does not hold a JSON object")
    return loaded


def _publish(path: Path, text: str) -> None:
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
