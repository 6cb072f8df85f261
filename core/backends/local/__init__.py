"""The local cross-encoder backend, in parts with one job each.

- :mod:`.options`: the constructor's options in groups, checked once;
- :mod:`.loading`: weights and tokenizer from a hub id or a path;
- :mod:`.scoring`: tokenize once, sort by length, batch by token budget, run;
- :mod:`.variants` (which variant), :mod:`.runners` (loading one as a runner),
  :mod:`.token_int8`, :mod:`.onnx_export` / :mod:`.onnx_build` / :mod:`.onnx_runtime`;
- :mod:`.auto` (``precision="auto"``), :mod:`.fidelity` (its gate), :mod:`.remembered`
  (its choice on disk), :mod:`.cpu` (the CPU features it is keyed by);
- :mod:`.optimize`: ``crossrank optimize MODEL``, all of auto's work ahead of time;
- :mod:`.backend`: :class:`CrossEncoderBackend`, which ties them together.
"""

from crossrank.backends.local.backend import CrossEncoderBackend
from crossrank.backends.local.options import (
    DEFAULT_CROSS_ENCODER,
    DEFAULT_TOKEN_BUDGET,
    GPU_TOKEN_BUDGET,
)

__all__ = [
    "DEFAULT_CROSS_ENCODER",
    "DEFAULT_TOKEN_BUDGET",
    "GPU_TOKEN_BUDGET",
    "CrossEncoderBackend",
]
