"""Load the user's model safely and work out what it takes as input.

Safe by default: TorchScript archives, `torch.export` archives (.pt2), a state_dict read with
`torch.load(weights_only=True)` plus the user's model class, and Hugging Face model folders.
A pickled `nn.Module` is only unpickled with an explicit `allow_pickle`, because unpickling
runs whatever code the file names.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .artifacts import MODULE, Artifact, InputSpec, TensorSpec, sha256_file, sha256_json
from .errors import CompressError, first_line

TASKS = ("classification", "embedding", "regression")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32}


@dataclass
class LoadOptions:
    model_class: str | None = None  # "package.module:Class" or "path/to/file.py:Class"
    model_args: dict[str, Any] = field(default_factory=dict)
    allow_pickle: bool = False
    input_shapes: list[tuple[int, ...]] | None = None
    input_dtype: str = "float32"
    task: str | None = None


def parse_input_shapes(text: str) -> list[tuple[int, ...]]:
    """'1x1x28x28' or '1x128,1x128' (one shape per input)."""
    shapes = []
    for part in text.split(","):
        if not re.fullmatch(r"\d+(x\d+)*", part.strip()):
            raise CompressError(f"--input-shape: '{part}' is not a shape like 1x3x224x224")
        shapes.append(tuple(int(d) for d in part.strip().split("x")))
    if any(0 in s for s in shapes):
        raise CompressError("--input-shape: dimensions must be positive")
    return shapes


def load_model(path: Path, options: LoadOptions | None = None) -> Artifact:
    options = options or LoadOptions()
    if options.input_dtype not in _DTYPES:
        raise CompressError(f"--input-dtype must be one of {', '.join(_DTYPES)}, got '{options.input_dtype}'")
    if options.task is not None and options.task not in TASKS:
        raise CompressError(f"--task must be one of {', '.join(TASKS)}, got '{options.task}'")
    if not path.exists():
        raise CompressError(f"{path}: file not found")
    loader = _hf_folder if path.is_dir() else _file_loader(path)
    module, inputs, static_batch, fmt = loader(path, options)
    if fmt != "torch.export":  # an exported program is already in inference form and refuses eval()
        module.eval()
    task = options.task or infer_task(module, inputs, static_batch, path)
    spec = InputSpec(inputs=tuple(inputs), task=task, static_batch=static_batch,
                     max_sequence=getattr(module, "max_sequence", None))
    source_hash = _folder_hash(path) if path.is_dir() else sha256_file(path)
    fingerprint = sha256_json({"source": source_hash, "options": options.__dict__})
    return Artifact(kind=MODULE, spec=spec, fingerprint=fingerprint, module=module, path=path,
                    meta={"format": fmt, "source_sha256": source_hash})


# --- formats ---------------------------------------------------------------------------------

def _file_loader(path: Path):
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":
        return _legacy_torch_file
    try:
        names = zipfile.ZipFile(path).namelist()
    except (zipfile.BadZipFile, OSError):
        raise CompressError(f"{path}: corrupt or truncated archive (not a readable zip file)") from None
    if any(n.endswith("/archive_format") or n.endswith("serialized_exported_program.json") for n in names):
        return _exported_program
    if any("/code/__torch__" in n for n in names):
        return _torchscript
    if any(n.endswith("data.pkl") for n in names):
        return _torch_save
    raise CompressError(f"{path}: a zip archive but not a PyTorch model (no TorchScript, torch.export or torch.save content)")


def _exported_program(path: Path, options: LoadOptions):
    try:
        program = torch.export.load(str(path))
    except Exception as e:  # noqa: BLE001 - any failure here means the archive is unusable
        raise CompressError(f"{path}: cannot load torch.export archive: {first_line(e)}") from None
    inputs, static_batch = _spec_from_program(program)
    module = program.module()
    if static_batch is not None:
        module = StaticBatchAdapter(module, static_batch)
    return module, inputs, static_batch, "torch.export"


def _torchscript(path: Path, options: LoadOptions):
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise CompressError(f"{path}: cannot load TorchScript archive: {first_line(e)}") from None
    return module, _inputs_from_options(path, options), None, "torchscript"


def _torch_save(path: Path, options: LoadOptions):
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not _names_python_objects(e):
            raise CompressError(f"{path}: corrupt or truncated PyTorch file: {first_line(e)}") from None
        if not options.allow_pickle:
            raise CompressError(
                f"{path}: holds a pickled Python object ({_pickled_global(e)}); unpickling runs arbitrary code, "
                "so it is refused. Pass --allow-pickle if you trust this file, or save a TorchScript, "
                "torch.export (.pt2) or state_dict file instead"
            ) from None
        return _pickled_module(path, options)
    except Exception as e:  # noqa: BLE001
        raise CompressError(f"{path}: corrupt or truncated PyTorch file: {first_line(e)}") from None
    state_dict = _find_state_dict(obj)
    if state_dict is None:
        raise CompressError(f"{path}: a torch.save file that holds neither a state_dict nor a model")
    if not options.model_class:
        raise CompressError(
            f"{path}: holds a state_dict (weights only); give the class that defines the model with "
            "--model-class package.module:Class (and --model-args '{\"key\": value}' for its constructor)"
        )
    module = _instantiate(options)
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as e:
        raise CompressError(f"{path}: the state_dict does not fit {options.model_class}: {first_line(e)}") from None
    return module, _inputs_from_options(path, options), None, "state_dict"


def _pickled_module(path: Path, options: LoadOptions):
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise CompressError(f"{path}: cannot unpickle: {first_line(e)}") from None
    if not isinstance(obj, torch.nn.Module):
        raise CompressError(f"{path}: the pickle holds a {type(obj).__name__}, not a torch.nn.Module")
    return obj, _inputs_from_options(path, options), None, "pickle"


def _legacy_torch_file(path: Path, options: LoadOptions):
    # Pre-1.6 torch.save files are not zip archives; anything else that is not a zip is not a model.
    if path.stat().st_size == 0:
        raise CompressError(f"{path}: empty file, not a model")
    try:
        return _torch_save(path, options)
    except CompressError as e:
        if "pickled Python object" in str(e) or "state_dict" in str(e):
            raise  # a real legacy torch.save file: its own message says what to do
        raise CompressError(f"{path}: not a PyTorch model file (expected TorchScript, torch.export .pt2, "
                            "a torch.save state_dict or a Hugging Face model folder)") from None


def _hf_folder(path: Path, options: LoadOptions):
    if not (path / "config.json").is_file():
        raise CompressError(f"{path}: a folder but not a Hugging Face model (no config.json)")
    from .hf import load_hf_folder  # transformers is an optional extra

    module, inputs = load_hf_folder(path)
    return module, inputs, None, "huggingface"


# --- input spec --------------------------------------------------------------------------------

def _spec_from_program(program) -> tuple[list[TensorSpec], int | None]:
    user_inputs = set(program.graph_signature.user_inputs)
    inputs, static_batch = [], None
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise CompressError(f"torch.export archive: input '{node.name}' is not a tensor; only tensor inputs are supported")
        shape: list[int | str] = []
        for i, d in enumerate(val.shape):
            if isinstance(d, int):
                shape.append(d)
            else:
                shape.append("batch" if i == 0 else ("sequence" if i == 1 else f"dim{i}"))
        if isinstance(shape[0], int):
            static_batch = shape[0]
            shape[0] = "batch"
        inputs.append(TensorSpec(node.name, tuple(shape), str(val.dtype).removeprefix("torch.")))
    return inputs, static_batch


def _inputs_from_options(path: Path, options: LoadOptions) -> list[TensorSpec]:
    if not options.input_shapes:
        raise CompressError(f"{path}: this format does not record its input shape; give it with --input-shape 1x3x224x224")
    names = ["input"] if len(options.input_shapes) == 1 else [f"input{i}" for i in range(len(options.input_shapes))]
    # The first dimension is the batch: engines are exported with a dynamic batch.
    return [TensorSpec(n, ("batch", *s[1:]), options.input_dtype) for n, s in zip(names, options.input_shapes)]


def example_inputs(spec: InputSpec, batch: int = 1, sequence: int = 16, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for t in spec.inputs:
        shape = t.concrete_shape(batch, sequence)
        dtype = _DTYPES.get(t.dtype, torch.float32)
        if dtype.is_floating_point:
            tensors.append(torch.rand(shape, generator=gen, dtype=torch.float32).to(dtype))
        else:
            tensors.append(torch.ones(shape, dtype=dtype))
    return tuple(tensors)


def first_output(out: Any) -> torch.Tensor:
    """Models return a tensor, a tuple, or a dict-like (Hugging Face); verification uses the first tensor."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "values"):
        out = list(out.values())
    if isinstance(out, (list, tuple)) and out:
        return first_output(out[0])
    raise CompressError(f"the model returned {type(out).__name__}; expected a tensor")


