"""Tiny cross-encoders built from scratch, so tests never reach a model hub.

A WordPiece vocabulary is trained on a few hundred words of local text, a 2-layer BERT with
a one-logit head is initialised from a fixed seed, and both are saved the way a hub model is
laid out, so loading goes through exactly the path a downloaded model takes.
"""

from __future__ import annotations

from pathlib import Path

TRAINING_TEXT = [
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
]


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
    from tokenizers.trainers import WordPieceTrainer
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = WordPieceTrainer(vocab_size=400, special_tokens=special, min_frequency=1)
    tokenizer.train_from_iterator(TRAINING_TEXT * 3, trainer=trainer)
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
