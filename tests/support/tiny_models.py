"""Tiny cross-encoders built from scratch, so tests never reach a model hub.

A WordPiece vocabulary is written from a few hundred words of local text, a 2-layer BERT with
a one-logit head is initialised from a fixed seed, and both are saved the way a hub model is
laid out, so loading goes through exactly the path a downloaded model takes.

The vocabulary is written, not trained: the WordPiece trainer breaks ties between equally
frequent merges differently from run to run, which gave every test session (and every CI
machine) a different model.
"""

from __future__ import annotations

import string
from pathlib import Path

VOCABULARY_TEXT = [
    "refunds for physical goods are issued within fourteen days of the return",
    "refunds for digital downloads are only possible before the file is opened",
    "the capital of germany is berlin and about 3.7 million people live there",
    "paris is the capital of france and sits on the seine",
    "to reset your password open settings and choose security",
    "shipping to europe takes five to seven business days",
    "the warranty covers manufacturing defects for two years",
    "cross encoders read the query and the passage together",
    "bm25 ranks documents by term frequency and inverse document frequency",
    "a reranker reorders the candidates found by the first stage retriever",
    "cats purr and chase mice while dogs bark all day long in the park and fish swim",
]


def tiny_vocabulary() -> list[str]:
    """Special tokens, every printable character (alone and as a suffix piece), then words.

    Sorted throughout, so the same ids come out on every machine; any ASCII text tokenizes
    without ``[UNK]`` because unknown words fall back to characters.
    """
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    characters = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    words = sorted({word for line in VOCABULARY_TEXT for word in line.split()} - set(characters))
    return special + characters + [f"##{char}" for char in characters] + words


def build_tiny_cross_encoder(
    directory: Path,
    *,
    seed: int = 0,
    max_position_embeddings: int = 128,
    num_labels: int = 1,
) -> Path:
    """Write a tiny BERT cross-encoder (config, weights, tokenizer) into ``directory``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    vocabulary = {token: index for index, token in enumerate(tiny_vocabulary())}
    tokenizer = Tokenizer(models.WordPiece(vocab=vocabulary, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_position_embeddings,
    )
    fast.save_pretrained(str(directory))

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_position_embeddings,
        num_labels=num_labels,
    )
    model = BertForSequenceClassification(config)
    model.eval()
    model.save_pretrained(str(directory))
    return directory