def infer_task(module: torch.nn.Module, inputs: list[TensorSpec], static_batch: int | None, path: Path) -> str:
    if getattr(module, "task", None) in TASKS:  # a wrapper that knows (e.g. a pooled Hugging Face encoder)
        return module.task
    spec = InputSpec(inputs=tuple(inputs), static_batch=static_batch)
    try:
        with torch.no_grad():
            out = first_output(module(*example_inputs(spec, batch=static_batch or 1)))
    except CompressError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's model failed on the declared input
        raise CompressError(f"{path}: the model fails on an input of shape "
                            f"{[t.concrete_shape(static_batch or 1) for t in inputs]}: {first_line(e)}") from None
    return "classification" if out.dim() == 2 and out.shape[1] > 1 else "embedding"


# --- helpers ---------------------------------------------------------------------------------

class StaticBatchAdapter(torch.nn.Module):
    """Runs a model exported for one batch size on any batch, by chunks (padding the last)."""

    def __init__(self, inner: torch.nn.Module, batch: int):
        super().__init__()
        self.inner = inner
        self.batch = batch

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        n = inputs[0].shape[0]
        if n == self.batch:
            return self.inner(*inputs)
        outs = []
        for start in range(0, n, self.batch):
            chunk = [x[start:start + self.batch] for x in inputs]
            short = self.batch - chunk[0].shape[0]
            if short:
                chunk = [torch.cat([c, c[-1:].expand(short, *c.shape[1:])]) for c in chunk]
            out = first_output(self.inner(*chunk))
            outs.append(out[: self.batch - short])
        return torch.cat(outs)


