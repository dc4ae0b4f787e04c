"""Calibration recipes: where representative inputs come from and how they are preprocessed.

One TOML per recipe under `calibration/` (found by name) or anywhere (given as a path). A recipe
yields two disjoint parts: calibration samples (observers, fine-tuning) and held-out samples
(verification), with labels when the source has them. Relative paths in a recipe are resolved
against the recipe's own folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .artifacts import InputSpec, sha256_json, sha256_tensor
from .errors import CompressError
from .resources import data_dir
from .tomlfile import get, read_toml


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    source: str
    data: dict[str, Any]
    calibration_samples: int
    holdout_samples: int
    seed: int
    # samples that training passes (prune, distill) may use: the calibration samples and more from
    # the same (training) side, never the held-out ones; defaults to the calibration samples
    training_samples: int = 0

    def resolve(self, key: str) -> Path:
        value = Path(get(self.data, key, str, self.path))
        return value if value.is_absolute() else (self.path.parent / value)


@dataclass
class CalibrationData:
    recipe: str
    calib: tuple[torch.Tensor, ...]  # one stacked tensor per model input
    holdout: tuple[torch.Tensor, ...]
    holdout_labels: torch.Tensor | None
    fingerprint: str
    extras: dict[str, Any]  # e.g. the held-out sentences, for reports
    calib_labels: torch.Tensor | None = None  # optional: distillation works without them
    train: tuple[torch.Tensor, ...] | None = None  # training passes' samples (calib is their start)
    train_labels: torch.Tensor | None = None

    def training(self) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        """The samples a training pass may learn from, and their labels where the source has them."""
        return (self.train, self.train_labels) if self.train is not None else (self.calib, self.calib_labels)

    @property
    def num_calib(self) -> int:
        return int(self.calib[0].shape[0])

    @property
    def num_holdout(self) -> int:
        return int(self.holdout[0].shape[0])


# --calib DATA without a recipe: what each kind of file means, and the defaults (--help says the same)
DIRECT_SOURCES = {".npz": "npy", ".npy": "npy", ".txt": "text"}
DIRECT_DEFAULTS = {"calibration_samples": 256, "holdout_samples": 500, "seed": 0}


def direct_recipe(path: Path) -> Recipe:
    """A recipe for a data file or image folder given straight to --calib: samples as they are
    (.npz key `x`, labels `y` if present; .npy), images scaled to [0, 1] and fitted to the model's
    input (class subfolders give labels), text one sample per line through the model's tokenizer,
    padded to 128 tokens."""
    path = path.resolve()
    data: dict[str, Any] = {"path": str(path), **DIRECT_DEFAULTS}
    if path.is_dir():
        data.update(source="image_folder", preprocess={"scale": 1 / 255})
    elif path.suffix.lower() in DIRECT_SOURCES:
        data["source"] = DIRECT_SOURCES[path.suffix.lower()]
        if path.suffix.lower() == ".npz":
            try:
                with np.load(path, allow_pickle=False) as z:
                    files = list(z.files)
            except (ValueError, OSError) as e:
                raise CompressError(f"{path}: cannot read as .npz: {e}") from None
            if not files:
                raise CompressError(f"{path}: the .npz holds no arrays")
            data["key"] = "x" if "x" in files else files[0]
            if "y" in files:
                data["labels_key"] = "y"
        if data["source"] == "text":
            data.update(tokenizer="model", max_length=128, padding="max_length")
    else:
        raise CompressError(f"--calib {path}: not a recipe (.toml) nor a data file (.npz, .npy, .txt, or a folder "
                            "of images)")
    return Recipe(name=path.name, path=path, source=data["source"], data=data,
                  calibration_samples=DIRECT_DEFAULTS["calibration_samples"],
                  holdout_samples=DIRECT_DEFAULTS["holdout_samples"], seed=DIRECT_DEFAULTS["seed"])


def load_recipe(name_or_path: str) -> Recipe:
    candidate = Path(name_or_path)
    if candidate.suffix.lower() != ".toml" and (candidate.is_dir() or candidate.is_file()):
        return direct_recipe(candidate)
    if candidate.suffix != ".toml" and not candidate.is_file():
        bundled = data_dir("calibration") / f"{name_or_path}.toml"
        if not bundled.is_file():
            known = ", ".join(p.stem for p in sorted(data_dir("calibration").glob("*.toml")))
            raise CompressError(f"unknown calibration recipe '{name_or_path}'; known recipes: {known} (or give a path to a .toml)")
        candidate = bundled
    data = read_toml(candidate)
    source = get(data, "source", str, candidate)
    if source not in SOURCES:
        raise CompressError(f"{candidate}: key 'source' must be one of {', '.join(SOURCES)}, got '{source}'")
    recipe = Recipe(
        name=get(data, "name", str, candidate, default=candidate.stem),
        path=candidate.resolve(),
        source=source,
        data=data,
        calibration_samples=get(data, "calibration_samples", int, candidate, default=256),
        holdout_samples=get(data, "holdout_samples", int, candidate, default=500),
        seed=get(data, "seed", int, candidate, default=0),
        training_samples=get(data, "training_samples", int, candidate, default=0),
    )
    if recipe.calibration_samples < 1 or recipe.holdout_samples < 1 or recipe.training_samples < 0:
        raise CompressError(f"{candidate}: calibration_samples and holdout_samples must be at least 1, "
                            f"training_samples at least 0")
    return recipe


def load_calibration(recipe: Recipe, spec: InputSpec, model_path: Path | None = None) -> CalibrationData:
    """Read, preprocess, split and check the samples against the model's input spec."""
    samples, labels, extras = SOURCES[recipe.source](recipe, spec, model_path)
    total = samples[0].shape[0]
    # a source's training-only samples (a text recipe's training_path) add to the training side,
    # which then takes only the calibration samples from the main file
    training_only = extras.pop("training_only", None)
    pool = recipe.calibration_samples if training_only else max(recipe.calibration_samples, recipe.training_samples)
    need = pool + recipe.holdout_samples
    if total < 2:
        raise CompressError(f"{recipe.path}: only {total} sample(s); need at least one for calibration and one held out")
    order = np.random.default_rng(recipe.seed).permutation(total) if extras.pop("shuffle", True) else np.arange(total)
    n_pool = min(pool, total * pool // need) if total < need else pool
    n_pool = max(1, min(n_pool, total - 1))
    n_cal = min(recipe.calibration_samples, n_pool)
    train_idx, hold_idx = order[:n_pool], order[n_pool:n_pool + recipe.holdout_samples]
    cal_idx = train_idx[:n_cal]
    calib = tuple(torch.as_tensor(s[cal_idx]) for s in samples)
    holdout = tuple(torch.as_tensor(s[hold_idx]) for s in samples)
    train = tuple(torch.as_tensor(s[train_idx]) for s in samples) if n_pool > n_cal else None
    if training_only:
        extra = n_cal + training_only[0].shape[0]
        extra = (min(recipe.training_samples, extra) if recipe.training_samples else extra) - n_cal
        train = tuple(torch.cat([c, torch.as_tensor(t[:max(0, extra)])]) for c, t in zip(calib, training_only))
    check_fits(recipe.path, calib, spec)
    for part in (*(train or calib), *holdout):  # the calibration samples start the training ones
        if part.is_floating_point() and not torch.isfinite(part).all():
            raise CompressError(f"{recipe.path}: the samples contain NaN or Inf values")
    digest = [sha256_tensor(t) for t in (*calib, *holdout)] + ([sha256_tensor(t) for t in train] if train else [])
    fingerprint = sha256_json({"recipe": recipe.data, "digest": digest})
    held_labels = torch.as_tensor(labels[hold_idx]) if labels is not None else None
    calib_labels = torch.as_tensor(labels[cal_idx]) if labels is not None else None
    train_labels = torch.as_tensor(labels[train_idx]) if labels is not None and train is not None and not training_only else None
    if "texts" in extras:
        extras["holdout_texts"] = [extras["texts"][i] for i in hold_idx]
        del extras["texts"]
    return CalibrationData(recipe.name, calib, holdout, held_labels, fingerprint, extras, calib_labels, train, train_labels)


def synthetic_calibration(spec: InputSpec, count: int = 64, seed: int = 0) -> CalibrationData:
    """Uniform random inputs: enough for export parity and latency, not for accuracy."""
    from .model_io import example_inputs

    calib = example_inputs(spec, batch=count, seed=seed)
    holdout = example_inputs(spec, batch=count, seed=seed + 1)
    fingerprint = sha256_json({"random": count, "seed": seed, "spec": spec.to_json()})
    return CalibrationData("random", calib, holdout, None, fingerprint, {"data_source": "random"})


def check_fits(where: Path, tensors: tuple[torch.Tensor, ...], spec: InputSpec) -> None:
    if len(tensors) != len(spec.inputs):
        raise CompressError(f"{where}: gives {len(tensors)} input(s) per sample but the model takes {len(spec.inputs)}")
    for t, s in zip(tensors, spec.inputs):
        expected = s.shape[1:]
        got = tuple(t.shape[1:])
        fits = len(got) == len(expected) and all(isinstance(e, str) or e == g for e, g in zip(expected, got))
        if not fits:
            shown = "x".join(str(d) for d in expected)
            raise CompressError(f"{where}: samples of shape {'x'.join(map(str, got))} do not fit the model input "
                                f"'{s.name}' of shape Nx{shown}")
        if t.is_floating_point() != s.dtype.startswith("float"):
            raise CompressError(f"{where}: samples are {str(t.dtype).removeprefix('torch.')} but the model input '{s.name}' is {s.dtype}")



# --- sources: each returns (per-input arrays, labels or None, extras) --------------------------

def _preprocess(x: np.ndarray, recipe: Recipe) -> np.ndarray:
    pre = get(recipe.data, "preprocess", dict, recipe.path, default={})
    x = x.astype(np.float32) * float(pre.get("scale", 1.0))
    channels_axis = 1 if x.ndim == 4 else None
    for key in ("mean", "std"):
        if key in pre:
            value = np.asarray(pre[key], dtype=np.float32)
            if channels_axis is not None and value.ndim == 1:
                value = value.reshape(1, -1, *([1] * (x.ndim - 2)))
            x = x - value if key == "mean" else x / value
    return x


def _source_mnist(recipe: Recipe, spec: InputSpec, model_path: Path | None):
    from .datasets.mnist import load_mnist_split

    x_train, y_train, x_test, y_test = load_mnist_split(seed=recipe.seed)
    # The bundled split is fixed: calibration from the training part, held-out from the test part,
    # so verification never sees a digit the teacher was trained on.
    n_train = min(max(recipe.calibration_samples, recipe.training_samples), len(x_train))
    n_hold = min(recipe.holdout_samples, len(x_test))
    x = np.concatenate([x_train[:n_train], x_test[:n_hold]])
    y = np.concatenate([y_train[:n_train], y_test[:n_hold]])
    return (_preprocess(x, recipe),), y, {"shuffle": False}


def _source_npy(recipe: Recipe, spec: InputSpec, model_path: Path | None):
    path = recipe.resolve("path")
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CompressError(f"{recipe.path}: data file {path} not found") from None
    except (ValueError, OSError) as e:
        raise CompressError(f"{recipe.path}: cannot read {path}: {e}") from None
    labels = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        key = get(recipe.data, "key", str, recipe.path, default=loaded.files[0])
        if key not in loaded.files:
            raise CompressError(f"{recipe.path}: key '{key}' not in {path.name} (has {', '.join(loaded.files)})")
        x = loaded[key]
        labels_key = get(recipe.data, "labels_key", str, recipe.path, default="")
        if labels_key:
            if labels_key not in loaded.files:
                raise CompressError(f"{recipe.path}: labels_key '{labels_key}' not in {path.name}")
            labels = loaded[labels_key].astype(np.int64)
    else:
        x = loaded
    if x.dtype.kind in "iu" and spec.inputs[0].dtype.startswith("int"):
        return (x.astype(np.int64),), labels, {}
    return (_preprocess(x, recipe),), labels, {}


def _source_image_folder(recipe: Recipe, spec: InputSpec, model_path: Path | None):
    from PIL import Image, UnidentifiedImageError

    folder = recipe.resolve("path")
    if not folder.is_dir():
        raise CompressError(f"{recipe.path}: image folder {folder} not found")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm"})
    if not files:
        raise CompressError(f"{recipe.path}: no images (.png/.jpg/.bmp/.ppm) under {folder}")
    pre = get(recipe.data, "preprocess", dict, recipe.path, default={})
    shape = spec.inputs[0].shape  # without mode/size: what the model's (N, C, H, W) input takes
    fixed = len(shape) == 4 and all(isinstance(d, int) for d in shape[1:])
    mode = pre.get("mode", "L" if fixed and shape[1] == 1 else "RGB")
    size = pre.get("size", list(shape[2:]) if fixed else None)
    classes = sorted({p.parent.name for p in files}) if all(p.parent != folder for p in files) else None
    arrays, labels = [], []
    for p in files:
        try:
            img = Image.open(p).convert(mode)
        except (UnidentifiedImageError, OSError) as e:
            raise CompressError(f"{recipe.path}: cannot read image {p}: {e}") from None
        if size:
            img = img.resize((int(size[1]), int(size[0])), Image.BILINEAR)
        a = np.asarray(img, dtype=np.float32)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))  # HWC -> CHW
        if classes:
            labels.append(classes.index(p.parent.name))
    try:
        x = np.stack(arrays)
    except ValueError:
        raise CompressError(f"{recipe.path}: images differ in size; set preprocess.size = [H, W]") from None
    return (_preprocess(x, recipe),), (np.asarray(labels, dtype=np.int64) if classes else None), {}


def _source_text(recipe: Recipe, spec: InputSpec, model_path: Path | None):
    from .hf import tokenize_lines

    return tokenize_lines(recipe, spec, model_path)


SOURCES: dict[str, Callable] = {
    "mnist": _source_mnist,
    "npy": _source_npy,
    "image_folder": _source_image_folder,
    "text": _source_text,
}
