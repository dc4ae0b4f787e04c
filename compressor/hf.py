"""Hugging Face models: load an encoder folder as a module with tensor inputs, tokenize text recipes.

`load_hf_folder` turns a model folder (config.json + weights, read offline) into an nn.Module
that takes `input_ids` and `attention_mask` (int64, batch x sequence) and returns one tensor:

- a sequence classifier (`...ForSequenceClassification`) returns its logits (task classification);
- any other encoder returns its pooled sentence embedding (task embedding): pooled as the
  folder's sentence-transformers configuration says (`modules.json`, `1_Pooling/config.json`:
  mean, CLS, max or mean/sqrt(len) pooling, then L2 normalization when a Normalize module is
  listed), attention-mask weighted mean pooling when the folder has no such configuration.
  Verification then compares pooled embeddings, which is what users of an encoder consume.

`tokenize_lines` is the `text` calibration source: one sample per line of a text file, tokenized
with the model folder's own tokenizer (`tokenizer = "model"`) or a tokenizer folder, to
`max_length` tokens with `padding = "max_length"` (every sample that long, so latency is timed
at that length) or `"longest"`. A tokenizer that does not belong to the model is refused before
any work: more tokens than the model's embedding table has rows, a different model type, or
(when the model folder has its own tokenizer) different ids for the same tokens.

Export: the ONNX export pass exports these modules with `torch.onnx.export(dynamo=True)` and
dynamic `batch` and `sequence` axes named from the TensorSpecs, like any other module. Measured
on MiniLM-L6 (BERT): the dynamo export keeps both axes dynamic, matches PyTorch to ~1e-6 at 16 and
128 tokens, padded or not. Optimum's exporter is not used: it exports the bare transformer
(last_hidden_state, no pooling or normalization, plus a token_type_ids input), it needs a
`PreTrainedModel` and its own per-architecture config, so it cannot export the modules that later
passes produce (pruned, fake-quantized); one exporter for every module keeps the engine and the
module that verification compares it with the same program. This paragraph is the one place
that decision is made; revisit it if a BERT-family architecture fails the torch exporters.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .artifacts import InputSpec, TensorSpec
from .errors import CompressError, first_line
from .tomlfile import get

INPUTS = ("input_ids", "attention_mask")
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")
PADDING = ("max_length", "longest")
_TOKENIZER_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")  # positional fallback order
_ST_POOLING = "sentence_transformers.models.Pooling"
_ST_NORMALIZE = "sentence_transformers.models.Normalize"
_ST_TRANSFORMER = "sentence_transformers.models.Transformer"


def _transformers():
    # Models and tokenizers are read from local folders only; never reach for the Hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise CompressError("Hugging Face models and text recipes need transformers: "
                            "pip install -e '.[hf]'") from None
    return transformers


@contextlib.contextmanager
def _quiet_transformers():
    """transformers logs warnings (unused weights, deprecations) that are not the user's business."""
    logging = _transformers().utils.logging
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


# --- models -------------------------------------------------------------------------------------

class HFEncoder(torch.nn.Module):
    """A transformer encoder and its pooling: (input_ids, attention_mask) -> sentence embedding."""

    task = "embedding"

    def __init__(self, model: torch.nn.Module, pooling: str = "mean", normalize: bool = False):
        super().__init__()
        if pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {pooling!r}")
        self.model = model
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask)[0]
        pooled = pool(hidden, attention_mask, self.pooling)
        return F.normalize(pooled, p=2.0, dim=-1) if self.normalize else pooled


class HFClassifier(torch.nn.Module):
    """A sequence classifier: (input_ids, attention_mask) -> logits."""

    task = "classification"

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask)[0]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """Pool token states (batch x sequence x hidden) over the tokens the mask keeps."""
    if mode == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    summed = (hidden * mask).sum(dim=1)
    count = mask.sum(dim=1).clamp(min=1e-9)
    return summed / (count.sqrt() if mode == "mean_sqrt_len" else count)


