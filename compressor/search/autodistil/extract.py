"""A subnet's weights as a standalone student: the teacher's Hugging Face classes with a smaller
config (a real BertModel / BertForSequenceClassification), inside the same compressor.hf wrapper
(HFEncoder with the teacher's pooling, or HFClassifier). It exports, quantizes and lowers like any
encoder loaded from a folder, and `save_student` writes it as one.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from ...errors import CompressError
from .space import SubnetSpec
from .supernet import Supernet, student_skeleton

_POOLING_KEYS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens",
                 "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens"}


def extract_subnet(source: Supernet | nn.Module, spec: SubnetSpec) -> nn.Module:
    """The subnet `spec` of a trained supernet, or of a teacher directly (plain truncation: its
    first layers, heads, hidden and FFN dims), as a standalone module with copies of the weights."""
    supernet = source if isinstance(source, Supernet) else Supernet(source)
    weights = supernet.weights(spec)
    student = student_skeleton(supernet.shared, spec, device="cpu")
    with torch.no_grad():
        for name, tensor in (*student.named_parameters(), *student.named_buffers()):
            tensor.copy_(weights[name])
    for p in student.parameters():
        p.requires_grad_(False)
    return student.eval()


def save_student(student: nn.Module, folder: Path, tokenizer: Path | None = None) -> Path:
    """Write `student` as a Hugging Face folder that compressor.hf.load_hf_folder reads back (and
    sentence-transformers, for an encoder): config and weights, the pooling as a sentence-transformers
    configuration, and the tokenizer's files copied from the folder `tokenizer` when given.
    Written to a temporary folder first, then moved into place."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise CompressError(f"{folder}: exists and is not empty; choose a new folder for the student")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        student.model.save_pretrained(tmp)
        if hasattr(student, "pooling"):
            (tmp / "1_Pooling").mkdir()
            pooling = {key: student.pooling == mode for mode, key in _POOLING_KEYS.items()}
            pooling["word_embedding_dimension"] = student.model.config.hidden_size
            (tmp / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
            modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                       {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
            if student.normalize:
                modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                                "type": "sentence_transformers.models.Normalize"})
            (tmp / "modules.json").write_text(json.dumps(modules, indent=2))
        if tokenizer is not None:
            for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
                if (Path(tokenizer) / name).is_file():
                    shutil.copyfile(Path(tokenizer) / name, tmp / name)
        if folder.exists():
            folder.rmdir()
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
