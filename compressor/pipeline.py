"""The pass manager: a pipeline of passes over artifacts, cached and resumable in a run directory.

Layout of a run directory:

    out/<run>/run.json          what was asked (model, target, calibration, passes)
    out/<run>/01-export/        one folder per finished pass: its output files + pass.json
    out/<run>/.02-verify.partial  a pass in progress (deleted and redone on resume)
    out/<run>/.03-prune.<key>.checkpoints  a training pass's checkpoints (resumed from, then removed)
    out/<run>/model.onnx, report.json, report.md   published at the end

A pass's cache key hashes (input artifact fingerprint, pass name, pass version, package version,
pass config, run context fingerprint). A finished pass folder is only reused when its key matches
and its output file still has the recorded hash, so a kill -9 loses at most the running pass, and
of a training pass at most the epoch in progress.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import builtin_passes
from .artifacts import MODULE, Artifact, InputSpec, load_module, save_module, sha256_file, sha256_json, write_atomic
from .distributed import World, current, leave
from .errors import CompressError, VerificationError
# the pass API lives in passes.py; re-exported here for the modules that import it from the manager
from .passes import PASSES, PLANNED, EmptyConfig, Pass, PassResult, RunContext, register  # noqa: F401
from .version import __version__


def make_config(cls: type[Pass], values: dict[str, Any], where: str) -> Any:
    """Build a pass's config dataclass from TOML values, with messages that name the key."""
    known = typing.get_type_hints(cls.Config)
    for key, value in values.items():
        if key not in known:
            allowed = ", ".join(known) or "none"
            raise CompressError(f"{where}: pass '{cls.name}' has no option '{key}' (options: {allowed})")
        hint = known[key]
        optional = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(optional) == 1:
            hint = optional[0]  # `float | None`: None is the default, a TOML value is the float
        expected = typing.get_origin(hint) or hint
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            raise CompressError(f"{where}: key '{cls.name}.{key}' must be {expected.__name__}, got {value!r}")
        values[key] = value
    try:
        return cls.Config(**values)
    except (TypeError, ValueError) as e:
        raise CompressError(f"{where}: pass '{cls.name}': {e}") from None


def build_pipeline(names: list[str], configs: dict[str, dict[str, Any]], where: str) -> list[Pass]:
    """Instantiate and type-check a pipeline before any work starts."""
    builtin_passes.load_all()
    passes: list[Pass] = []
    kind = MODULE
    for name in names:
        if name not in PASSES:
            if name in PLANNED:
                raise CompressError(f"pass '{name}' ({PLANNED[name]}) is not available yet")
            raise CompressError(f"{where}: unknown pass '{name}'; known passes: {', '.join(sorted(PASSES))}")
        cls = PASSES[name]
        if kind not in cls.takes:
            raise CompressError(f"{where}: pass '{name}' takes a {' or '.join(cls.takes)} artifact but gets a {kind} here")
        passes.append(cls(make_config(cls, dict(configs.get(name, {})), where)))
        kind = kind if cls.returns == "same" else cls.returns
    unused = set(configs) - set(names)
    if unused:
        raise CompressError(f"{where}: options given for passes not in the pipeline: {', '.join(sorted(unused))}")
    return passes


@dataclass
class PassRecord:
    name: str
    status: str  # ran | cached | failed
    seconds: float
    key: str
    output: str
    metrics: dict[str, Any]


