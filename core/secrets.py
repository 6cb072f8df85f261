"""Credentials known by their type, not guessed from an option's name.

A backend lists the options that hold credentials in ``secret_options``; whatever is given
for one of them is wrapped in a :class:`Secret` before anything else sees it. Serializers
then ask the *value*, never the option's name: an environment-variable secret writes only the
variable names, a token secret is left out of every saved form, and every other option is kept,
whatever it is called (``max_tokens_per_doc``, ``token_budget``, ``cache_key``...).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from crossrank.errors import ConfigurationError

_SECRET_TYPE_TAG = "crossrank.secret"


class Secret:
    """An API key (or other credential) that never shows itself.

    Build one from environment variables (``Secret.from_env_var("CO_API_KEY")``: the value is
    read when used, and only the variable names are ever serialized) or from a literal token
    (``Secret.from_token("...")``: usable in this process, never serialized, never pickled).
    ``repr``, ``str`` and ``format`` print only what kind of secret it is.

    Example:
        >>> key = Secret.from_env_var("MY_API_KEY", strict=False)
        >>> key.to_dict()
        {'type': 'env_var', 'env_vars': ['MY_API_KEY'], 'strict': False}
    """

    __slots__ = ("_env_vars", "_strict", "_token")

    def __init__(
        self, *, token: str | None = None, env_vars: Sequence[str] = (), strict: bool = True
    ) -> None:
        if (token is None) == (not env_vars):
            raise ConfigurationError("a Secret holds either a token or environment variable names")
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise ConfigurationError("a secret token must be a non-empty string")
        for name in env_vars:
            if not isinstance(name, str) or not name.strip():
                raise ConfigurationError(f"environment variable names must be text, got {name!r}")
        self._token = token.strip() if token is not None else None
        self._env_vars = tuple(env_vars)
        self._strict = bool(strict)

    @classmethod
    def from_token(cls, token: str) -> Secret:
        """A literal credential: usable here, left out of every serialized form."""
        return cls(token=token)

    @classmethod
    def from_env_var(cls, *names: str, strict: bool = True) -> Secret:
        """The first of ``names`` that is set when the secret is used; ``strict`` requires one."""
        if len(names) == 1 and not isinstance(names[0], str):
            names = tuple(names[0])  # type: ignore[unreachable]
        return cls(env_vars=names, strict=strict)

    @property
    def is_token(self) -> bool:
        return self._token is not None

    @property
    def env_vars(self) -> tuple[str, ...]:
        return self._env_vars

    def resolve_value(self) -> str | None:
        """The credential itself; call it only where it goes onto the wire."""
        if self._token is not None:
            return self._token
        for name in self._env_vars:
            value = os.environ.get(name, "").strip()
            if value:
                return value
        if self._strict:
            raise ConfigurationError(
                f"no credential found: set one of the environment variables {list(self._env_vars)}"
            )
        return None

    def to_dict(self) -> dict[str, Any]:
        """The serialized form of an environment-variable secret; a token refuses."""
        if self._token is not None:
            raise ConfigurationError(
                "a token secret cannot be serialized; use Secret.from_env_var(...) to save "
                "where the key comes from"
            )
        return {"type": "env_var", "env_vars": list(self._env_vars), "strict": self._strict}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Secret:
        """Rebuild an environment-variable secret from :meth:`to_dict` (or Haystack's form)."""
        if not isinstance(data, Mapping) or data.get("type") != "env_var":
            raise ConfigurationError(
                f"only environment-variable secrets can be loaded, got {_describe(data)}"
            )
        names = data.get("env_vars")
        if isinstance(names, str) or not isinstance(names, Iterable):
            raise ConfigurationError(f"secret env_vars must be a list of names, got {names!r}")
        strict = data.get("strict")
        if not isinstance(strict, bool):
            raise ConfigurationError(
                f"a saved env-var secret must say whether it is strict (true/false), got {strict!r}"
            )
        return cls(env_vars=tuple(names), strict=strict)

    @staticmethod
    def is_serialized(value: Any) -> bool:
        """Whether ``value`` looks like :meth:`to_dict` output (Haystack's shape included)."""
        return isinstance(value, Mapping) and value.get("type") in ("env_var", "token") and (
            "env_vars" in value or value.get("type") == "token"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return (self._token, self._env_vars, self._strict) == (
            other._token,
            other._env_vars,
            other._strict,
        )

    def __hash__(self) -> int:
        return hash((self._token, self._env_vars, self._strict))

    def __repr__(self) -> str:
        if self._token is not None:
            return "Secret(token='***')"
        return f"Secret(env_vars={list(self._env_vars)!r})"

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        return repr(self)

    def __copy__(self) -> Secret:
        return self  # immutable: a copy inside this process may share it

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self

    def __reduce__(self) -> Any:
        if self._token is not None:
            raise TypeError(
                "a token secret is not picklable; use Secret.from_env_var(...) so the key is "
                "read from the environment where the object is loaded"
            )
        return (_rebuild_env_secret, (self._env_vars, self._strict))


def _rebuild_env_secret(env_vars: tuple[str, ...], strict: bool) -> Secret:
    return Secret(env_vars=env_vars, strict=strict)


def _describe(data: Any) -> str:
    if isinstance(data, Mapping):
        return f"a mapping of type {data.get('type')!r}"
    return type(data).__name__


def as_secret(value: Any, *, option: str) -> Secret | None:
    """What a caller gave for a secret option, as a :class:`Secret` (``None`` stays ``None``).

    A string becomes a token secret; a serialized env-var secret (ours or Haystack's) is
    rebuilt; a Haystack ``Secret`` is read through its public ``resolve_value``/``to_dict``.
    """
    if value is None or isinstance(value, Secret):
        return value
    if isinstance(value, str):
        return Secret.from_token(value)
    if isinstance(value, Mapping):
        return Secret.from_dict(value)
    to_dict = getattr(value, "to_dict", None)
    resolve = getattr(value, "resolve_value", None)
    if callable(resolve) and callable(to_dict):  # a haystack.utils.Secret, without importing it
        try:
            return Secret.from_dict(to_dict())
        except (ValueError, ConfigurationError):
            token = resolve()
            if isinstance(token, str) and token:
                return Secret.from_token(token)
    raise ConfigurationError(
        f"{option} must be a string, a crossrank.Secret or a serialized env-var secret, "
        f"got {type(value).__name__}"
    )


__all__ = ["Secret", "as_secret"]