def _instantiate(options: LoadOptions) -> torch.nn.Module:
    spec = options.model_class or ""
    if ":" not in spec:
        raise CompressError(f"--model-class must look like package.module:Class or file.py:Class, got '{spec}'")
    where, _, name = spec.rpartition(":")
    try:
        if where.endswith(".py"):
            mod_spec = importlib.util.spec_from_file_location(Path(where).stem, where)
            if mod_spec is None or not Path(where).is_file():
                raise ImportError(f"no file {where}")
            mod = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(mod)
        else:
            if str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))  # like `python -m`: the user's own package in cwd
            mod = importlib.import_module(where)
        cls = getattr(mod, name)
    except (ImportError, AttributeError) as e:
        raise CompressError(f"--model-class {spec}: cannot import: {first_line(e)}") from None
    try:
        module = cls(**options.model_args)
    except Exception as e:  # noqa: BLE001
        raise CompressError(f"--model-class {spec}: constructor failed with --model-args {json.dumps(options.model_args)}: {first_line(e)}") from None
    if not isinstance(module, torch.nn.Module):
        raise CompressError(f"--model-class {spec}: not a torch.nn.Module")
    return module


def _find_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            found = _find_state_dict(obj.get(key))
            if found is not None:
                return found
    return None


def _names_python_objects(e: Exception) -> bool:
    """weights_only refusals name the global they would have to import; garbage does not."""
    return "GLOBAL" in str(e) or "Unsupported global" in str(e)


def _pickled_global(e: Exception) -> str:
    m = re.search(r"GLOBAL ([\w.]+)", str(e))
    return f"it names {m.group(1)}" if m else "not plain tensors"


def _folder_hash(path: Path) -> str:
    return sha256_json({str(p.relative_to(path)): sha256_file(p) for p in sorted(path.rglob("*")) if p.is_file()})
