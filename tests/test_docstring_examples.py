"""The usage example in each public class's docstring runs, so it cannot rot."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "crossrank.config",
    "crossrank.secrets",
    "crossrank.context",
    "crossrank.integrations.langchain",
    "crossrank.integrations.llama_index",
    "crossrank.integrations.haystack",
    "crossrank.integrations.langchain_context",
    "crossrank.integrations.llama_index_context",
    "crossrank.integrations.haystack_context",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    # Haystack components name their canonical module, so find examples by object, not module.
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for exported in module.__all__:
        for test in finder.find(getattr(module, exported), exported, module=False,
                                globs=dict(vars(module))):
            runner.run(test)
    outcome = runner.summarize(verbose=False)
    assert outcome.attempted > 0, f"{name} has no usage example"
    assert outcome.failed == 0
