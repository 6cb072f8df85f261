"""Where the local cross-encoder backend used to live; it is now :mod:`crossrank.backends.local`.

Kept so ``crossrank.backends.cross_encoder:CrossEncoderBackend`` (and saved configs or
imports naming it) keep working.
"""

from crossrank.backends.local import (
    DEFAULT_CROSS_ENCODER,
    DEFAULT_TOKEN_BUDGET,
    GPU_TOKEN_BUDGET,
    CrossEncoderBackend,
)

__all__ = [
    "DEFAULT_CROSS_ENCODER",
    "DEFAULT_TOKEN_BUDGET",
    "GPU_TOKEN_BUDGET",
    "CrossEncoderBackend",
]
