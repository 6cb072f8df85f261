"""Jina rerank backend: the :data:`~crossrank.backends.providers.JINA` spec over httpx.

Kept as its own module so ``crossrank.backends.jina.JinaBackend`` keeps working; the wire
format lives in :mod:`crossrank.backends.providers` with every other provider's.
"""

from __future__ import annotations

from crossrank.backends.providers import JINA, JinaBackend

DEFAULT_JINA_MODEL = JINA.default_model
DEFAULT_JINA_BASE_URL = JINA.base_url
JINA_MAX_DOCUMENTS_PER_REQUEST = JINA.max_documents_per_request
JINA_KEY_ENV = JINA.key_env

__all__ = ["DEFAULT_JINA_BASE_URL", "DEFAULT_JINA_MODEL", "JinaBackend"]