class PassManager:
    def __init__(self, passes: list[Pass], ctx: RunContext):
        self.passes = passes
        self.ctx = ctx
        self.records: list[PassRecord] = []
        self.current: str | None = None  # the pass running now (what an interrupt stopped)

    def run(self, artifact: Artifact) -> Artifact:
        """The passes in order; the final artifact. In a distributed run (compressor.distributed)
        every rank runs the passes up to the last that trains, then the process group ends and rank 0
        runs the rest alone; only rank 0 writes the run directory."""
        world = current()
        last_training = max((i for i, p in enumerate(self.passes, start=1) if p.trains), default=0)
        for index, p in enumerate(self.passes, start=1):
            if world.distributed and index > last_training:
                leave()
                if not world.is_main:
                    break
                world = current()
            self.current = p.name
            folder = self.ctx.run_dir / f"{index:02d}-{p.name}"
            key = sha256_json({"input": artifact.fingerprint, "pass": p.name, "version": p.version,
                               "package": __version__, "config": dataclasses.asdict(p.config),
                               "context": self.ctx.fingerprint})
            cached = self._agreed_cache(world, folder, key, artifact)
            if cached is not None:
                artifact, record = cached
                self.ctx.progress.log(f"[{index}/{len(self.passes)}] {p.name}: cached, skipped")
            else:
                artifact, record = self._run_pass(p, index, folder, key, artifact)
            self.records.append(record)
            self.ctx.history.append((p.name, artifact))
        self.current = None
        leave()  # where every pass trains, the group ends with the last
        return artifact

    def _agreed_cache(self, world: World, folder: Path, key: str, artifact: Artifact):
        """The cached output of a finished pass where rank 0 has one: every rank must skip the same
        passes, or the others would wait for it in a training pass it does not run."""
        mine = self._load_cached(folder, key, artifact) if world.is_main else None
        if not world.distributed or not world.broadcast(mine is not None) or world.is_main:
            return mine
        cached = self._load_cached(folder, key, artifact)
        if cached is None:
            raise CompressError(f"rank {world.rank} cannot read {folder}, the finished pass rank 0 resumes from: "
                                "give --out a directory that every machine sees (a shared filesystem)")
        return cached

    def _run_pass(self, p: Pass, index: int, folder: Path, key: str, artifact: Artifact) -> tuple[Artifact, PassRecord]:
        self.ctx.progress.log(f"[{index}/{len(self.passes)}] {p.name} ...")
        if not current().is_main:
            return self._run_unrecorded(p, folder, key, artifact)
        partial = self.ctx.run_dir / f".{folder.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        checkpoints = self._checkpoints(folder, key)
        for stale in self.ctx.run_dir.glob(f".{folder.name}.*.checkpoints"):
            if stale != checkpoints:  # from a run with other inputs or options
                shutil.rmtree(stale, ignore_errors=True)
        self.ctx.checkpoints = checkpoints
        start = time.perf_counter()
        try:
            result = p.run(artifact, self.ctx, partial)
        except VerificationError as e:
            metrics = getattr(e, "metrics", {})
            self.records.append(PassRecord(p.name, "failed", time.perf_counter() - start, key, "", metrics))
            raise
        finally:
            self.ctx.checkpoints = None
        seconds = time.perf_counter() - start
        out = result.artifact
        if p.returns != "same" and out.kind != p.returns:
            raise RuntimeError(f"pass {p.name} returned a {out.kind}, declared {p.returns}")
        # Persist the output inside the partial folder, then publish the folder in one rename.
        if out.kind == MODULE and out is not artifact:
            save_module(out.module, partial / "module.pt")
            out.path = folder / "module.pt"
            out.fingerprint = key
        elif out.path is not None and out.path.is_relative_to(partial):
            out.path = folder / out.path.relative_to(partial)
        output_rel = str(out.path.relative_to(self.ctx.run_dir)) if out.path and out.path.is_relative_to(self.ctx.run_dir) else ""
        record = PassRecord(p.name, "ran", seconds, key, output_rel, result.metrics)
        manifest = {"key": key, "pass": p.name, "seconds": seconds, "metrics": result.metrics,
                    "output": {"kind": out.kind, "path": output_rel, "fingerprint": out.fingerprint,
                               "spec": out.spec.to_json(), "meta": out.meta, "same_as_input": out is artifact}}
        write_atomic(partial / "pass.json", json.dumps(manifest, indent=2, default=str))
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        shutil.rmtree(checkpoints, ignore_errors=True)
        if out.kind != MODULE and out is not artifact and out.path is not None:
            out.fingerprint = sha256_file(out.path)
            manifest["output"]["fingerprint"] = out.fingerprint
            write_atomic(folder / "pass.json", json.dumps(manifest, indent=2, default=str))
        return out, record

    def _checkpoints(self, folder: Path, key: str) -> Path:
        return self.ctx.run_dir / f".{folder.name}.{key[:16]}.checkpoints"

    def _run_unrecorded(self, p: Pass, folder: Path, key: str, artifact: Artifact) -> tuple[Artifact, PassRecord]:
        """A rank other than 0 runs the pass for its share of the training and writes nothing: its
        files go to a scratch folder; the checkpoints are rank 0's (the loop broadcasts them)."""
        self.ctx.checkpoints = self._checkpoints(folder, key)
        start = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix=f"compress-{p.name}-") as scratch:
                result = p.run(artifact, self.ctx, Path(scratch))
        finally:
            self.ctx.checkpoints = None
        out = result.artifact
        if out.kind == MODULE and out is not artifact:
            out.fingerprint = key  # as rank 0 records it, so the next pass's key is the same
        return out, PassRecord(p.name, "ran", time.perf_counter() - start, key, "", result.metrics)

    def _load_cached(self, folder: Path, key: str, artifact: Artifact) -> tuple[Artifact, PassRecord] | None:
        try:
            manifest = json.loads((folder / "pass.json").read_text())
        except (OSError, ValueError):
            return None
        if manifest.get("key") != key:
            return None
        out = manifest["output"]
        record = PassRecord(manifest["pass"], "cached", manifest["seconds"], key, out["path"], manifest["metrics"])
        if out["same_as_input"]:
            return artifact, record
        path = self.ctx.run_dir / out["path"]
        if not path.is_file():
            return None
        spec = InputSpec.from_json(out["spec"])
        if out["kind"] == MODULE:
            return Artifact(MODULE, spec, out["fingerprint"], module=load_module(path), path=path, meta=out["meta"]), record
        if sha256_file(path) != out["fingerprint"]:
            return None  # edited or damaged since: redo the pass
        return Artifact(out["kind"], spec, out["fingerprint"], path=path, meta=out["meta"]), record
