"""Sentences from the tokenizer's vocabulary: the fallback for Hugging Face encoders (no BatchNorm
to match, but a tokenizer that says which inputs are words).

Each sentence is a run of whole-word tokens (no special tokens, no `[unused]`-style placeholders,
no word-continuation pieces such as `##ing`) drawn uniformly from the model folder's own
tokenizer, joined back into text and tokenized as a `text` recipe would: [CLS] ... [SEP], padded
to `MAX_LENGTH` tokens, so the engine is calibrated and timed at the length a real recipe uses.
Sentence lengths follow a log-normal around `MEDIAN_WORDS` words (most between 7 and 30), the
spread of ordinary English sentences, clipped to what fits.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..artifacts import InputSpec

MAX_LENGTH = 128
MEDIAN_WORDS = 14
SPREAD = 0.5  # of the log-normal: exp(+-2 x 0.5) gives 0.37x .. 2.7x the median
CONTINUATION = ("##",)  # WordPiece's mark of a piece that continues a word


def applies(spec: InputSpec, model_path: Path | None) -> bool:
    return (model_path is not None and model_path.is_dir() and (model_path / "config.json").is_file()
            and all(t.dtype.startswith("int") and len(t.shape) == 2 for t in spec.inputs))


def word_tokens(tokenizer) -> list[str]:
    """The vocabulary's whole-word tokens: no special or placeholder tokens, no continuation pieces."""
    special = set(tokenizer.all_special_tokens)
    words = []
    for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        bracketed = token[:1] in "[<" and token[-1:] in "]>"
        if token in special or bracketed or token.startswith(CONTINUATION) or not token.strip() or not token.isprintable():
            continue
        words.append(token)
    return words


def sentences(spec: InputSpec, model_path: Path, count: int, seed: int) -> tuple[tuple[torch.Tensor, ...], dict]:
    from ..hf import _input_keys, _load_tokenizer, _read_json, _transformers

    tokenizer = _load_tokenizer(_transformers(), model_path, model_path)
    limit = _read_json(model_path / "config.json").get("max_position_embeddings")
    max_length = min(MAX_LENGTH, limit) if isinstance(limit, int) else MAX_LENGTH
    keys = _input_keys(spec, model_path, max_length, "max_length")
    words = word_tokens(tokenizer)
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(MEDIAN_WORDS * np.exp(rng.normal(0.0, SPREAD, count))), 3, max_length - 2).astype(int)
    texts = [tokenizer.convert_tokens_to_string([words[i] for i in rng.integers(len(words), size=n)]) for n in lengths]
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np",
                        return_token_type_ids="token_type_ids" in keys, return_attention_mask=True)
    arrays = tuple(torch.as_tensor(np.asarray(encoded[k], dtype=np.int64)) for k in keys)
    return arrays, {"texts": texts, "vocabulary_words": len(words), "max_length": max_length}


class VocabularySynthesizer:
    name = "tokenizer-vocabulary"
    description = (f"sentences of whole-word tokens sampled from the model's own tokenizer vocabulary (no special "
                   f"tokens), about {MEDIAN_WORDS} words each, padded to {MAX_LENGTH} tokens")
    steps_per_batch = 1

    def __init__(self, spec: InputSpec, model_path: Path):
        self.spec, self.model_path = spec, model_path

    @classmethod
    def prepare(cls, module, spec: InputSpec, model_path: Path | None, cfg) -> VocabularySynthesizer | None:
        return cls(spec, model_path) if applies(spec, model_path) else None

    def batch(self, count: int, seed: int, on_step) -> tuple[tuple[torch.Tensor, ...], dict]:
        arrays, info = sentences(self.spec, self.model_path, count, seed)
        on_step()
        return arrays, {"texts": info["texts"], "vocabulary_words": info["vocabulary_words"]}
