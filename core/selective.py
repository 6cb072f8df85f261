"""Selective reranking: skip the expensive second stage when the first stage is already sure.

A policy reads only first-stage evidence (scores, ranks, metadata) and returns a
:class:`~crossrank.types.SelectiveDecision`; the engine records it in every result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from crossrank.types import Candidate, SelectiveDecision


@runtime_checkable
class SelectivePolicy(Protocol):
    """Decides, per query, whether the reranker should run."""

    @property
    def name(self) -> str: ...

    def decide(self, query: str, candidates: Sequence[Candidate]) -> SelectiveDecision: ...


class AlwaysRerank:
    """The default: every query is reranked."""

    name = "always"
    spec = "always"

    def decide(self, query: str, candidates: Sequence[Candidate]) -> SelectiveDecision:
        return SelectiveDecision(policy=self.name, rerank=True)


class NeverRerank:
    """First stage only: useful as a baseline and as an emergency off switch."""

    name = "never"
    spec = "never"

    def decide(self, query: str, candidates: Sequence[Candidate]) -> SelectiveDecision:
        return SelectiveDecision(policy=self.name, rerank=False)


def parse_policy(spec: str) -> SelectivePolicy:
    """Build a policy from its spec string (``"always"``, ``"never"``, ``"margin:0.3"``...).

    Policies that can be serialized expose the same string as ``spec``.
    """
    from crossrank.errors import InvalidInputError

    key = spec.strip().lower()
    if key == "always":
        return AlwaysRerank()
    if key == "never":
        return NeverRerank()
    raise InvalidInputError(f"unknown selective policy {spec!r}")
