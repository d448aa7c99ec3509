"""The demo model's text side: a word-level tokenizer over the shapes world's vocabulary and a tiny UMT5 encoder.

A byte-level tokenizer spreads "a small yellow triangle moving right slowly" over 44 tokens and makes a tiny
teacher learn spelling before colours; one token per word gives it the caption's attributes directly. Words outside
the vocabulary map to ``<unk>``. The encoder is randomly initialised and frozen (its random projections of distinct
word embeddings are distinct; the teacher learns to read them through cross-attention). Built offline.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from dcm_demo.world import COLOURS, DIRECTIONS, SHAPES, SIZES, SPEEDS

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")
CONNECTIVES = ("a", "an", "the", "moving", "and")
# Captions have at most 7 words ("a small yellow triangle moving right slowly"); prompts are padded to this.
MAX_SEQUENCE_LENGTH = 16


def vocabulary() -> list[str]:
    """Special tokens first (pad = 0), then every word a shapes-world caption can use."""
    words = [*CONNECTIVES, *COLOURS, *SHAPES, *DIRECTIONS, *SIZES, *(s for s in SPEEDS if s)]
    return [*SPECIAL_TOKENS, *dict.fromkeys(words)]


def word_tokenizer() -> PreTrainedTokenizerFast:
    """Lower-cased, whitespace/punctuation split, one id per known word; saves as a plain ``tokenizer.json``."""
    vocab = {word: i for i, word in enumerate(vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def text_encoder(tokenizer: PreTrainedTokenizerFast, *, dim: int, layers: int, seed: int = 0) -> UMT5EncoderModel:
    """A randomly initialised UMT5 encoder of width ``dim`` over the tokenizer's vocabulary (frozen by its users)."""
    torch.manual_seed(seed)
    config = UMT5Config(
        vocab_size=len(tokenizer), d_model=dim, d_kv=dim // 2, d_ff=2 * dim, num_layers=layers, num_heads=2,
        relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return UMT5EncoderModel(config).eval()
