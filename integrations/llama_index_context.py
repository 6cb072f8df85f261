"""LlamaIndex: context assembly as a node postprocessor.

Put it after :class:`~crossrank.integrations.llama_index.CrossrankPostprocessor` in
``node_postprocessors`` so the reranked nodes are trimmed to a token budget, near-duplicates
dropped and ordered for the prompt. Options are :class:`crossrank.context.ContextConfig`'s.
"""

from __future__ import annotations

from typing import Any

from crossrank.context import ContextConfig, assemble
from crossrank.errors import missing_dependency

try:
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise missing_dependency("llama-index-core", "llama-index") from exc


class CrossrankContextPostprocessor(BaseNodePostprocessor):
    """Keeps the best nodes that fit ``token_budget``, repeats dropped, prompt-ordered.

    Nodes are read best first and counted by the text the LLM will see
    (``MetadataMode.LLM``); the ``NodeWithScore`` objects returned are the caller's own.

    Example:
        >>> from llama_index.core.schema import TextNode
        >>> post = CrossrankContextPostprocessor(token_budget=4)
        >>> nodes = [NodeWithScore(node=TextNode(text=t)) for t in ("a b c", "a b c", "d")]
        >>> [n.node.get_content() for n in post.postprocess_nodes(nodes)]
        ['a b c', 'd']
    """

    context: dict[str, Any] = Field(description="ContextConfig options (serializable part).")
    _config: ContextConfig = PrivateAttr()

    def __init__(self, **options: Any) -> None:
        config = ContextConfig(**options.pop("context", {}), **options)
        fields: dict[str, Any] = {"context": config.to_dict()}
        super().__init__(**fields)
        self._config = config

    @classmethod
    def class_name(cls) -> str:
        return "CrossrankContextPostprocessor"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        texts = [scored.node.get_content(metadata_mode=MetadataMode.LLM) for scored in nodes]
        return [nodes[index] for index in assemble(texts, config=self._config).chosen]


__all__ = ["CrossrankContextPostprocessor"]
