"""Small torch helpers shared by the local backends (device and dtype resolution)."""

from __future__ import annotations

from typing import Any

from crossrank.errors import ConfigurationError, missing_dependency


def import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise missing_dependency("torch", "local") from exc
    return torch


def resolve_device(device: str) -> str:
    """``"auto"`` picks cuda, then mps, then cpu; anything else is passed through to torch."""
    torch = import_torch()
    if device != "auto":
        try:
            torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigurationError(f"unknown device {device!r}: {exc}") from exc
        return device
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


DTYPES = ("float32", "bfloat16", "float16")


def resolve_dtype(dtype: str | None) -> Any:
    torch = import_torch()
    if dtype is None or dtype == "float32":
        return torch.float32
    if dtype == "bfloat16":
        return torch.bfloat16
    if dtype == "float16":
        return torch.float16
    raise ConfigurationError(f"unknown dtype {dtype!r}; expected one of {DTYPES}")
