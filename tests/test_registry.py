"""The registry loads each model once, even when many threads ask at the same moment."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from crossrank.registry import ModelRegistry


def test_loads_once_under_contention() -> None:
    registry = ModelRegistry()
    calls: list[int] = []
    barrier = threading.Barrier(8)

    def loader() -> object:
        calls.append(1)
        time.sleep(0.05)
        return object()

    def ask() -> object:
        barrier.wait()
        return registry.get_or_load("model", loader)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: ask(), range(8)))
    assert len(calls) == 1
    assert all(result is results[0] for result in results)


def test_failed_load_is_retried() -> None:
    registry = ModelRegistry()
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("disk hiccup")
        return "loaded"

    with pytest.raises(OSError):
        registry.get_or_load("k", flaky)
    assert registry.get_or_load("k", flaky) == "loaded"
    assert "k" in registry and len(registry) == 1


def test_evict_and_clear() -> None:
    registry = ModelRegistry()
    registry.get_or_load("a", lambda: 1)
    registry.evict("a")
    assert "a" not in registry
    registry.get_or_load("b", lambda: 2)
    registry.clear()
    assert len(registry) == 0


def test_a_registry_is_shared_not_copied_by_pickle_and_deepcopy() -> None:
    import copy
    import pickle

    from crossrank.registry import default_registry, registry_named

    registry = ModelRegistry()
    registry.get_or_load("m", lambda: object())
    assert pickle.loads(pickle.dumps(registry)) is registry
    assert copy.deepcopy(registry) is registry
    assert pickle.loads(pickle.dumps(default_registry)) is default_registry
    # A name this process has never seen (as in another process) gets a fresh, empty one.
    fresh = registry_named("from-another-process")
    assert len(fresh) == 0 and registry_named("from-another-process") is fresh
