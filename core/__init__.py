"""crossrank: second-stage reranking for the RAG frameworks people already use.

What a user imports lives here; everything else is reachable from its submodule
(``crossrank.selective``, ``crossrank.blend``, ``crossrank.calibration``...). Importing
crossrank pulls in no framework and no torch: backends import their dependencies when built.
"""

from crossrank.backends.base import Backend, BaseBackend, Ranking
from crossrank.config import RerankerConfig
from crossrank.engine import Reranker
from crossrank.errors import BackendError, ConfigurationError, CrossrankError, InvalidInputError
from crossrank.secrets import Secret
from crossrank.types import Candidate, RankedCandidate, RerankReport, RerankResult

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendError",
    "BaseBackend",
    "Candidate",
    "ConfigurationError",
    "CrossrankError",
    "InvalidInputError",
    "RankedCandidate",
    "Ranking",
    "RerankReport",
    "RerankResult",
    "Reranker",
    "RerankerConfig",
    "Secret",
]

# Names that were once exported here; they still resolve, from the module that owns them.
_MOVED = {
    "BACKENDS": "crossrank.backends",
    "create_backend": "crossrank.backends",
    "Blend": "crossrank.blend",
    "ReciprocalRankBlend": "crossrank.blend",
    "WeightedBlend": "crossrank.blend",
    "parse_blend": "crossrank.blend",
    "IsotonicCalibrator": "crossrank.calibration",
    "PlattCalibrator": "crossrank.calibration",
    "load_calibrator": "crossrank.calibration",
    "BackendResponseError": "crossrank.errors",
    "BackendUnavailableError": "crossrank.errors",
    "MissingDependencyError": "crossrank.errors",
    "ModelLoadError": "crossrank.errors",
    "reciprocal_rank_fusion": "crossrank.fusion",
    "weighted_score_fusion": "crossrank.fusion",
    "MinMax": "crossrank.normalize",
    "Normalizer": "crossrank.normalize",
    "Sigmoid": "crossrank.normalize",
    "Softmax": "crossrank.normalize",
    "ModelRegistry": "crossrank.registry",
    "default_registry": "crossrank.registry",
    "AgreementPolicy": "crossrank.selective",
    "AlwaysRerank": "crossrank.selective",
    "CombinedPolicy": "crossrank.selective",
    "EntropyPolicy": "crossrank.selective",
    "MarginPolicy": "crossrank.selective",
    "NeverRerank": "crossrank.selective",
    "SelectivePolicy": "crossrank.selective",
    "parse_policy": "crossrank.selective",
    "DuplicateCandidate": "crossrank.types",
    "SelectiveDecision": "crossrank.types",
}


def __getattr__(name: str) -> object:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module 'crossrank' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
