"""Fine-tuning cross-encoders on relevance judgments (the ``crossrank finetune`` command).

Importing this package stays cheap: torch, transformers and sentence-transformers load only
when a model is trained or scored.
"""

from crossrank.finetune.command import configure, run

__all__ = ["configure", "run"]
