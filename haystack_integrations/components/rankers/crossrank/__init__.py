"""Canonical Haystack import path of crossrank's ranker component.

Haystack's integrations live under the ``haystack_integrations`` namespace package, which
Haystack 3 trusts by default when loading pipelines from YAML. Serialized pipelines name
``haystack_integrations.components.rankers.crossrank.CrossrankRanker``; importing this module
registers the component. The implementation lives in :mod:`crossrank.integrations.haystack`.
"""

from crossrank.integrations.haystack import CrossrankRanker
from crossrank.integrations.haystack_context import CrossrankContextBuilder

__all__ = ["CrossrankContextBuilder", "CrossrankRanker"]