def load_hf_folder(path: Path) -> tuple[torch.nn.Module, list[TensorSpec]]:
    """Load a Hugging Face encoder folder, offline, as a module over (input_ids, attention_mask)."""
    transformers = _transformers()
    config = _read_json(path / "config.json")
    architectures = config.get("architectures") or []
    model_type = config.get("model_type", "?")
    if config.get("is_encoder_decoder") or config.get("is_decoder") or any(
            a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in architectures):
        raise CompressError(f"{path}: a {model_type} model ({', '.join(architectures) or 'decoder'}); only encoder models "
                            "(BERT family: embeddings or sequence classification) are supported")
    classifier = any(a.endswith("ForSequenceClassification") for a in architectures)
    auto = transformers.AutoModelForSequenceClassification if classifier else transformers.AutoModel
    pooling, normalize = (None, False) if classifier else _sentence_pooling(path)
    try:
        with _quiet_transformers():
            model = auto.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - unknown model type, missing or corrupt weights, ...
        raise CompressError(f"{path}: transformers cannot load this {model_type} model: {first_line(e)}") from None
    model.eval()
    module = HFClassifier(model) if classifier else HFEncoder(model, pooling, normalize)
    # Position embeddings bound the sequence; torch.export needs the bound to trace the slicing.
    module.max_sequence = config.get("max_position_embeddings")
    return module, [TensorSpec(name, ("batch", "sequence"), "int64") for name in INPUTS]


def _sentence_pooling(path: Path) -> tuple[str, bool]:
    """Pooling and normalization from a sentence-transformers folder; plain mean pooling otherwise."""
    modules_file = path / "modules.json"
    if not modules_file.is_file():
        return "mean", False
    modules = _read_json(modules_file)
    if not isinstance(modules, list):
        raise CompressError(f"{modules_file}: expected a list of modules")
    pooling, normalize = "mean", False
    for entry in modules:
        kind = entry.get("type", "")
        if kind == _ST_POOLING:
            pooling = _pooling_mode(_read_json(path / entry.get("path", "") / "config.json"), path / entry.get("path", ""))
        elif kind == _ST_NORMALIZE:
            normalize = True
        elif kind != _ST_TRANSFORMER:
            raise CompressError(f"{modules_file}: module '{kind}' is not supported (only Transformer, Pooling and "
                                "Normalize); the embedding would differ from the model's")
    return pooling, normalize


def _pooling_mode(config: dict[str, Any], where: Path) -> str:
    modes = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
             "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len"}
    chosen = [mode for key, mode in modes.items() if config.get(key)]
    other = [k for k, v in config.items() if k.startswith("pooling_mode") and v and k not in modes]
    if other or len(chosen) != 1:
        raise CompressError(f"{where}: pooling {', '.join(other + chosen) or 'none'} is not supported; "
                            f"exactly one of {', '.join(modes)} must be set")
    return chosen[0]


# --- text calibration -----------------------------------------------------------------------------

def tokenize_lines(recipe, spec: InputSpec, model_path: Path | None):
    """The `text` source: (arrays per model input, None, {"texts": [...], ...})."""
    transformers = _transformers()
    where = recipe.path
    max_length = get(recipe.data, "max_length", int, where, default=128)
    padding = get(recipe.data, "padding", str, where, default="max_length")
    tokenizer_name = get(recipe.data, "tokenizer", str, where, default="model")
    if max_length < 2:
        raise CompressError(f"{where}: max_length must be at least 2, got {max_length}")
    if padding not in PADDING:
        raise CompressError(f"{where}: key 'padding' must be one of {', '.join(PADDING)}, got '{padding}'")
    keys = _input_keys(spec, where, max_length, padding)
    texts = _read_lines(recipe, "path")
    training_texts = _read_lines(recipe, "training_path") if "training_path" in recipe.data else []

    model_folder = model_path if model_path is not None and (model_path / "config.json").is_file() else None
    if tokenizer_name == "model":
        if model_folder is None:
            raise CompressError(f"{where}: tokenizer = \"model\" takes the model folder's own tokenizer, but the model "
                                f"{model_path or '(a module)'} is not a Hugging Face folder; set tokenizer to a tokenizer folder")
        folder = model_folder
    else:
        folder = recipe.resolve("tokenizer")
        if not folder.is_dir():
            raise CompressError(f"{where}: tokenizer folder {folder} not found")
    tokenizer = _load_tokenizer(transformers, folder, where)
    if model_folder is not None:
        _check_pairing(tokenizer, folder, model_folder, where, transformers)
        limit = _read_json(model_folder / "config.json").get("max_position_embeddings")
        if isinstance(limit, int) and max_length > limit:
            raise CompressError(f"{where}: max_length {max_length} is longer than the model's {limit} positions")
    if max_length > getattr(tokenizer, "model_max_length", max_length):  # unset: a huge sentinel value
        raise CompressError(f"{where}: max_length {max_length} is longer than the {tokenizer.model_max_length} "
                            f"tokens the tokenizer {folder} is made for")

    def encode(lines: list[str]) -> tuple[np.ndarray, ...]:
        encoded = tokenizer(lines, padding=padding, truncation=True, max_length=max_length, return_tensors="np",
                            return_token_type_ids="token_type_ids" in keys, return_attention_mask=True)
        return tuple(np.asarray(encoded[k], dtype=np.int64) for k in keys)

    arrays = encode(texts)
    extras = {"texts": texts, "tokenizer": str(folder), "max_length": max_length, "padding": padding,
              "sequence_length": int(arrays[0].shape[1])}
    if training_texts:  # more samples for training passes only: never calibration or held-out
        extras["training_only"] = _padded_to(encode(training_texts), arrays[0].shape[1])
    return arrays, None, extras


