"""Safe loading: no remote code unless asked, safetensors first, and API keys never shown.

The key test drives the Cohere (real SDK) and Jina (real httpx) backends through success and
every failure path against the local fake server, with every logger at DEBUG, and greps all
captured output, every exception (with its chained causes and traceback), every repr and
every serialized config, the adapters' included, for a recognisable fake key.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import pickle
import shutil
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crossrank import BackendError, CrossrankError, ModelRegistry, Reranker
from tests.support.fake_rerank_server import FakeRerankServer, Fault

FAKE_KEY = "crk-SECRET-9f8e7d6c5b4a-leak-canary"
PASSAGES = [
    "refunds for physical goods are issued within fourteen days of the return",
    "refunds for digital downloads are only possible before the file is opened",
    "shipping to europe takes five to seven business days",
]
QUERY = "refunds for digital downloads"


# -- trust_remote_code ------------------------------------------------------------------------


def test_trust_remote_code_defaults_to_off_everywhere() -> None:
    from crossrank.backends.cross_encoder import CrossEncoderBackend
    from crossrank.backends.embedding import EmbeddingBackend

    for backend_class in (CrossEncoderBackend, EmbeddingBackend):
        default = inspect.signature(backend_class.__init__).parameters["trust_remote_code"].default
        assert default is False
    assert CrossEncoderBackend("some/model").trust_remote_code is False
    assert EmbeddingBackend("some/model").trust_remote_code is False
    assert Reranker("cross-encoder", model="some/model").backend.trust_remote_code is False  # type: ignore[attr-defined]
    assert Reranker("embedding", model="some/model").backend.trust_remote_code is False  # type: ignore[attr-defined]


@pytest.fixture
def recorded_loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Wrap sentence-transformers' loaders so the keyword arguments they get are recorded."""
    st = pytest.importorskip("sentence_transformers")
    calls: list[tuple[str, dict[str, Any]]] = []

    class RecordingCrossEncoder(st.CrossEncoder):  # type: ignore[misc, name-defined]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            calls.append(("CrossEncoder", dict(kwargs)))
            super().__init__(*args, **kwargs)

    class RecordingSentenceTransformer(st.SentenceTransformer):  # type: ignore[misc, name-defined]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            calls.append(("SentenceTransformer", dict(kwargs)))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(st, "CrossEncoder", RecordingCrossEncoder)
    monkeypatch.setattr(st, "SentenceTransformer", RecordingSentenceTransformer)
    yield calls


@pytest.mark.parametrize("trust", [False, True])
def test_trust_remote_code_reaches_sentence_transformers(
    recorded_loads: list[tuple[str, dict[str, Any]]], tiny_cross_encoder_path: Path, trust: bool
) -> None:
    from crossrank.backends.cross_encoder import CrossEncoderBackend
    from crossrank.backends.embedding import EmbeddingBackend

    options: dict[str, Any] = {} if not trust else {"trust_remote_code": True}
    CrossEncoderBackend(
        str(tiny_cross_encoder_path), device="cpu", registry=ModelRegistry(), **options
    ).load()
    EmbeddingBackend(
        str(tiny_cross_encoder_path), device="cpu", registry=ModelRegistry(), **options
    ).load()
    loaders = {name: kwargs for name, kwargs in recorded_loads}
    assert set(loaders) == {"CrossEncoder", "SentenceTransformer"}
    for kwargs in loaders.values():
        assert kwargs["trust_remote_code"] is trust


def test_trusting_and_not_trusting_are_different_registry_entries(
    tiny_cross_encoder_path: Path,
) -> None:
    """A model loaded with remote code must never be handed to a caller who did not allow it."""
    from crossrank.backends.cross_encoder import CrossEncoderBackend

    registry = ModelRegistry()
    safe = CrossEncoderBackend(str(tiny_cross_encoder_path), device="cpu", registry=registry)
    trusting = CrossEncoderBackend(
        str(tiny_cross_encoder_path), device="cpu", registry=registry, trust_remote_code=True
    )
    assert safe.load() is not trusting.load()
    assert registry.load_count == 2


# -- safetensors first ------------------------------------------------------------------------


