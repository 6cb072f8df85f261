"""One loaded model per process, however many rerankers and adapters ask for it.

Models are large (hundreds of MB) and slow to load; loading is lazy, keyed by everything
that changes the loaded object, and guarded per key so that many threads asking at once
load it exactly once while different models still load in parallel.

A registry is never copied: pickling one writes only its name, and unpickling (or
``copy.deepcopy``) finds the registry of that name in this process, or makes an empty one
there. So a copied or unpickled backend shares the loaded model with its original in the
same process, and loads it lazily in another.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")

_by_name: weakref.WeakValueDictionary[str, ModelRegistry] = weakref.WeakValueDictionary()
_names_guard = threading.RLock()


def registry_named(name: str) -> ModelRegistry:
    """The registry called ``name`` in this process, made (empty) if there is none."""
    with _names_guard:
        registry = _by_name.get(name)
        if registry is None:
            registry = ModelRegistry(name=name)
        return registry


class ModelRegistry:
    """A thread-safe map from a load key to a loaded object."""

    def __init__(self, *, name: str | None = None) -> None:
        """``name`` identifies the registry across pickling (default: unique in this process)."""
        with _names_guard:
            self.name = name or f"registry-{uuid.uuid4().hex}"
            _by_name[self.name] = self
        self._objects: dict[Hashable, Any] = {}
        self._key_locks: dict[Hashable, threading.Lock] = {}
        self._guard = threading.Lock()
        self.load_count = 0

    def get_or_load(self, key: Hashable, loader: Callable[[], T]) -> T:
        """Return the object for ``key``, calling ``loader`` only if nobody loaded it yet.

        A loader that raises leaves nothing behind, so the next call tries again.
        """
        existing = self._objects.get(key)
        if existing is not None:
            return existing  # type: ignore[no-any-return]
        with self._guard:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            existing = self._objects.get(key)
            if existing is not None:
                return existing  # type: ignore[no-any-return]
            loaded = loader()
            self._objects[key] = loaded
            self.load_count += 1
            return loaded

    def __reduce__(self) -> tuple[Any, ...]:
        return (registry_named, (self.name,))

    def __contains__(self, key: Hashable) -> bool:
        return key in self._objects

    def __len__(self) -> int:
        return len(self._objects)

    def __bool__(self) -> bool:
        # An empty registry is still a registry: `registry or default_registry` must not
        # silently swap a caller's fresh registry for the global one.
        return True

    def evict(self, key: Hashable) -> None:
        """Forget one object (the next ``get_or_load`` reloads it)."""
        with self._guard:
            self._objects.pop(key, None)

    def clear(self) -> None:
        with self._guard:
            self._objects.clear()
            self._key_locks.clear()


#: The process-wide registry shared by every backend and adapter.
default_registry = ModelRegistry(name="default")