def _padded_to(arrays: tuple[np.ndarray, ...], length: int) -> tuple[np.ndarray, ...]:
    """Arrays padded (zeros: pad id, mask 0) or cut to `length` columns, to stack with the main file's
    (with padding = "longest" the two files' longest lines differ)."""
    return tuple(np.pad(a, ((0, 0), (0, max(0, length - a.shape[1]))))[:, :length] for a in arrays)


def _input_keys(spec: InputSpec, where: Path, max_length: int, padding: str) -> list[str]:
    """Which tokenizer output feeds each model input: by name, else input_ids, attention_mask, token_type_ids."""
    if len(spec.inputs) > len(_TOKENIZER_OUTPUTS):
        raise CompressError(f"{where}: a text recipe gives up to {len(_TOKENIZER_OUTPUTS)} inputs "
                            f"({', '.join(_TOKENIZER_OUTPUTS)}) but the model takes {len(spec.inputs)}")
    keys = []
    for position, t in enumerate(spec.inputs):
        if not t.dtype.startswith("int") or len(t.shape) != 2:
            raise CompressError(f"{where}: a text recipe gives token ids (int64, batch x sequence) but the model input "
                                f"'{t.name}' is {t.dtype} of shape {'x'.join(map(str, t.shape))}")
        length = t.shape[1]
        if isinstance(length, int) and (padding != "max_length" or max_length != length):
            raise CompressError(f"{where}: the model input '{t.name}' takes exactly {length} tokens; "
                                f"set max_length = {length} and padding = \"max_length\"")
        keys.append(t.name if t.name in _TOKENIZER_OUTPUTS else _TOKENIZER_OUTPUTS[position])
    return keys


def _read_lines(recipe, key: str) -> list[str]:
    path = recipe.resolve(key)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CompressError(f"{recipe.path}: text file {path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CompressError(f"{recipe.path}: cannot read {path} as UTF-8 text: {e}") from None
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise CompressError(f"{recipe.path}: {path} has no text (one sample per line)")
    return texts


def _load_tokenizer(transformers, folder: Path, where: Path):
    try:
        with _quiet_transformers():
            return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - missing files, unknown tokenizer class, ...
        raise CompressError(f"{where}: cannot load a tokenizer from {folder}: {first_line(e)}") from None


def _check_pairing(tokenizer, folder: Path, model_folder: Path, where: Path, transformers) -> None:
    """Refuse a tokenizer made for another model: its ids would index the wrong embeddings."""
    config = _read_json(model_folder / "config.json")
    model_type = config.get("model_type", "?")
    rows = config.get("vocab_size")
    if isinstance(rows, int) and len(tokenizer) > rows:
        raise CompressError(f"{where}: the tokenizer {folder} has {len(tokenizer)} tokens but the {model_type} model "
                            f"{model_folder} has {rows} embeddings; the tokenizer belongs to a different model")
    if folder.resolve() == model_folder.resolve():
        return
    if (folder / "config.json").is_file():
        other = _read_json(folder / "config.json").get("model_type")
        if other and other != model_type:
            raise CompressError(f"{where}: the tokenizer {folder} is for a {other} model but the model {model_folder} "
                                f"is a {model_type}; use the model's own tokenizer (tokenizer = \"model\")")
    own_files = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "spm.model", "sentencepiece.bpe.model")
    if any((model_folder / f).is_file() for f in own_files):
        own = _load_tokenizer(transformers, model_folder, where).get_vocab()
        theirs = tokenizer.get_vocab()
        differ = [t for t, i in own.items() if t in theirs and theirs[t] != i]
        missing = sum(1 for t in own if t not in theirs)
        if differ or missing > len(own) // 100:
            example = f" (e.g. '{differ[0]}': {own[differ[0]]} in the model's, {theirs[differ[0]]} in this one)" if differ else ""
            raise CompressError(f"{where}: the tokenizer {folder} does not match the model's own tokenizer: "
                                f"{len(differ)} tokens have other ids{example}, {missing} of the model's "
                                f"{len(own)} tokens are missing; use tokenizer = \"model\"")


# --- helpers ----------------------------------------------------------------------------------------

def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CompressError(f"{path}: file not found") from None
    except (OSError, ValueError) as e:
        raise CompressError(f"{path}: not readable JSON: {e}") from None
