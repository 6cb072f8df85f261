"""One exception hierarchy, so callers can catch everything crossrank raises with one clause.

Every message names the offending value (secrets excepted) so a user can fix the input
without reading crossrank's source.
"""

from __future__ import annotations


class CrossrankError(Exception):
    """Base class of every error raised by crossrank."""


class InvalidInputError(CrossrankError, ValueError):
    """A query, candidate or option the caller passed cannot be used as given.

    Subclasses ValueError so frameworks that expect ValueError for bad input (LlamaIndex,
    Haystack) keep working.
    """


class ConfigurationError(CrossrankError, ValueError):
    """A reranker, backend or serialized config is set up inconsistently."""


class MissingDependencyError(CrossrankError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package!r} is not installed; install it with: pip install 'crossrank[{extra}]'"
        )
        self.package = package
        self.extra = extra


class BackendError(CrossrankError):
    """A backend failed to score. The engine turns this into a flagged fallback unless strict."""


class ModelLoadError(BackendError):
    """A model could not be loaded from the given id or path."""


class BackendResponseError(BackendError):
    """A remote API answered with something that cannot be trusted (bad indices, NaN, bad JSON)."""


class BackendUnavailableError(BackendError):
    """A remote API could not be reached or kept failing after all retries."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


def missing_dependency(package: str, extra: str) -> MissingDependencyError:
    """Build the error raised when an optional import fails; kept here so wording is uniform."""
    return MissingDependencyError(package, extra)
