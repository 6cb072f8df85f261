"""RerankerConfig: one declaration of every engine option, its checks, and its saved form."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest

from crossrank import (
    Candidate,
    ConfigurationError,
    InvalidInputError,
    Reranker,
    RerankerConfig,
    Secret,
)
from tests.support.backends import OPTIONED_BACKEND, KeywordBackend

SECRET = "sk-config-secret-31337"

#: A non-default value for every engine option (a test below checks none is missing).
NON_DEFAULT = {
    "top_n": 4,
    "normalization": "sigmoid",
    "temperature": 0.5,
    "threshold": 0.1,
    "selective": "margin:0.3",
    "blend": "rrf",
    "windowing": False,
    "window_stride": 8,
    "window_aggregation": "mean",
    "deduplicate": False,
    "strict": True,
    "latency_budget_ms": 250.0,
}


def test_every_engine_option_has_a_non_default_example() -> None:
    assert set(NON_DEFAULT) == set(RerankerConfig.engine_options())
    defaults = RerankerConfig()
    assert all(getattr(defaults, name) != value for name, value in NON_DEFAULT.items())


def test_round_trip_keeps_every_option_and_names_that_look_secret() -> None:
    config = RerankerConfig.from_options(
        OPTIONED_BACKEND,
        weight=2.0,
        cache_key="k1",
        token_budget=64,
        max_tokens_per_doc=512,
        **NON_DEFAULT,
    )
    saved = json.loads(json.dumps(config.to_dict()))
    restored = RerankerConfig.from_dict(saved)
    assert restored == config
    assert restored.backend_options["token_budget"] == 64
    assert restored.backend_options["max_tokens_per_doc"] == 512
    assert restored.backend_options["cache_key"] == "k1"


def test_a_token_secret_is_never_saved_and_an_env_secret_only_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = RerankerConfig.from_options(OPTIONED_BACKEND, api_key=SECRET, top_n=2)
    assert isinstance(token.backend_options["api_key"], Secret)
    for text in (json.dumps(token.to_dict()), repr(token), str(token.backend_options)):
        assert SECRET not in text
    assert "api_key" not in token.to_dict()["backend_options"]
    with pytest.raises(TypeError, match="token secret is not picklable"):
        pickle.dumps(token)
    assert copy.deepcopy(token) == token  # a copy in this process may share the key

    monkeypatch.setenv("OPTIONED_KEY", SECRET)
    env = RerankerConfig.from_options(OPTIONED_BACKEND, api_key=Secret.from_env_var("OPTIONED_KEY"))
    saved = env.to_dict()
    assert saved["backend_options"]["api_key"] == {
        "type": "env_var",
        "env_vars": ["OPTIONED_KEY"],
        "strict": True,
    }
    assert SECRET not in json.dumps(saved) + repr(env) + repr(pickle.dumps(env))
    assert RerankerConfig.from_dict(saved).backend_options["api_key"].resolve_value() == SECRET


def test_bad_options_are_named() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown option\(s\) \['wieght'\]"):
        RerankerConfig.from_options(OPTIONED_BACKEND, wieght=2.0)
    with pytest.raises(ConfigurationError, match="cannot import backend"):
        RerankerConfig(backend="tests.support.backends:Nope")
    with pytest.raises(InvalidInputError, match="top_n"):
        RerankerConfig(top_n=0)
    with pytest.raises(ConfigurationError, match="temperature"):
        RerankerConfig(temperature=0.0)
    with pytest.raises(ConfigurationError, match="windowing must be True or False"):
        RerankerConfig(windowing="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="unknown reranker config keys"):
        RerankerConfig.from_dict({"backend": "embedding", "top_k": 3})
    with pytest.raises(ConfigurationError, match="given by name"):
        RerankerConfig(backend=KeywordBackend(), backend_options={"model": "m"})


def test_an_instance_config_runs_but_does_not_save() -> None:
    config = RerankerConfig(backend=KeywordBackend(), top_n=1)
    assert not config.serializable
    with pytest.raises(ConfigurationError, match="import path"):
        config.to_dict()
    assert Reranker(config=config).rerank("refund", ["refund policy", "office"]).texts == [
        "refund policy"
    ]


def test_reranker_takes_a_config_or_the_same_keywords() -> None:
    by_keywords = Reranker(OPTIONED_BACKEND, weight=3.0, top_n=2)
    by_config = Reranker(config=RerankerConfig.from_options(OPTIONED_BACKEND, weight=3.0, top_n=2))
    assert by_keywords.config == by_config.config
    assert Reranker.from_config(by_keywords.to_config()).config == by_keywords.config
    changed = Reranker(config=by_config.config, top_n=1)
    assert changed.config.top_n == 1 and changed.config.backend_options["weight"] == 3.0


def test_a_reranker_pickles_and_deep_copies() -> None:
    reranker = Reranker(OPTIONED_BACKEND, top_n=2)
    candidates = ["refund policy for downloads", "office hours", "refund window"]
    expected = reranker.rerank("refund downloads", candidates)
    for clone in (pickle.loads(pickle.dumps(reranker)), copy.deepcopy(reranker)):
        again = clone.rerank("refund downloads", candidates)
        assert again.texts == expected.texts and again.scores == expected.scores
    with pytest.raises(TypeError, match="token secret"):
        pickle.dumps(Reranker(OPTIONED_BACKEND, api_key=SECRET))


@pytest.mark.parametrize("score", [np.float32(0.5), np.float64(2.0), np.int64(3), 1, 0.25])
def test_numpy_and_python_numbers_are_first_stage_scores(score: object) -> None:
    result = Reranker(KeywordBackend()).rerank(
        "refund", [Candidate("refund", id="a", first_stage_score=score)]  # type: ignore[arg-type]
    )
    assert result.report.status == "reranked"


@pytest.mark.parametrize("score", [True, np.bool_(True), float("nan"), np.float32("inf"), "1"])
def test_bools_non_finite_and_text_are_not_scores(score: object) -> None:
    with pytest.raises(InvalidInputError, match="first_stage_score"):
        Reranker(KeywordBackend()).rerank(
            "refund", [Candidate("refund", first_stage_score=score)]  # type: ignore[arg-type]
        )


def test_a_saved_literal_key_is_refused_but_a_key_given_at_load_is_not() -> None:
    saved = {"backend": OPTIONED_BACKEND, "backend_options": {"api_key": SECRET}}
    with pytest.raises(ConfigurationError, match=r"literal credential \(\['api_key'\]\)") as error:
        RerankerConfig.from_dict(saved)
    assert SECRET not in str(error.value)
    loaded = RerankerConfig.from_dict({"backend": OPTIONED_BACKEND}, api_key=SECRET)
    assert loaded.backend_options["api_key"].resolve_value() == SECRET
    unsaid = {"backend": OPTIONED_BACKEND, "backend_options": {"api_key": {"type": "env_var"}}}
    unsaid["backend_options"]["api_key"]["env_vars"] = ["K"]  # type: ignore[index]
    with pytest.raises(ConfigurationError, match="must say whether it is strict"):
        RerankerConfig.from_dict(unsaid)