def test_safetensors_is_loaded_when_pytorch_bin_is_also_there(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    from crossrank.backends.cross_encoder import CrossEncoderBackend
    from tests.support.tiny_models import build_tiny_cross_encoder

    safe_model = build_tiny_cross_encoder(tmp_path / "safe", seed=0)
    # Same shapes, other values: what a stale or tampered pytorch_model.bin would hold.
    generator = torch.Generator().manual_seed(1)
    other_weights = {
        name: tensor + torch.randn(tensor.shape, generator=generator)
        if tensor.is_floating_point()
        else tensor
        for name, tensor in safetensors_torch.load_file(
            str(safe_model / "model.safetensors")
        ).items()
    }

    both = tmp_path / "both"
    shutil.copytree(safe_model, both)
    torch.save(other_weights, both / "pytorch_model.bin")
    bin_only = tmp_path / "bin-only"
    shutil.copytree(both, bin_only)
    (bin_only / "model.safetensors").unlink()

    def scores(path: Path) -> list[float]:
        backend = CrossEncoderBackend(
            str(path), device="cpu", registry=ModelRegistry(), local_files_only=True
        )
        return backend.score(QUERY, PASSAGES)

    from_safetensors = scores(safe_model)
    from_bin = scores(bin_only)
    assert from_bin != pytest.approx(from_safetensors)  # the two files really differ
    assert scores(both) == pytest.approx(from_safetensors, abs=1e-6)


# -- API keys never appear --------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[FakeRerankServer]:
    with FakeRerankServer(api_key=FAKE_KEY) as running:
        yield running


def api_backend(provider: str, server: FakeRerankServer, **options: Any) -> Any:
    from crossrank.backends.cohere import CohereBackend
    from crossrank.backends.jina import JinaBackend

    backend_class = CohereBackend if provider == "cohere" else JinaBackend
    http = {"backoff_base": 0.01, "backoff_max": 0.02, "timeout": 0.5, "connect_timeout": 0.5}
    http["max_retries"] = options.pop("max_retries", 1)
    return backend_class(**{**server.client_options(provider), **options}, http=http)


def everything_about(error: BaseException) -> list[str]:
    """str, repr, args and the formatted traceback of an error and all its causes."""
    texts = ["".join(traceback.format_exception(error))]
    current: BaseException | None = error
    while current is not None:
        texts += [str(current), repr(current), repr(current.args)]
        # The chain Python itself prints: the cause, else the context unless `from None`
        # suppressed it (see test_suppressed_context_still_holds_the_sdk_error below).
        if current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__:
            current = current.__context__
        else:
            current = None
    return texts


@pytest.mark.parametrize("provider", ["cohere", "jina"])
def test_the_key_appears_in_no_log_repr_error_or_config(
    provider: str,
    server: FakeRerankServer,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: crossrank, httpx, httpcore, the SDK
    seen: list[str] = []
    backend = api_backend(provider, server)
    reranker = Reranker(backend)
    strict = Reranker(backend, strict=True)
    named = Reranker(
        provider,
        backend_options={
            **server.client_options(provider),
            "http": {"max_retries": 0},
        },
    )
    seen += [repr(backend), str(backend), repr(reranker), repr(named)]
    seen += [json.dumps(backend.to_config()), json.dumps(named.to_config())]
    assert "api_key" not in named.to_config()["backend_options"]
    with pytest.raises(TypeError) as unpicklable:
        pickle.dumps(backend)
    seen += everything_about(unpicklable.value)

    def drive(*faults: Fault) -> None:
        server.fail_next(*faults)
        result = reranker.rerank(QUERY, PASSAGES)
        seen.append(repr(result))
        seen.append(result.report.error or "")
        server.fail_next(*faults)
        try:
            strict.rerank(QUERY, PASSAGES)
        except CrossrankError as error:
            seen.extend(everything_about(error))
        server.fail_next(*faults)
        try:
            asyncio.run(strict.arerank(QUERY, PASSAGES))
        except CrossrankError as error:
            seen.extend(everything_about(error))

    drive()  # success
    for status in (401, 429, 500):
        drive(
            Fault("status", status=status, echo_authorization=True, retry_after="0"),
            Fault("status", status=status, echo_authorization=True, retry_after="0"),
        )
    drive(Fault("status", status=500, body=f"upstream said: Authorization: Bearer {FAKE_KEY}"))
    drive(Fault("malformed"))
    drive(Fault("truncated"))
    drive(Fault("disconnect"), Fault("disconnect"))
    drive(Fault("slow", delay=1.0), Fault("slow", delay=1.0))  # longer than timeout=0.5
    # A wrong key on the client side: the server answers 401 for real.
    wrong = api_backend(provider, server, api_key=FAKE_KEY + "-WRONG", max_retries=0)
    with pytest.raises(BackendError) as unauthorized:
        wrong.score(QUERY, PASSAGES)
    assert unauthorized.value.status_code == 401  # type: ignore[attr-defined]
    seen += [*everything_about(unauthorized.value), repr(wrong)]
    backend.close()
    wrong.close()

    captured = capfd.readouterr()
    seen += [captured.out, captured.err, caplog.text]
    seen += [
        f"{record.getMessage()} {record.args!r} {record.exc_text}" for record in caplog.records
    ]
    assert caplog.records, "nothing was logged: the check would prove nothing"
    assert any("Bearer ***" in text for text in seen), "the echoed header never came back"
    leaks = [text for text in seen if FAKE_KEY in text]
    assert leaks == [], leaks[:1]


def test_adapters_never_serialize_the_key(
    server: FakeRerankServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = {**server.client_options("jina"), "http": {"max_retries": 0}}
    serialized: list[str] = []

    pytest.importorskip("langchain_core")
    from crossrank.integrations.langchain import CrossrankCompressor

    compressor = CrossrankCompressor(backend="jina", backend_options=options)
    serialized += [compressor.model_dump_json(), repr(compressor), str(compressor.model_dump())]
    assert compressor.config is not None

    pytest.importorskip("llama_index.core")
    from crossrank.integrations.llama_index import CrossrankPostprocessor

    postprocessor = CrossrankPostprocessor(backend="jina", backend_options=options)
    serialized += [postprocessor.to_json(), repr(postprocessor), str(postprocessor.to_dict())]

    pytest.importorskip("haystack")
    from haystack import Pipeline
    from haystack.utils import Secret

    from crossrank.integrations.haystack import CrossrankRanker

    monkeypatch.setenv("CROSSRANK_TEST_JINA_KEY", FAKE_KEY)
    ranker = CrossrankRanker(
        backend="jina",
        backend_options={"base_url": options["base_url"], "http": {"max_retries": 0}},
        api_key=Secret.from_env_var("CROSSRANK_TEST_JINA_KEY"),
    )
    pipeline = Pipeline()
    pipeline.add_component("ranker", ranker)
    serialized += [json.dumps(ranker.to_dict()), pipeline.dumps(), repr(ranker)]
    # The component really uses the key (so the check is not vacuous) ...
    from haystack import Document

    documents = [Document(content=text) for text in PASSAGES]
    ranked = ranker.run(query=QUERY, documents=documents)["documents"]
    assert ranked[0].meta["rerank_status"] == "reranked"
    # ... and a literal key (given as a string or a token Secret) is never written down.
    with pytest.raises(Exception, match="token"):
        CrossrankRanker(backend="jina", backend_options={"api_key": FAKE_KEY}).to_dict()
    with pytest.raises(Exception, match="token"):
        CrossrankRanker(backend="jina", api_key=Secret.from_token(FAKE_KEY)).to_dict()

    leaks = [text for text in serialized if FAKE_KEY in text]
    assert leaks == [], leaks[:1]


def full_context_chain(error: BaseException) -> list[str]:
    """Every exception reachable from ``error``, suppressed contexts included."""
    texts: list[str] = []
    current: BaseException | None = error
    while current is not None:
        texts += [str(current), repr(current), repr(current.args)]
        current = current.__cause__ or current.__context__
    return texts


@pytest.mark.parametrize(
    "provider",
    [
        "cohere",
        "jina",
    ],
)
def test_suppressed_context_still_holds_the_sdk_error(
    provider: str, server: FakeRerankServer
) -> None:
    backend = api_backend(provider, server, max_retries=0)
    server.fail_next(Fault("status", status=401, echo_authorization=True))
    with pytest.raises(BackendError) as raised:
        backend.score(QUERY, PASSAGES)
    backend.close()
    assert [text for text in full_context_chain(raised.value) if FAKE_KEY in text] == []
