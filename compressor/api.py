"""`compress(model, target=...)`: the whole pipeline from Python, exactly what the CLI runs."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .artifacts import MODULE, Artifact, InputSpec, TensorSpec, sha256_file, sha256_json, sha256_tensor, write_atomic
from .backends import preflight
from .calibration import CalibrationData, check_fits, load_calibration, load_recipe, synthetic_calibration
from .datafree import DataFreeConfig, choose_method, data_source, data_source_words, synthesize
from .distributed import join_from_environment
from .errors import CompressError, Interrupted, VerificationError, first_line
from .model_io import LoadOptions, infer_task, load_model
from .pipeline import PassManager, RunContext, build_pipeline
from .progress import Progress
from .prune.budget import OPTIONS as PRUNING_OPTIONS
from .report import library_versions, summary_table, write_reports
from .targets import TargetProfile, load_target
from .tomlfile import get, read_toml
from .version import __version__

RUN_MARKER = "run.json"
# A searched student is trained far from where it starts (random, or the teacher's weights of its
# kept channels with whole blocks gone): the distill pass's fine-tune defaults (3 epochs at 1e-4)
# barely move it. Measured on the MNIST sample: at 1e-3 a 7%-MACs student agrees 78% with the
# teacher after two epochs, at 1e-4 it stays at 10%. A 23%-MACs student (inherited, recalibrated):
# 15 epochs 97.75% agreement on the validation slice, 97.2% top-1 held out (int8 97.0%); 25 epochs
# 98.5%, 97.3% (int8 97.3%), still kept at the last epoch. The user's [distill] options win.
SEARCHED_STUDENT_DISTILL = {"epochs": 25, "lr": 1e-3, "patience": 3}


@dataclass
class Result:
    run_dir: Path
    engine: Path | None
    report: dict[str, Any]
    passed: bool

    def summary(self) -> str:
        return summary_table(self.report)


@dataclass
class RunOptions:
    out: Path | None = None
    passes: list[str] | None = None
    config: Path | None = None
    resume: bool = False
    force: bool = False
    quiet: bool = False
    load: LoadOptions = field(default_factory=LoadOptions)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # pass -> options, over --config
    datafree: DataFreeConfig = field(default_factory=DataFreeConfig)  # the synthesis when --calib is absent


def compress(model: str | Path | torch.nn.Module, target: str = "x86-cpu", calib: str | None = None,
             out: str | Path | None = None, *, passes: list[str] | None = None, config: str | Path | None = None,
             resume: bool = False, force: bool = False, quiet: bool = True,
             input_shape: tuple[int, ...] | None = None, sparsity: float | None = None,
             macs_budget: float | None = None, latency_budget: float | None = None, search: bool = False,
             **load_options: Any) -> Result:
    """Compress `model` (a path, or an nn.Module with `input_shape`) for `target`. A pruning budget
    (`sparsity`, `macs_budget` or `latency_budget`, as the CLI's flags) prunes first; with
    `search=True` a MACs or latency budget searches a student and distills it instead (`--search`).

    Raises CompressError for bad input and VerificationError when the engine fails verification;
    in both cases the run directory holds report.json with what was measured.
    """
    load = LoadOptions(**load_options)
    if input_shape is not None:
        load.input_shapes = [tuple(input_shape)]
    budgets = {k: v for k, v in zip(PRUNING_OPTIONS, (sparsity, macs_budget, latency_budget)) if v is not None}
    if search and "sparsity" in budgets:
        raise CompressError("sparsity prunes; with search=True give macs_budget or latency_budget")
    options = RunOptions(out=Path(out) if out else None, passes=passes, config=Path(config) if config else None,
                         resume=resume, force=force, quiet=quiet, load=load,
                         overrides={"search" if search else "prune": budgets} if budgets else {})
    return run(model, target, calib, options)


def run(model: str | Path | torch.nn.Module, target_name: str, calib: str | None, options: RunOptions) -> Result:
    """The pipeline; under torchrun (or `compress --nproc`) on every rank, rank 0 alone writing
    the run directory and showing progress (compressor.distributed)."""
    world = join_from_environment()
    progress = Progress(options.quiet or not world.is_main)
    target = load_target(target_name)
    names, configs, where = _pipeline_request(target, options)
    passes = build_pipeline(names, configs, where)
    if any(p.needs_backend for p in passes):  # a missing engine builder fails now, not after minutes of quantizing
        try:
            preflight(target)
        except CompressError as e:
            rest = ",".join(p.name for p in passes if not p.needs_backend)
            raise CompressError(f"{e}: target {target.name} cannot build its engine here; --passes {rest} "
                                "stops at the verified QDQ ONNX") from None
    device = configs.get("verify", {}).get("device")
    if device and "verify" in names:  # a device without the engine's runtime fails now, not after the work
        from .profile.on_device import check_device_runtime

        check_device_runtime(target, device)
    run_dir = _run_dir(model, target, options)
    if world.is_main:  # the others would see the directory rank 0 just made as an earlier run's
        _check_run_dir(run_dir, options)

    started = time.time()
    reference = _load(model, options.load)
    model_path = Path(model) if isinstance(model, (str, Path)) else None
    # without --calib, passes that need representative inputs get synthesised ones (data-free);
    # real data, when given, always wins
    synthesizer = choose_method(reference, model_path, options.datafree) if calib is None and any(
        p.needs_calibration for p in passes) else None
    data = _calibration(calib, reference, model) if synthesizer is None else None
    progress.log(f"loaded {reference.meta['format']} model: inputs "
                 f"{', '.join(f'{t.name} {tuple(t.shape)} {t.dtype}' for t in reference.spec.inputs)}, task {reference.spec.task}")

    if world.is_main:
        _prepare_run_dir(run_dir, options, {"model": str(getattr(reference, "path", "")), "target": target.name,
                                            "calibration": data.recipe if data else f"data-free ({synthesizer.name})",
                                            "passes": names, "version": __version__})
    if data is None:  # after the run directory is ready: rank 0 caches the synthesised batches there
        data = world.on_main(lambda: synthesize(reference, run_dir, progress, model_path, options.datafree, synthesizer))
    progress.log(f"calibration '{data.recipe}': {data.num_calib} calibration + {data.num_holdout} held-out samples")
    ctx = RunContext(target=target, data=data, reference=reference, run_dir=run_dir, progress=progress)
    manager = PassManager(passes, ctx)
    report = _base_report(reference, target, data, names, started)
    final: Artifact | None = None
    try:
        final = manager.run(reference)
    except CompressError as e:
        report.update(status="failed" if isinstance(e, VerificationError) else "error", error=str(e))
        e.report = report  # the CLI shows what was measured before the failure
        raise
    except KeyboardInterrupt:
        stopped = manager.current or "the pipeline"
        report.update(status="interrupted", interrupted_pass=manager.current,
                      error=f"interrupted during the {stopped} pass; --resume continues after the finished passes")
        error = Interrupted(report["error"])
        error.report = report
        raise error from None
    except Exception as e:  # a bug, or a distributed peer gone: the report must not say "ok"
        report.update(status="error", error=first_line(e, typed=True))
        raise
    finally:
        report["passes"] = [r.__dict__ for r in manager.records]
        report["seconds"] = time.time() - started
        engine = _publish(final, run_dir) if final is not None and report["status"] == "ok" and world.is_main else None
        if engine is not None:
            report["engine"] = {"path": str(engine), "sha256": sha256_file(engine), "bytes": engine.stat().st_size,
                                "precision": final.meta.get("precision", "fp32")}
            device = final.meta.get("device_bytes")  # an engine whose file is not what the device holds
            report["sizes"]["engine_bytes"] = device["bytes"] if device else engine.stat().st_size
            if device:
                report["sizes"]["engine_bytes_are"] = device["what"]
        if world.is_main:
            write_reports(run_dir, report)
    return Result(run_dir, engine, report, True)


def _pipeline_request(target: TargetProfile, options: RunOptions) -> tuple[list[str], dict[str, dict], str]:
    names = list(target.passes)
    default_passes = True
    configs: dict[str, dict] = {}
    where = f"target {target.name}"
    if options.config is not None:
        data = read_toml(options.config)
        where = str(options.config)
        if "passes" in data:
            names = get(data, "passes", list, options.config)
            default_passes = False
        configs = {k: v for k, v in data.items() if k != "passes"}
        for key, value in configs.items():
            if not isinstance(value, dict):
                raise CompressError(f"{options.config}: key '{key}' must be a table of options for pass '{key}'")
    for name, values in options.overrides.items():
        configs.setdefault(name, {}).update(values)
    budget_given = any(configs.get("prune", {}).get(k) is not None for k in PRUNING_OPTIONS)
    if budget_given and default_passes and "prune" not in names:
        names = ["prune", *names]  # a pruning budget puts pruning in front of the target's pipeline
    search_given = any(configs.get("search", {}).get(k) is not None for k in PRUNING_OPTIONS)
    if search_given and default_passes and "search" not in names:
        names = ["search", "distill", *names]  # a search budget: a new student, distilled, then the target's passes
        for key, value in SEARCHED_STUDENT_DISTILL.items():
            configs.setdefault("distill", {}).setdefault(key, value)
    if options.passes:
        names = options.passes
        where = "--passes"
    if not names:
        raise CompressError(f"{where}: the pipeline has no passes")
    return names, configs, where


def _load(model: str | Path | torch.nn.Module, load: LoadOptions) -> Artifact:
    if isinstance(model, torch.nn.Module):
        if not load.input_shapes:
            raise CompressError("compress(module, ...): give input_shape=(1, 3, 224, 224)")
        spec_inputs = tuple(TensorSpec("input" if len(load.input_shapes) == 1 else f"input{i}", ("batch", *s[1:]), load.input_dtype)
                            for i, s in enumerate(load.input_shapes))
        model.eval()
        task = load.task or infer_task(model, list(spec_inputs), None, Path(type(model).__name__))
        state = {k: sha256_tensor(v) for k, v in model.state_dict().items()}
        fingerprint = sha256_json({"class": type(model).__qualname__, "state": state, "spec": [s.__dict__ for s in spec_inputs]})
        return Artifact(MODULE, InputSpec(spec_inputs, task), fingerprint, module=model,
                        meta={"format": "nn.Module", "source_sha256": fingerprint})
    return load_model(Path(model), load)


def _calibration(calib: str | None, reference: Artifact, model: Any) -> CalibrationData:
    if calib is None:
        return synthetic_calibration(reference.spec)
    recipe = load_recipe(calib)
    model_path = Path(model) if isinstance(model, (str, Path)) else None
    data = load_calibration(recipe, reference.spec, model_path)
    check_fits(recipe.path, data.holdout, reference.spec)
    return data


def _run_dir(model: Any, target: TargetProfile, options: RunOptions) -> Path:
    if options.out is not None:
        return options.out
    stem = Path(model).stem if isinstance(model, (str, Path)) else type(model).__name__.lower()
    return Path("out") / f"{stem}-{target.name}"


def _check_run_dir(run_dir: Path, options: RunOptions) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise CompressError(f"{run_dir}: exists and is not a directory")
    if not run_dir.exists() or options.resume or not any(run_dir.iterdir()):
        return
    if not options.force:
        raise CompressError(f"{run_dir}: output directory exists; pass --resume to continue that run or --force to start over")
    if not (run_dir / RUN_MARKER).is_file():
        raise CompressError(f"{run_dir}: not a compress run directory (no {RUN_MARKER}); refusing to delete it even with --force")


def _prepare_run_dir(run_dir: Path, options: RunOptions, request: dict[str, Any]) -> None:
    if options.force and not options.resume and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("model.onnx", "report.json", "report.md"):
        (run_dir / stale).unlink(missing_ok=True)  # results of an earlier run must not look like this one's
    write_atomic(run_dir / RUN_MARKER, json.dumps(request, indent=2) + "\n")


def _publish(final: Artifact, run_dir: Path) -> Path | None:
    """Copy the engine, and what its backend says belongs beside it (`meta["publish"]`: destination
    name -> path relative to the engine's folder, "." for the whole folder), to the run directory."""
    if final.path is None or final.kind == MODULE:
        return None
    publish = final.meta.get("publish", {})
    for dest, relative in publish.items():
        source = final.path.parent / relative
        if source.is_dir():  # a self-contained engine folder (the C engine's sources and Makefile)
            shutil.rmtree(run_dir / dest, ignore_errors=True)
            shutil.copytree(source, run_dir / dest, ignore=shutil.ignore_patterns("build"))
        else:
            write_atomic(run_dir / dest, source.read_bytes())
    folder = next((dest for dest, relative in publish.items() if relative == "."), None)
    if folder is not None:
        return run_dir / folder / final.path.name
    target = run_dir / ("model.onnx" if final.path.suffix == ".onnx" else final.path.name)
    write_atomic(target, final.path.read_bytes())
    return target


def _base_report(reference: Artifact, target: TargetProfile, data: CalibrationData, names: list[str], started: float) -> dict[str, Any]:
    model_path = reference.path
    model_bytes = _size(model_path) if model_path else sum(p.numel() * p.element_size() for p in reference.module.parameters())
    return {
        "status": "ok",
        "tool_version": __version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "model": {"path": str(model_path or reference.meta["format"]), "format": reference.meta["format"],
                  "sha256": reference.meta["source_sha256"], "task": reference.spec.task,
                  "inputs": [t.__dict__ for t in reference.spec.inputs], "static_batch": reference.spec.static_batch,
                  "parameters": sum(p.numel() for p in reference.module.parameters())},
        "target": {"name": target.name, "backend": target.backend, "profile": str(target.path)},
        "calibration": {"recipe": data.recipe, "calibration_samples": data.num_calib,
                        "holdout_samples": data.num_holdout, "labels": data.holdout_labels is not None,
                        "fingerprint": data.fingerprint, **data_source(data), "in_words": data_source_words(data)},
        "pipeline": names,
        "sizes": {"model_bytes": model_bytes, "fp32_weights_bytes": fp32_weights_bytes(reference.module)},
        "versions": library_versions(),
        "notes": ([f"the model was exported with a static batch of {reference.spec.static_batch}; "
                   "the engine keeps that batch size"] if reference.spec.static_batch else []),
    }


def fp32_weights_bytes(module: torch.nn.Module) -> int:
    """The model's floating-point weights (parameters and buffers, each tensor once) at 4 bytes
    each: a size baseline that does not depend on the file format it came in."""
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        if t.is_floating_point() and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * 4
    return total


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
