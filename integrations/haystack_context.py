"""Haystack: context assembly as a component, to run after ``CrossrankRanker``.

Options are :class:`crossrank.context.ContextConfig`'s. No ``from __future__ import
annotations``: Haystack reads ``run``'s annotations to build the component's sockets.
"""

from typing import Any

from crossrank.context import ContextConfig, assemble
from crossrank.errors import missing_dependency

try:
    from haystack import Document, component, default_from_dict, default_to_dict
except ImportError as exc:  # pragma: no cover - exercised only without the extra installed
    raise missing_dependency("haystack-ai", "haystack") from exc


@component
class CrossrankContextBuilder:
    """Keeps the best documents that fit ``token_budget``, repeats dropped, prompt-ordered.

    Documents are read best first (a ranker's output) and returned as they came in.

    Example:
        >>> builder = CrossrankContextBuilder(token_budget=4)
        >>> docs = [Document(content=t) for t in ("a b c", "a b c", "d")]
        >>> [d.content for d in builder.run(documents=docs)["documents"]]
        ['a b c', 'd']
    """

    __module__ = "haystack_integrations.components.rankers.crossrank"

    def __init__(self, **options: Any) -> None:
        self.config = ContextConfig(**options)

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, **self.config.to_dict())  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CrossrankContextBuilder":
        return default_from_dict(cls, data)  # type: ignore[no-any-return]

    @component.output_types(documents=list[Document])
    def run(self, documents: list[Document]) -> dict[str, list[Document]]:
        """The documents that reach the prompt, in prompt order."""
        plan = assemble([document.content or "" for document in documents], config=self.config)
        return {"documents": [documents[index] for index in plan.chosen]}


__all__ = ["CrossrankContextBuilder"]
