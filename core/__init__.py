"""crossrank: second-stage reranking for the RAG frameworks people already use.

The public API lives here and nothing else does; importing crossrank pulls in no framework
and no torch (backends import their dependencies when constructed).
"""

from crossrank.backends import BACKENDS, Backend, BaseBackend, create_backend
from crossrank.blend import Blend, ReciprocalRankBlend, WeightedBlend, parse_blend
from crossrank.calibration import IsotonicCalibrator, PlattCalibrator, load_calibrator
from crossrank.engine import Reranker, is_secret_option
from crossrank.errors import (
    BackendError,
    BackendResponseError,
    BackendUnavailableError,
    ConfigurationError,
    CrossrankError,
    InvalidInputError,
    MissingDependencyError,
    ModelLoadError,
)
from crossrank.fusion import reciprocal_rank_fusion, weighted_score_fusion
from crossrank.normalize import MinMax, Normalizer, Sigmoid, Softmax
from crossrank.registry import ModelRegistry, default_registry
from crossrank.selective import (
    AgreementPolicy,
    AlwaysRerank,
    CombinedPolicy,
    EntropyPolicy,
    MarginPolicy,
    NeverRerank,
    SelectivePolicy,
    parse_policy,
)
from crossrank.types import (
    Candidate,
    DuplicateCandidate,
    RankedCandidate,
    RerankReport,
    RerankResult,
    SelectiveDecision,
)

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "AgreementPolicy",
    "AlwaysRerank",
    "Backend",
    "BackendError",
    "BackendResponseError",
    "BackendUnavailableError",
    "BaseBackend",
    "Blend",
    "Candidate",
    "CombinedPolicy",
    "ConfigurationError",
    "CrossrankError",
    "DuplicateCandidate",
    "EntropyPolicy",
    "InvalidInputError",
    "IsotonicCalibrator",
    "MarginPolicy",
    "MinMax",
    "MissingDependencyError",
    "ModelLoadError",
    "ModelRegistry",
    "NeverRerank",
    "Normalizer",
    "PlattCalibrator",
    "RankedCandidate",
    "ReciprocalRankBlend",
    "RerankReport",
    "RerankResult",
    "Reranker",
    "SelectiveDecision",
    "SelectivePolicy",
    "Sigmoid",
    "Softmax",
    "WeightedBlend",
    "create_backend",
    "default_registry",
    "is_secret_option",
    "load_calibrator",
    "parse_blend",
    "parse_policy",
    "reciprocal_rank_fusion",
    "weighted_score_fusion",
]
